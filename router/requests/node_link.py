"""What the coordinator needs of a node, and what one coalesced Apply carries per item.

NodeClient (node_client.py) is the real link; the unit tests drive the coordinator with
in-process fakes of the same shape.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from shardkv.router.requests.coalescer import Deliver
from shardkv.router.requests.framing import ColumnChunk, KeyChunk
from shardkv.router.requests.replica_answers import ReplicaAnswers
from shardkv.v1 import replica_pb2


@dataclass(frozen=True, slots=True)
class MarkedRecord:
    """A record for an owner of its key, which also keeps a marker for each of targets
    (other owners that did not acknowledge it) in the same commit (replica.proto, Marker)."""

    record: replica_pb2.Record
    targets: tuple[str, ...]


# What one Apply carries per item: a record for an owner, a hint for a fallback, or a
# record with markers for an owner.
ApplyItem = replica_pb2.Record | replica_pb2.Hint | MarkedRecord


class NodeLink(Protocol):
    """What the coordinator needs of a node: coalesced applies and reads."""

    def apply(
        self, items: Sequence[tuple[ApplyItem, Deliver[bool]]], deadline: float, epoch: int
    ) -> None:
        """Queues items routed under epoch; each callback gets its result or a
        NodeFailure, exactly once."""

    def read(
        self,
        keys: Sequence[tuple[bytes, Deliver[replica_pb2.Record]]],
        deadline: float,
        epoch: int,
    ) -> None:
        """Queues keys routed under epoch; each callback gets the node's record (version
        0: none) or a failure."""

    def apply_chunk(
        self, records: ColumnChunk, deliver: Deliver[bool], deadline: float, epoch: int
    ) -> None:
        """Queues a batch's records for this node as one item (batch_write.py)."""

    def read_chunk(
        self,
        keys: KeyChunk,
        deliver: Deliver[ReplicaAnswers],
        deadline: float,
        epoch: int,
    ) -> None:
        """Queues a batch's keys for this node as one item (batch_read.py)."""
