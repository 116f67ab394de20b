"""The router: places every key on N nodes of a consistent-hash ring and answers with quorums.

- ``placement/``  where a key lives: the ring and its preference lists, and the pair of
  rings (old, new) that places keys while a node joins or leaves.
- ``requests/``   what happens to a request: the coordinator (versions, quorums, read
  repair, hints), per-node clients that coalesce items into batched calls, scans, node
  health, and hinted hand-off back to returning nodes.
- ``membership/`` the topology (cluster.toml read and written), the live node set, and node
  add/remove: the move planner, the driver that steps a move, the streamer that copies ranges.
- ``repair/``     anti-entropy between replicas and tombstone GC, and reconciling what differs.
- ``api/``        the gRPC services (KV, Admin and its operator calls), authentication, metrics.
- ``server.py``   wires the parts into one RouterServer; ``__main__`` is the command.
- ``pace.py``     one rate shared by background work (moves, repair).
"""

from shardkv.common.extras import require_extra

require_extra("server", "shardkv.router")
