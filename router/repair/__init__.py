"""Replicas converge without reads.

- ``anti_entropy`` paced passes comparing per-segment digests between replicas, then
  tombstone GC of what a complete pass covered, once no node keeps a copy of a range it
  does not own.
- ``reconcile``    for segments that differ: compare versions, copy only the newest records.
- ``rebuild``      a node whose data directory was lost or rolled back, copied back from
  every other owner of its ranges before it counts toward R and W again.
"""
