"""Reads of a batch coordinated as a unit: per node one chunk of keys and one reply.

The same reads as the general path (coordinator.py): every owner of a key is asked, the
answer is the newest record among the first R replies, and once every reply is in, each
owner that answered with an older record (or none) gets the newest one (read repair).
What changes is the bookkeeping: each node gets one chunk of the batch's keys (one
coalesced item, one callback for its reply), and per key there is a reply counter, the
newest record so far and the answer fixed at the R-th reply, in arrays; replies are only
gone through again for keys whose replicas disagreed.

Anything else goes to the general path: a move in progress, an owner that does not count
or is DOWN, and a key left short of R replies by failed calls once every reply is in
(unless a retry cannot help: a node out of resources, or fenced at a newer epoch).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from functools import partial
from typing import Protocol

import grpc
from shardkv.common import hlc
from shardkv.common.hlc import HybridClock
from shardkv.router.placement.current import Placement
from shardkv.router.requests.batch_write import FINAL_CODES
from shardkv.router.requests.chunk_round import ChunkRound
from shardkv.router.requests.coalescer import Deliver, NodeFailure, node_left
from shardkv.router.requests.health import NodeHealth
from shardkv.router.requests.outcomes import ReadOutcome
from shardkv.router.requests.read_budget import ReadBudget
from shardkv.serving.tally import QuorumTally
from shardkv.v1 import replica_pb2

Record = replica_pb2.Record
# The general path: reads keys routed under an epoch (coordinator.py).
GeneralRead = Callable[[Sequence[bytes], int], Awaitable[list[ReadOutcome]]]
# Sends node the newest record of a key it answered older (best effort, in background).
Repair = Callable[[str, Record, int, int], None]


class KeyChunkLink(Protocol):
    """What this path needs of a node (NodeClient; fakes in the unit tests)."""

    def read_chunk(
        self, keys: list[bytes], deliver: Deliver[list[Record]], deadline: float, epoch: int
    ) -> None:
        """Queues keys as one item; deliver gets the node's records of all of them, in
        order (version 0 where it holds none), or the NodeFailure of the call."""


class _Round(ChunkRound):
    """One batch in flight: per key a reply count, the newest record so far and the
    answer; the chunks answered and failed; the future the request awaits."""

    __slots__ = ("answer", "answered", "best", "differ", "replies")

    def __init__(
        self,
        keys: int,
        needed: int,
        chunks: list[tuple[str, list[int]]],
        done: asyncio.Future[None],
    ) -> None:
        super().__init__(needed, chunks, done)
        self.replies = [0] * keys
        self.best: list[Record | None] = [None] * keys
        self.answer: list[Record | None] = [None] * keys
        # Keys whose replicas answered different records (read repair candidates).
        self.differ: set[int] = set()
        self.answered: list[tuple[str, list[int], list[Record]]] = []

    def expire(self) -> None:
        """The deadline passed: late replies count for nothing (as in quorum.py)."""
        self.expired = True
        self.open = [False] * len(self.chunks)
        self.chunks_left = 0
        self.close()


class BatchReader:
    """The fast path of Coordinator reads (see the module docstring)."""

    def __init__(
        self,
        *,
        placement: Placement,
        replication: int,
        clients: Mapping[str, KeyChunkLink],
        health: NodeHealth,
        clock: HybridClock,
        repair: Repair,
        tally: QuorumTally,
        max_chunk: int,
    ) -> None:
        self._placement = placement
        self._n = replication
        self._clients = clients
        self._health = health
        self._clock = clock
        self._repair = repair
        self._tally = tally
        self._max_chunk = max_chunk

    async def read(
        self,
        keys: Sequence[bytes],
        epoch: int,
        *,
        needed: int,
        deadline: float,
        budget: ReadBudget | None,
        general: GeneralRead,
    ) -> list[ReadOutcome]:
        """Reads keys routed under epoch; answers once each is decided. Replies beyond
        budget (bytes of records held) fail their chunk as RESOURCE_EXHAUSTED. general is
        the general path, with this request's quorum, deadline and budget."""
        layout = self._placement.layout
        if layout.new is not None or self._placement.uncounted or layout.epoch != epoch:
            return await general(keys, epoch)
        ring, n, down = layout.old, self._n, self._health.down
        aside: list[int] = []
        by_node: dict[str, list[int]] = {}
        for index, key in enumerate(keys):
            owners = ring.preference_list(key, n)
            if down and not down.isdisjoint(owners):
                aside.append(index)
                continue
            for node_id in owners:
                indexes = by_node.get(node_id)
                if indexes is None:
                    by_node[node_id] = [index]
                else:
                    indexes.append(index)
        loop = asyncio.get_running_loop()
        chunks = [
            (node_id, indexes[start : start + self._max_chunk])
            for node_id, indexes in by_node.items()
            for start in range(0, len(indexes), self._max_chunk)
        ]
        rnd = _Round(len(keys), needed, chunks, loop.create_future())
        rnd.undecided = len(keys) - len(aside)
        rnd.settle = partial(self._settle, rnd, epoch)
        if chunks:
            rnd.timer = loop.call_at(deadline, rnd.expire)
        detour = asyncio.ensure_future(general([keys[i] for i in aside], epoch)) if aside else None
        try:
            for chunk, (node_id, indexes) in enumerate(chunks):
                deliver = partial(self._reply, rnd, chunk, budget)
                client = self._clients.get(node_id)
                if client is None:
                    deliver(node_left(node_id))
                else:
                    client.read_chunk([keys[i] for i in indexes], deliver, deadline, epoch)
            if rnd.undecided and rnd.chunks_left:
                await rnd.done
            outcomes = self._outcomes(rnd, keys, set(aside))
            retry = [i for i in range(len(keys)) if outcomes[i] is None]
            if detour is not None:
                for index, outcome in zip(aside, await detour, strict=True):
                    outcomes[index] = outcome
                retry = [i for i in retry if outcomes[i] is None]
        finally:
            if detour is not None and not detour.done():
                detour.cancel()
        if retry:
            again = await general([keys[i] for i in retry], epoch)
            for index, outcome in zip(retry, again, strict=True):
                outcomes[index] = outcome
        return [o for o in outcomes if o is not None]

    def _reply(
        self,
        rnd: _Round,
        chunk: int,
        budget: ReadBudget | None,
        result: list[Record] | NodeFailure,
    ) -> None:
        """One chunk's reply: each record counts for its key, the newest kept."""
        if not rnd.open[chunk]:
            return  # arrived after the deadline
        rnd.open[chunk] = False
        node_id, indexes = rnd.chunks[chunk]
        if not isinstance(result, NodeFailure) and budget is not None:
            result = budget.take(node_id, result)
        if isinstance(result, NodeFailure):
            rnd.failures.append((node_id, indexes, result))
        else:
            self._health.heard_from(node_id)
            rnd.answered.append((node_id, indexes, result))
            replies, best, answer, needed = rnd.replies, rnd.best, rnd.answer, rnd.needed
            for index, record in zip(indexes, result, strict=True):
                held = best[index]
                if held is None:
                    best[index] = record
                elif record != held:  # one comparison in C, not four attribute reads
                    rnd.differ.add(index)
                    if hlc.precedes(held, record):
                        best[index] = record
                replies[index] += 1
                if replies[index] == needed:
                    answer[index] = best[index]
                    rnd.undecided -= 1
        rnd.chunks_left -= 1
        if not rnd.chunks_left:
            rnd.close()
        elif not rnd.undecided:
            rnd.finish()

    def _settle(self, rnd: _Round, epoch: int) -> None:
        """Every reply is in: each replica that answered a key with an older record than
        the newest gets the newest (keys the general path reads again are repaired there)."""
        if not rnd.differ:
            return
        differ, best = rnd.differ, rnd.best
        for node_id, indexes, records in rnd.answered:
            for index, record in zip(indexes, records, strict=True):
                if index not in differ:
                    continue
                newest = best[index]
                if newest is not None and newest.version and hlc.precedes(record, newest):
                    self._repair(node_id, newest, record.version, epoch)

    def _outcomes(
        self, rnd: _Round, keys: Sequence[bytes], skipped: set[int]
    ) -> list[ReadOutcome | None]:
        """Each key's outcome; None for a key the general path must read again."""
        replies, answer, needed, tally = rnd.replies, rnd.answer, rnd.needed, self._tally
        failed: dict[int, list[tuple[str, NodeFailure]]] = {}
        if rnd.undecided:
            for node_id, indexes, failure in rnd.failures:
                for index in indexes:
                    failed.setdefault(index, []).append((node_id, failure))
        outcomes: list[ReadOutcome | None] = []
        newest = 0
        for index, key in enumerate(keys):
            if index in skipped:
                outcomes.append(None)
                continue
            got = replies[index]
            record = answer[index]
            if record is not None:
                tally.add(needed, got)
                if record.version > newest:
                    newest = record.version
                outcomes.append(ReadOutcome(record if record.version else None, None))
                continue
            reasons = failed.get(index, [])
            final = any(f.code in FINAL_CODES for _, f in reasons)
            if not rnd.expired and not final:
                outcomes.append(None)
                continue
            tally.add(needed, got)
            outcomes.append(_failure(key, got, needed, self._n, reasons, rnd.expired))
        if newest:
            # Later writes order after every version read (one call for the batch).
            self._clock.observe(newest)
        return outcomes


def _failure(
    key: bytes,
    got: int,
    needed: int,
    replication: int,
    failed: Sequence[tuple[str, NodeFailure]],
    expired: bool,
) -> ReadOutcome:
    """A key that missed its quorum, worded as the general path words it (quorum.py)."""
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
    return ReadOutcome(None, error, code)
