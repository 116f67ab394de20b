"""Where keys live; knows nothing of gRPC.

- ``ring``    the consistent-hash ring (uhashring ketama points) and its preference lists.
- ``current`` the placement in force: one ring, or during a move the old and the new ring,
  and the pieces of the token space whose owners change.
"""
