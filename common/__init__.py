"""Runtime shared by the SDK, the router and the nodes; needs nothing beyond grpcio and protobuf.

- ``limits``      the size limits every part enforces, with errors naming the limit.
- ``node_ids``    the rule a node id follows (a plain name, never a path).
- ``hlc``         the hybrid logical clock that versions writes.
- ``ring_tokens`` the 32-bit ring token of a key and sets of token ranges.
- ``requestid``   the x-request-id carried from the SDK through the router to the nodes.
- ``logs``        the key=value log line format.
- ``extras``      which optional dependencies a server needs, and the message when missing.
- ``launch``      the server commands' entry points.
- ``loopback``    whether a host is this machine only (where secrets may go without TLS).
"""
