"""The storage node ``shardd``: records in LMDB, served over gRPC to routers and clients.

- ``records``  the record format (version, writer, flags, value) and hints; ``store`` the
  LMDB store (no gRPC); ``lww`` its last-writer-wins puts; ``parked`` the hints and
  owner-held markers it keeps for other nodes; ``watermark`` how far tombstone GC
  reached, which restored records must respect; ``lookup`` reads of many keys within a
  byte budget, each key once, and of key ranges; ``node`` the store plus its group
  committer; ``commit`` group commit (one transaction and one fsync per batch of
  writes); ``ranges`` token-range streams, digests and purges; ``snapshot`` compacted
  copies for backups; ``identity`` whose the data directory is (node, cluster,
  generation), and the rebuild lease; ``fence`` the lowest topology epoch the node still
  serves routers under (Replica.Fence).
- ``kv_service`` / ``replica_service`` the public and internal gRPC services; ``convert``
  records to and from protobuf; ``validate`` request checks; ``errors`` their status codes;
  ``gate`` closes the store under running calls; ``metrics`` the node's Prometheus metrics;
  ``disk_watch`` says NOT_SERVING while a commit waits on a disk that stays stalled.
- ``server`` wires the services into one ShardServer; ``__main__`` is the command.
"""

from shardkv.common.extras import require_extra

require_extra("server", "shardkv.shardd")
