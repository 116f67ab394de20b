"""The path of a client request through the router.

- ``coordinator``  writes and reads: versions from the hybrid clock, fan-out to owners,
  quorums, hints for owners that did not answer, read repair.
- ``batch_write``, ``batch_read``  the same quorums for most requests (every owner up,
  no move), counted per batch in arrays, one chunk and one reply per node.
- ``chunk_round``  what both batch paths keep alike for one batch in flight;
  ``read_round`` what a batch read adds to it.
- ``replica_latency`` read reply times per node: which owners reads ask last, and when a
  late read asks the others (speculative retry).
- ``key_reads``    the per-key read path for the rest, and read repair.
- ``outcomes``     what a request answers per key.
- ``writes``, ``framing``  a request's writes as columns, and framed as such for an Apply.
- ``quorum``       counting one key's replica replies until a quorum is reached or lost.
- ``node_client``  the connection to one node: coalesced Apply/Read per routing epoch,
  as frames on one TCP connection to its exchange port (shardkv.common.exchange_connection);
  ``node_calls`` its direct calls (bulk, operations, Fence), each carrying its epoch;
  ``node_link`` what the coordinator needs of it.
- ``coalescer``    many concurrent items for one node sent as one batched call.
- ``read_budget``  bytes of records one read may hold, and whether its answer fits.
- ``scan``         fan-out of a range scan to the nodes, merged into one ordered page of
  what each key's owners hold.
- ``health``       whether each node is up: health checks and call failures.
- ``hint_handoff`` hints (parked records, owner-held markers) handed to their owners when
  they return, and re-homed after topology changes.
- ``hint_delivery`` where a hint goes now: its target while it owns the key, else the
  key's current owners.
"""
