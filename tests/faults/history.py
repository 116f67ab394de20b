"""The record of a workload: every operation with its start, end, outcome and version.

An outcome is "ok" (acknowledged), "failed" (the system said it did nothing) or "unknown"
(it may or may not have happened). Only a refusal before any replica saw the write
(INVALID_ARGUMENT, UNAUTHENTICATED) is a failed write: a timeout, and also an UNAVAILABLE
quorum failure, may have left the write on some replicas, from where repair can spread it,
so the checker must allow for it. Reads have no effect: a failed read is recorded (the
checker counts it) but proves nothing.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass

from shardkv.client import (
    InvalidArgument,
    PermissionDenied,
    Record,
    ShardKVError,
    Unauthenticated,
)

OK, FAILED, UNKNOWN = "ok", "failed", "unknown"
PUT, DELETE, GET = "put", "delete", "get"
# Errors that prove the write never reached a replica.
_REFUSED_BEFORE_ANY_REPLICA = (InvalidArgument, Unauthenticated, PermissionDenied)


@dataclass(frozen=True, slots=True)
class Op:
    """One operation as the client saw it. value: what a put wrote or a get read (None:
    not found); version: what the server answered (0 when it did not answer)."""

    worker: str
    kind: str
    key: bytes
    value: bytes | None
    start: float
    end: float
    outcome: str
    version: int = 0
    error: str = ""

    @property
    def is_write(self) -> bool:
        return self.kind in (PUT, DELETE)

    def __str__(self) -> str:
        """One line for error messages: what was done to which key, what came back, by
        whom and when, so a finding can be traced back to the workload."""
        if self.kind == PUT:
            what = f"={self.value!r}"
        elif self.kind == GET:
            what = " -> not found" if self.value is None else f" -> {self.value!r}"
        else:
            what = ""
        return (
            f"{self.kind} {self.key!r}{what} version={self.version} {self.outcome}"
            f" by {self.worker} [{self.start:.3f}, {self.end:.3f}]"
        )


class History:
    """Operations appended by any number of tasks or threads; times are time.monotonic()."""

    def __init__(self) -> None:
        self._ops: list[Op] = []
        self._lock = threading.Lock()
        # Seconds the workload ran, set by whoever ran it.
        self.elapsed_s = 0.0

    @property
    def ops(self) -> list[Op]:
        with self._lock:
            return list(self._ops)

    def add(self, op: Op) -> None:
        with self._lock:
            self._ops.append(op)

    async def put(self, worker: str, key: bytes, value: bytes, call: Awaitable[int]) -> None:
        """Awaits call (a put of value) and records it."""
        start = time.monotonic()
        try:
            version = await call
        except ShardKVError as err:
            self.add(
                Op(
                    worker,
                    PUT,
                    key,
                    value,
                    start,
                    time.monotonic(),
                    _write_outcome(err),
                    error=str(err),
                )
            )
        else:
            self.add(Op(worker, PUT, key, value, start, time.monotonic(), OK, version))

    async def delete(self, worker: str, key: bytes, call: Awaitable[int]) -> None:
        start = time.monotonic()
        try:
            version = await call
        except ShardKVError as err:
            self.add(
                Op(
                    worker,
                    DELETE,
                    key,
                    None,
                    start,
                    time.monotonic(),
                    _write_outcome(err),
                    error=str(err),
                )
            )
        else:
            self.add(Op(worker, DELETE, key, None, start, time.monotonic(), OK, version))

    async def get(self, worker: str, key: bytes, call: Awaitable[Record | None]) -> None:
        start = time.monotonic()
        try:
            record = await call
        except ShardKVError as err:
            self.add(Op(worker, GET, key, None, start, time.monotonic(), FAILED, error=str(err)))
        else:
            value, version = (None, 0) if record is None else (record.value, record.version)
            self.add(Op(worker, GET, key, value, start, time.monotonic(), OK, version))

    def counts(self) -> Counter[str]:
        """How many operations of each kind ended with each outcome ("put:ok", ...)."""
        return Counter(f"{op.kind}:{op.outcome}" for op in self.ops)

    def keys(self) -> list[bytes]:
        return sorted({op.key for op in self.ops})


def reads_during(ops: Sequence[Op], windows: Sequence[tuple[str, float, float]]) -> dict[str, int]:
    """Per fault window (name, start, end), the reads that began and succeeded within it.

    "Reads keep succeeding" and "no stale reads" mean nothing if no read succeeded while
    the fault lasted, so the fault tests assert this figure for every window.
    """
    return {
        name: sum(
            op.kind == GET and op.outcome == OK and start <= op.start and op.end <= end
            for op in ops
        )
        for name, start, end in windows
    }


def _write_outcome(err: ShardKVError) -> str:
    return FAILED if isinstance(err, _REFUSED_BEFORE_ANY_REPLICA) else UNKNOWN
