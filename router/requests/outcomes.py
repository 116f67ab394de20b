"""What a request asks of the coordinator and what it gets back, per key: shared by the
general path (coordinator.py) and the batch paths (batch_write.py, batch_read.py).

Write outcomes are built once per key of every request: plain slotted classes, not frozen
ones, whose constructor costs four times as much (object.__setattr__ per field). A read's
outcome is the key's entry of the answer itself, no object around it (0.3 µs a key less:
a BatchGet joins the entries as they are); a key that could not be read has a ReadFailure,
an entry that says why."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import grpc
from shardkv.common.answers import failed_entry
from shardkv.router.requests.coalescer import NodeFailure


@dataclass(slots=True)
class WriteOutcome:
    """The version a write got, and why it failed (None when it reached its quorum) with the
    status that failure maps to; for a restored record, whether a replica refused it as
    possibly deleted (replica.proto, Record.restore)."""

    version: int
    error: str | None
    code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE
    possibly_deleted: bool = False


# A key's entry of the answer (common/answers.py): the newest record among its replies as
# a replica serialized it, or a ReadFailure.
ReadOutcome = bytes


class ReadFailure(bytes):
    """The entry of a key that could not be read, carrying its status; error and code say
    why, for a single-key call to fail with. What bytes operations make of it (a slice, a
    join, a copy) is plain bytes: the status stays in the entry, the reason does not."""

    error: str
    code: grpc.StatusCode

    def __new__(cls, entry: bytes, error: str, code: grpc.StatusCode) -> ReadFailure:
        failure = super().__new__(cls, entry)
        failure.error = error
        failure.code = code
        return failure


def not_read(outcome: ReadOutcome) -> bool:
    """Whether a key could not be read (what a fence refusal has routed again)."""
    return isinstance(outcome, ReadFailure)


def not_written(outcome: WriteOutcome) -> bool:
    """Whether a write missed its quorum (what a fence refusal has routed again)."""
    return outcome.error is not None


def read_failed(key: bytes, error: str, code: grpc.StatusCode) -> ReadFailure:
    """The outcome of a key that could not be read, its entry carrying the status."""
    return ReadFailure(failed_entry(key, code.value[0], error), error, code)


def read_failure(
    key: bytes,
    got: int,
    needed: int,
    replication: int,
    failed: Sequence[tuple[str, NodeFailure]],
    expired: bool,
) -> ReadFailure:
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
