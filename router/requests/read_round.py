"""One batch read in flight (batch_read.py): per key its reply count, the newest answer so
far, the answer and the owners asked; per chunk when it was sent; the speculative delay.
Slotted and plain, as ChunkRound: one round per request on the hot path."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from shardkv.router.requests.chunk_round import ChunkRound
from shardkv.router.requests.read_budget import ReadBudget
from shardkv.router.requests.read_groups import Answer, OwnerGroup, owner_orders
from shardkv.router.requests.replica_answers import ReplicaAnswers


class ReadRound(ChunkRound):
    """One batch in flight: per key a reply count, the newest answer so far, the answer
    and its owners in the order asked; the chunks answered and failed, when each chunk was
    sent; the future the request awaits."""

    __slots__ = (
        "agreed",
        "answer",
        "answered",
        "asked",
        "budget",
        "deadline",
        "delay",
        "differ",
        "epoch",
        "first",
        "groups",
        "keys",
        "newest",
        "order",
        "planned",
        "replies",
        "sent",
        "source",
        "waiting",
        "writer",
    )

    def __init__(
        self,
        keys: Sequence[bytes],
        needed: int,
        chunks: list[tuple[str, list[int]]],
        done: asyncio.Future[None],
    ) -> None:
        super().__init__(needed, chunks, done)
        # The request: its keys, the epoch they are routed under, its deadline and budget.
        self.keys = keys
        self.epoch = 0
        self.deadline = 0.0
        self.budget: ReadBudget | None = None
        self.replies = [0] * len(keys)
        # The newest (version, writer) answered so far (-1: no answer yet) and where its
        # entry lies; the answer, fixed at the R-th reply.
        self.newest = [-1] * len(keys)
        self.writer = [0] * len(keys)
        self.source: list[Answer | None] = [None] * len(keys)
        self.answer: list[Answer | None] = [None] * len(keys)
        # The keys by owners asked, while they are to be counted by group once all are in
        # (None: key by key), and whether each group's owners agreed.
        self.groups: list[OwnerGroup] | None = None
        self.agreed: list[bool] = []
        # Keys whose replicas answered different records (read repair candidates).
        self.differ: set[int] = set()
        self.answered: list[tuple[str, list[int], ReplicaAnswers]] = []
        # The groups of keys planned (each with its owners in the order asked); per key those
        # owners (empty: left to the general path), built from them when a read widens; and
        # how many of them were asked (the first R, then all once a read widened).
        self.planned: list[OwnerGroup] = []
        self.order: list[tuple[str, ...]] | None = None
        self.asked: list[int] = []
        # When each chunk was queued (loop time), the speculative delay, and how long the
        # round's first answer took (None: none yet; 0.0 is a time: the servers' loop
        # counts whole milliseconds, serving/event_loop.py).
        self.sent: list[float] = []
        self.delay = 0.0
        self.first: float | None = None
        # Whether BatchReader._late waits for the first answer to set when to ask more.
        self.waiting = False

    def expire(self) -> None:
        """The deadline passed: late replies count for nothing (as in quorum.py)."""
        self.expired = True
        self.open = [False] * len(self.chunks)
        self.chunks_left = 0
        self.close()

    def orders(self) -> list[tuple[str, ...]]:
        """Each key's owners in the order asked (empty: left to the general path), built
        from the groups planned when a read first asks more owners than its first ones."""
        if self.order is None:
            self.order = owner_orders(self.planned, len(self.keys))
        return self.order
