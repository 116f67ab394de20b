"""What a request asks of the coordinator and what it gets back, per key: shared by the
general path (coordinator.py) and the batch paths (batch_write.py, batch_read.py).

The outcomes are built once per key of every request: plain slotted classes, not frozen
ones, whose constructor costs four times as much (object.__setattr__ per field)."""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from shardkv.v1 import replica_pb2


@dataclass(frozen=True, slots=True)
class Mutation:
    """One write: a value, or a delete (tombstone) when delete is true."""

    key: bytes
    value: bytes = b""
    delete: bool = False


@dataclass(slots=True)
class WriteOutcome:
    """The version a write got, and why it failed (None when it reached its quorum) with the
    status that failure maps to; for a restored record, whether a replica refused it as
    possibly deleted (replica.proto, Record.restore)."""

    version: int
    error: str | None
    code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE
    possibly_deleted: bool = False


@dataclass(slots=True)
class ReadOutcome:
    """The newest record of a key among its replies (None when none holds it), or an error
    with its status."""

    record: replica_pb2.Record | None
    error: str | None
    code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE
