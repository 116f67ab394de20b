"""What a request asks of the coordinator and what it gets back, per key: shared by the
general path (coordinator.py) and the batch paths (batch_write.py, batch_read.py).

The outcomes are built once per key of every request: plain slotted classes, not frozen
ones, whose constructor costs four times as much (object.__setattr__ per field)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import grpc
from shardkv.common.answers import failed_entry
from shardkv.router.requests.coalescer import NodeFailure


@dataclass(slots=True)
class Mutation:
    """One write: a value, or a delete (tombstone) when delete is true (built per key of
    every write, so plain too; nothing changes it after)."""

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
    """A key's entry of the answer (common/answers.py): the newest record among its
    replies, or, when error is set, why it could not be read with its status."""

    entry: bytes
    error: str | None = None
    code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE


def read_failed(key: bytes, error: str, code: grpc.StatusCode) -> ReadOutcome:
    """The outcome of a key that could not be read, its entry carrying the status."""
    return ReadOutcome(failed_entry(key, code.value[0], error), error, code)


def read_failure(
    key: bytes,
    got: int,
    needed: int,
    replication: int,
    failed: Sequence[tuple[str, NodeFailure]],
    expired: bool,
) -> ReadOutcome:
    """A key the batch read path found short of its quorum (got of needed replies, the
    failures seen, whether the deadline passed), worded as the general path words it
    (quorum.py)."""
    reasons = [f"{node_id} ({failure})" for node_id, failure in sorted(failed, key=lambda f: f[0])]
    if expired:
        reasons.append("others (no answer before the deadline)")
    code = grpc.StatusCode.UNAVAILABLE
    if any(f.code == grpc.StatusCode.RESOURCE_EXHAUSTED for _, f in failed):
        code = grpc.StatusCode.RESOURCE_EXHAUSTED
    error = (
        f"read of key {key[:64]!r}: {got} of {needed} required replicas answered"
        f" (N={replication}); failed: {', '.join(reasons) or 'none'}"
    )
    return read_failed(key, error, code)
