"""Reads of a batch coordinated as a unit: per node one chunk of keys and one reply.

Each key asks R of its N owners (R: the level's count; ALL asks all, ONE asks one) in one
order of the nodes per batch, the least asked now first, the clearly slower last
(replica_latency.py): keys that share owners ask the same ones. R + W > N still gives
read-your-writes: any R owners share one with every W owners that acknowledged a write.
A key whose asked owner fails, or that is still undecided once its round is late, asks its
remaining owners at once (Cassandra's speculative retry): a slow, stopped or failing owner
costs a read that delay, never its answer. A round is late after the speculative delay
(the slowest reply a typical node gave lately, at least 5 ms: replica_latency.py) and
SPREAD times its first answer; before any answer, after SPREAD times the delay if it asked
one node, else half its time; and never after half its time, however long the delay. So
owners merely queued behind other work, as every owner is under a load of large batches,
are waited for rather than joined by a third owner queued behind the same work; a stopped
owner is found by the answers of the others. The answer is the newest record among the
first R replies; once every reply is in, each asked owner that answered with an older
record (or none) gets the newest one (read repair). An owner not asked is left to the next
read that asks it, a read at ALL, or anti-entropy, as in Cassandra.

The bookkeeping is per batch: each node gets one chunk of the batch's keys (one coalesced
item, one callback for its reply; owners asked the same keys share its list), and per key
a reply counter, the newest (version, writer) so far with where its entry lies, and the
answer fixed at the R-th reply, in arrays. Nodes answer each key with its entry of the
client's answer, serialized (replica_answers.py): the router compares replicas by
(version, writer), which names one write, joins the newest entries as they are, parses one
only to repair a replica, and goes through replies again only for keys whose replicas
disagreed.

Anything else goes to the general path (key_reads.py), which asks every owner not DOWN: a
move in progress, an owner that does not count or is DOWN, and a key left short of R
replies once every owner was asked (unless a retry cannot help: a node out of resources,
or fenced at a newer epoch).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from functools import partial
from typing import Protocol, cast

from shardkv.common import hlc
from shardkv.common.deadlines import Deadlines, come
from shardkv.common.hlc import HybridClock
from shardkv.router.placement.current import Placement
from shardkv.router.requests import read_groups
from shardkv.router.requests.batch_write import FINAL_CODES
from shardkv.router.requests.chunk_round import SameKeys, chunked
from shardkv.router.requests.coalescer import Deliver, NodeFailure, node_left
from shardkv.router.requests.framing import KeyChunk
from shardkv.router.requests.health import NodeHealth
from shardkv.router.requests.outcomes import ReadOutcome, read_failure
from shardkv.router.requests.read_budget import ReadBudget
from shardkv.router.requests.read_groups import Answer, OwnerGroup, agreed, plan
from shardkv.router.requests.read_round import ReadRound
from shardkv.router.requests.replica_answers import ReplicaAnswers
from shardkv.router.requests.replica_latency import AskOrders, ReplicaLatency
from shardkv.serving.tally import QuorumTally
from shardkv.v1 import replica_pb2

Record = replica_pb2.Record
# How much later than a round's first answer its other owners may answer before it asks
# more: under a load of batches of 1000 the owners of one round answered up to about twice
# as late as the first (their queues differ), and at 2 a tenth of such rounds still asked a
# third owner; a stopped node never answers.
SPREAD = 3.0
# The general path: reads keys routed under an epoch (coordinator.py).
GeneralRead = Callable[[Sequence[bytes], int], Awaitable[list[ReadOutcome]]]
# Sends node the newest record of a key it answered older (best effort, in background).
Repair = Callable[[str, Record, int, int], None]


class KeyChunkLink(Protocol):
    """What this path needs of a node (NodeClient; fakes in the unit tests)."""

    def read_chunk(
        self, keys: KeyChunk, deliver: Deliver[ReplicaAnswers], deadline: float, epoch: int
    ) -> None:
        """Queues keys as one item; deliver gets the node's answers to all of them, in
        order, or the NodeFailure of the call."""


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
        self._latency = ReplicaLatency()
        self._orders = AskOrders()
        self._deadlines = Deadlines()

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
        budget (bytes of answers held) fail their chunk as RESOURCE_EXHAUSTED. general is
        the general path, with this request's quorum, deadline and budget."""
        layout = self._placement.layout
        if layout.new is not None or self._placement.uncounted or layout.epoch != epoch:
            return await general(keys, epoch)
        ring, n, down = layout.old, self._n, self._health.down
        loop = asyncio.get_running_loop()
        now = loop.time()
        slow, delay = self._latency.plan(now)
        first, order = min(needed, n), self._orders.next(ring.nodes, slow)
        asks = plan(ring.owner_groups(keys, n), first, down=down, order=order)
        aside, by_node = asks.aside, asks.by_node
        chunks = chunked(by_node, self._max_chunk)
        rnd = ReadRound(keys, needed, chunks, loop.create_future())
        rnd.epoch, rnd.deadline, rnd.budget, rnd.planned = epoch, deadline, budget, asks.groups
        # Counted by group once all are in (read_groups.py) when each node got one chunk.
        rnd.groups = asks.groups if len(chunks) == len(by_node) else None
        rnd.asked = [first] * len(keys)
        rnd.sent = [now] * len(chunks)
        rnd.undecided = len(keys) - len(aside)
        rnd.settle = partial(self._settle, rnd)
        if chunks:
            # The speculative delay first, if some owner is left to ask; by half the time
            # left at the latest, as _late bounds it (a delay may outlast the request).
            if first < n:
                rnd.delay = delay
                late = now + min(delay, (deadline - now) / 2)
                rnd.timer = self._deadlines.at(late, self._late, rnd)
            else:
                rnd.timer = self._deadlines.at(deadline, rnd.expire)
        detour = asyncio.ensure_future(general([keys[i] for i in aside], epoch)) if aside else None
        try:
            self._send(rnd, range(len(chunks)))
            if rnd.undecided and rnd.chunks_left:
                await rnd.done
            outcomes = self._outcomes(rnd, keys, set(aside))
            if not aside and (rnd.groups is not None or not rnd.undecided):
                return cast("list[ReadOutcome]", outcomes)  # every key answered
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

    def _send(self, rnd: ReadRound, chunks: range) -> None:
        """Queues the round's chunks numbered chunks, each to its node. A reply may come
        at once (a node that left): the caller counted every chunk as awaited first."""
        keys, deadline, epoch = rnd.keys, rnd.deadline, rnd.epoch
        keys_of = SameKeys(lambda indexes: KeyChunk.of([keys[i] for i in indexes]))
        for chunk in chunks:
            node_id, indexes = rnd.chunks[chunk]
            deliver = partial(self._reply, rnd, chunk)
            self._orders.sent(node_id, len(indexes))  # replied: every chunk gets one _reply
            client = self._clients.get(node_id)
            if client is None:
                deliver(node_left(node_id))
            else:
                client.read_chunk(keys_of(indexes), deliver, deadline, epoch)

    def _reply(self, rnd: ReadRound, chunk: int, result: ReplicaAnswers | NodeFailure) -> None:
        """One chunk's reply, timed for the node's estimate. A node's failure has the
        chunk's undecided keys ask their other owners at once."""
        node_id, indexes = rnd.chunks[chunk]
        self._orders.replied(node_id, len(indexes))
        if not rnd.open[chunk]:
            return  # arrived after the deadline
        rnd.open[chunk] = False
        now = asyncio.get_running_loop().time()
        if isinstance(result, NodeFailure):
            self._latency.failed(node_id, now)
            rnd.failures.append((node_id, indexes, result))
            self._count_stored(rnd)
            self._widen(rnd, indexes)
        else:
            self._latency.observe(node_id, now - rnd.sent[chunk], now)
            if rnd.first is None:
                rnd.first = now - rnd.sent[chunk]
                if rnd.waiting and rnd.timer is not None:
                    rnd.timer.cancel()
                    self._late(rnd)  # sets the moment from this answer
            answers = result if rnd.budget is None else rnd.budget.take(node_id, result)
            if isinstance(answers, NodeFailure):  # the budget is spent: more cannot help
                rnd.failures.append((node_id, indexes, answers))
                self._count_stored(rnd)
            else:
                self._health.heard_from(node_id)
                rnd.answered.append((node_id, indexes, answers))
                if rnd.groups is None:
                    self._count(rnd, indexes, answers)
        rnd.chunks_left -= 1
        if not rnd.chunks_left:
            rnd.close()
        elif not rnd.undecided:
            rnd.finish()

    def _count_stored(self, rnd: ReadRound) -> None:
        """Counts the answers held for counting by group, and each one from now on, key by
        key: a failure, a late round or the deadline need each key's count."""
        if rnd.groups is not None:
            rnd.groups = None
            for _, indexes, answers in rnd.answered:
                self._count(rnd, indexes, answers)

    @staticmethod
    def _count(rnd: ReadRound, indexes: list[int], answers: ReplicaAnswers, start: int = 0) -> None:
        """Each answer of a chunk (from position start) counts for its key; the newest is
        kept."""
        replies, newest, writer, source = rnd.replies, rnd.newest, rnd.writer, rnd.source
        answer, needed = rnd.answer, rnd.needed
        versions, writers = answers.versions, answers.writers
        for position, index in enumerate(indexes, start):
            version = versions[position]
            held = newest[index]
            if held < 0:
                newest[index] = version
                writer[index] = writers[position]
                source[index] = (answers, position)
            elif version != held or writers[position] != writer[index]:
                rnd.differ.add(index)
                if (held, writer[index]) < (version, writers[position]):
                    newest[index] = version
                    writer[index] = writers[position]
                    source[index] = (answers, position)
            else:  # one stamp: the same write, unless the contents differ (hlc.precedes)
                found, at = cast(Answer, source[index])
                if not answers.same(position, found, at):
                    rnd.differ.add(index)
                    if hlc.precedes(found.record(at), answers.record(position)):
                        source[index] = (answers, position)
            got = replies[index] + 1
            replies[index] = got
            if got == needed:
                answer[index] = source[index]
                rnd.undecided -= 1

    def _late(self, rnd: ReadRound) -> None:
        """The speculative delay passed with replies outstanding. Owners merely queued
        behind other work answer within about SPREAD times the round's first answer, so
        the round waits that long. Before any answer, a round that asked one node waits
        SPREAD times the delay; one that asked several may have them all queued, a third
        owner with them, so its first answer sets the moment (_reply calls back), or half
        its time passes. Then each chunk still awaited counts as a reply of at least the
        time waited, every undecided key asks its other owners, and the round waits for
        its deadline."""
        loop = asyncio.get_running_loop()
        now, start = loop.time(), rnd.sent[0]
        midpoint = start + (rnd.deadline - start) / 2
        rnd.waiting = False
        if rnd.first is not None:
            moment = start + max(rnd.delay, SPREAD * rnd.first)
        elif len({node_id for node_id, _ in rnd.chunks}) == 1:
            moment = start + SPREAD * rnd.delay
        else:
            rnd.waiting, moment = True, midpoint
        moment = min(moment, midpoint)
        if not come(moment, now):
            rnd.timer = self._deadlines.at(moment, self._late, rnd)
            return
        rnd.waiting = False
        rnd.timer = self._deadlines.at(rnd.deadline, rnd.expire)
        for chunk, (node_id, _) in enumerate(rnd.chunks):
            if rnd.open[chunk]:
                self._latency.observe(node_id, now - rnd.sent[chunk], now)
        if rnd.undecided:
            self._count_stored(rnd)
            short = [i for i, got in enumerate(rnd.replies) if got < rnd.needed]
            self._widen(rnd, short)

    def _widen(self, rnd: ReadRound, indexes: Sequence[int]) -> None:
        """Asks the owners not asked yet of each undecided key among indexes."""
        if rnd.expired:
            return
        by_node: dict[str, list[int]] = {}
        order, asked, replies, needed = rnd.orders(), rnd.asked, rnd.replies, rnd.needed
        for index in indexes:
            owners = order[index]
            if replies[index] >= needed or asked[index] >= len(owners):
                continue
            for node_id in owners[asked[index] :]:
                by_node.setdefault(node_id, []).append(index)
            asked[index] = len(owners)
        if not by_node:
            return
        chunks = chunked(by_node, self._max_chunk)
        start = len(rnd.chunks)
        rnd.chunks.extend(chunks)
        rnd.open.extend([True] * len(chunks))
        rnd.sent.extend([asyncio.get_running_loop().time()] * len(chunks))
        rnd.chunks_left += len(chunks)
        self._send(rnd, range(start, len(rnd.chunks)))

    def _settle(self, rnd: ReadRound) -> None:
        """Every reply is in: each replica that answered a key with an older record than
        the newest gets the newest (keys the general path reads again are repaired there).
        Groups are compared first; the keys of those whose owners disagree are counted."""
        if rnd.groups is not None:
            if rnd.expired:
                self._count_stored(rnd)
            else:
                replies = {node_id: answers for node_id, _, answers in rnd.answered}
                for group in rnd.groups:
                    together = agreed(group, replies)
                    rnd.agreed.append(together)
                    if not together:
                        for node_id, start in zip(group.nodes, group.starts, strict=True):
                            self._count(rnd, group.members, replies[node_id], start)
        if not rnd.differ:
            return
        differ, newest, writer, source = rnd.differ, rnd.newest, rnd.writer, rnd.source
        for node_id, indexes, answers in rnd.answered:
            for position, index in enumerate(indexes):
                if index not in differ or newest[index] <= 0:
                    continue
                found, at = cast(Answer, source[index])
                stamp = (answers.versions[position], answers.writers[position])
                best = (newest[index], writer[index])
                if stamp < best or (stamp == best and not answers.same(position, found, at)):
                    self._repair(node_id, found.record(at), stamp[0], rnd.epoch)

    def _outcomes(
        self, rnd: ReadRound, keys: Sequence[bytes], skipped: set[int]
    ) -> list[ReadOutcome | None]:
        """Each key's outcome; None for a key the general path must read again."""
        if rnd.groups is not None:
            return self._group_outcomes(rnd, len(keys))
        replies, answer, needed, tally = rnd.replies, rnd.answer, rnd.needed, self._tally
        failed: dict[int, list[tuple[str, NodeFailure]]] = {}
        if rnd.undecided:
            for node_id, indexes, failure in rnd.failures:
                for index in indexes:
                    failed.setdefault(index, []).append((node_id, failure))
        # Later writes order after every version read (one clock call for the batch).
        self._clock.observe(max(rnd.newest, default=0))
        if not skipped and not rnd.undecided:  # every key answered: no check per key
            tally.add_reached(len(keys), needed, sum(replies))
            decided = cast("list[tuple[ReplicaAnswers, int]]", answer)
            return [a.entries[a.starts[p] : a.ends[p]] for a, p in decided]
        outcomes: list[ReadOutcome | None] = []
        reached = answers = 0  # the tally of keys answered
        for index, key in enumerate(keys):
            if index in skipped:
                outcomes.append(None)
                continue
            got = replies[index]
            chosen = answer[index]
            if chosen is not None:
                reached += 1
                answers += got
                found, position = chosen
                outcomes.append(found.entry(position))
                continue
            reasons = failed.get(index, [])
            final = any(f.code in FINAL_CODES for _, f in reasons)
            if not rnd.expired and not final:
                outcomes.append(None)
                continue
            tally.add(needed, got)
            outcomes.append(read_failure(key, got, needed, self._n, reasons, rnd.expired))
        tally.add_reached(reached, needed, answers)
        return outcomes

    def _group_outcomes(self, rnd: ReadRound, count: int) -> list[ReadOutcome | None]:
        """Each key's outcome when every owner asked answered (counted by group)."""
        groups = cast("list[OwnerGroup]", rnd.groups)
        replies = {node_id: answers for node_id, _, answers in rnd.answered}
        self._clock.observe(read_groups.newest_read(groups, rnd.agreed, replies, rnd.newest))
        answered = sum(len(group.members) for group in groups)
        replied = sum(len(group.members) * len(group.nodes) for group in groups)
        self._tally.add_reached(answered, rnd.needed, replied)
        return read_groups.group_outcomes(groups, rnd.agreed, replies, rnd.answer, count)
