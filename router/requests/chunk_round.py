"""What the two batch paths (batch_write.py, batch_read.py) keep alike for one batch in
flight: the chunks sent, which are still awaited, the failures, the deadline's timer and
the future the request awaits. Slotted and plain: one round per request on the hot path.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Generic, TypeVar

from shardkv.common.deadlines import Deadline
from shardkv.router.requests.coalescer import NodeFailure

T = TypeVar("T")


def chunked(by_node: dict[str, list[int]], most: int) -> list[tuple[str, list[int]]]:
    """Each node's key indexes in chunks of at most most."""
    return [
        (node_id, indexes[start : start + most])
        for node_id, indexes in by_node.items()
        for start in range(0, len(indexes), most)
    ]


class SameKeys(Generic[T]):
    """What build made of a chunk's indexes, made again only when a chunk names other
    indexes: owners that take the same keys (every owner of a single key; every owner
    when the nodes are N) share one list of keys or chunk of records, built once."""

    def __init__(self, build: Callable[[list[int]], T]) -> None:
        self._build = build
        self._last: tuple[list[int], T] | None = None

    def __call__(self, indexes: list[int]) -> T:
        last = self._last
        if last is None or last[0] != indexes:
            last = self._last = (indexes, self._build(indexes))
        return last[1]


def nothing() -> None:
    """What a round settles with before it is given its settle step."""


class ChunkRound:
    """One batch in flight; each path adds its per-key counters and its expire()."""

    __slots__ = (
        "chunks",
        "chunks_left",
        "done",
        "expired",
        "failures",
        "needed",
        "open",
        "settle",
        "timer",
        "undecided",
    )

    def __init__(
        self, needed: int, chunks: list[tuple[str, list[int]]], done: asyncio.Future[None]
    ) -> None:
        self.needed = needed
        self.undecided = 0
        # (node, indexes of its keys) per chunk sent; whether its reply is still awaited.
        self.chunks = chunks
        self.open = [True] * len(chunks)
        self.chunks_left = len(chunks)
        # (node, indexes of its chunk, why it failed), for the rare keys that need them.
        self.failures: list[tuple[str, list[int], NodeFailure]] = []
        self.done = done
        self.expired = False
        self.settle: Callable[[], None] = nothing
        self.timer: Deadline | None = None

    def finish(self) -> None:
        if not self.done.done():
            self.done.set_result(None)

    def close(self) -> None:
        """Every reply is in, or the deadline passed: settle once, answer if not yet. The
        settle step and the timer refer back to the round: dropped here, so a round is
        freed by reference counting, not left to the cyclic collector."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        settle, self.settle = self.settle, nothing
        try:
            settle()
        finally:  # the request is answered even if settling failed (a bug: it is logged)
            self.finish()
