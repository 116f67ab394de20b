"""Writes of a batch coordinated as a unit: per node one chunk of records and one reply.

The general write path (coordinator.py) keeps a Quorum per key, a callback per key and
replica, and a hint or marker plan per key: right for every case, but per key and replica
it costs Python objects and calls that dwarf what a node spends on the record. Most writes
need none of it: every owner of every key is up, no move is in progress and every owner
counts. For those, this path sends each node one chunk of the batch's records (one
coalesced item, one callback for its reply), as columns (writes.py; owners that take the
same records share one chunk, framed once: framing.py), and counts acknowledgements in an
array, one slot per key: a key is decided when its slot reaches W.

Anything else goes to the general path, which may be given a key at any time: the record
keeps its version and writer, and a replica that already holds it treats the second copy
as a no-op, so sending it again changes nothing. Keys with a DOWN owner go there from the
start; a key that missed its quorum because a call failed goes there once every reply is
in (there it gets hints on fallbacks, or fails with the general path's error), unless the
failure says a retry cannot help (a node out of resources, or fenced at a newer epoch,
which the caller routes again). Owners that did not acknowledge a key that succeeded get
the general path's remedy: every owner that did keeps a marker for them (replica.proto,
Marker), sent once every reply is in.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from functools import partial
from typing import Protocol

import grpc
from shardkv.common.deadlines import Deadlines
from shardkv.router.placement.current import Placement
from shardkv.router.requests.chunk_round import ChunkRound, SameKeys, chunked
from shardkv.router.requests.coalescer import Deliver, NodeFailure, node_left
from shardkv.router.requests.framing import ColumnChunk
from shardkv.router.requests.health import NodeHealth
from shardkv.router.requests.outcomes import WriteOutcome
from shardkv.router.requests.writes import Writes
from shardkv.serving.tally import QuorumTally
from shardkv.v1 import replica_pb2

Record = replica_pb2.Record
# The general path: places records routed under an epoch (coordinator.py).
GeneralPlace = Callable[[Sequence[Record], int], Awaitable[list[WriteOutcome]]]
# Has node keep markers for targets beside its copy of record (best effort, in background).
KeepMarkers = Callable[[str, Record, tuple[str, ...], int], None]
# Failures after which sending the same records again cannot help.
FINAL_CODES = frozenset({grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.FAILED_PRECONDITION})


class ChunkLink(Protocol):
    """What this path needs of a node (NodeClient; fakes in the unit tests)."""

    def apply_chunk(
        self, records: ColumnChunk, deliver: Deliver[bool], deadline: float, epoch: int
    ) -> None:
        """Queues records as one item; deliver gets True once the node applied (or already
        held) every one of them, or the NodeFailure of the call."""


class _Round(ChunkRound):
    """One batch in flight: an acknowledgement counter per key, the failed chunks, and
    the future the request awaits."""

    __slots__ = ("acks", "answered", "silent")

    def __init__(
        self,
        keys: int,
        needed: int,
        chunks: list[tuple[str, list[int]]],
        done: asyncio.Future[None],
    ) -> None:
        super().__init__(needed, chunks, done)
        self.acks = [0] * keys
        # Chunks acknowledged, and chunks still unanswered when the deadline passed.
        self.answered: list[tuple[str, list[int]]] = []
        self.silent: list[tuple[str, list[int]]] = []

    def expire(self) -> None:
        """The deadline passed: chunks not answered count as silent, late replies as
        nothing (as in quorum.py)."""
        self.expired = True
        for chunk, waiting in enumerate(self.open):
            if waiting:
                self.open[chunk] = False
                self.silent.append(self.chunks[chunk])
        self.chunks_left = 0
        self.close()

    def retried(self, index: int, failed: Sequence[NodeFailure]) -> bool:
        """Whether a key goes to the general path: it missed its quorum with every reply
        in, and no failure says a retry cannot help."""
        return (
            not self.expired
            and self.acks[index] < self.needed
            and not any(f.code in FINAL_CODES for f in failed)
        )


class BatchWriter:
    """The fast path of Coordinator writes (see the module docstring)."""

    def __init__(
        self,
        *,
        placement: Placement,
        replication: int,
        clients: Mapping[str, ChunkLink],
        health: NodeHealth,
        keep_markers: KeepMarkers,
        tally: QuorumTally,
        max_chunk: int,
    ) -> None:
        self._placement = placement
        self._n = replication
        self._clients = clients
        self._health = health
        self._keep_markers = keep_markers
        self._tally = tally
        self._max_chunk = max_chunk
        self._deadlines = Deadlines()

    async def place(
        self,
        records: Sequence[Record],
        epoch: int,
        *,
        needed: int,
        deadline: float,
        general: GeneralPlace,
    ) -> list[WriteOutcome]:
        """Writes records routed under epoch; answers once each is decided. general is
        the general path, with this request's quorum and deadline. records are a
        request's Writes, or Records of one writer routed again (Writes.of_records)."""
        layout = self._placement.layout
        if layout.new is not None or self._placement.uncounted or layout.epoch != epoch:
            return await general(records, epoch)
        writes = records if isinstance(records, Writes) else Writes.of_records(records)
        ring, n, down = layout.old, self._n, self._health.down
        owners_of = ring.preference_lists(writes.keys, n)
        aside: list[int] = []
        by_node: dict[str, list[int]] = {}
        for index, owners in enumerate(owners_of):
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
        chunks = chunked(by_node, self._max_chunk)
        rnd = _Round(len(writes), needed, chunks, loop.create_future())
        rnd.undecided = len(writes) - len(aside)
        rnd.settle = partial(self._settle, rnd, writes, owners_of, epoch)
        if chunks:
            rnd.timer = self._deadlines.at(deadline, rnd.expire)
        detour = (
            asyncio.ensure_future(general([writes[i] for i in aside], epoch)) if aside else None
        )
        try:
            chunk_of = SameKeys(writes.chunk)  # built and framed once for its owners
            for chunk, (node_id, indexes) in enumerate(chunks):
                deliver = partial(self._reply, rnd, chunk)
                client = self._clients.get(node_id)
                if client is None:
                    deliver(node_left(node_id))
                else:
                    client.apply_chunk(chunk_of(indexes), deliver, deadline, epoch)
            if rnd.undecided and rnd.chunks_left:
                await rnd.done
            outcomes = self._outcomes(rnd, writes, owners_of, aside)
            retry = [i for i in range(len(writes)) if outcomes[i] is None]
            if detour is not None:
                for index, outcome in zip(aside, await detour, strict=True):
                    outcomes[index] = outcome
                retry = [i for i in retry if outcomes[i] is None]
        finally:
            if detour is not None and not detour.done():
                detour.cancel()
        if retry:
            again = await general([writes[i] for i in retry], epoch)
            for index, outcome in zip(retry, again, strict=True):
                outcomes[index] = outcome
        return [o for o in outcomes if o is not None]

    def _reply(self, rnd: _Round, chunk: int, result: bool | NodeFailure) -> None:
        """One chunk's reply: count it for each of its keys."""
        if not rnd.open[chunk]:
            return  # arrived after the deadline
        rnd.open[chunk] = False
        node_id, indexes = rnd.chunks[chunk]
        if isinstance(result, NodeFailure):
            rnd.failures.append((node_id, indexes, result))
        else:
            self._health.heard_from(node_id)
            rnd.answered.append((node_id, indexes))
            acks, needed = rnd.acks, rnd.needed
            for index in indexes:
                acks[index] += 1
                if acks[index] == needed:
                    rnd.undecided -= 1
        rnd.chunks_left -= 1
        if not rnd.chunks_left:
            rnd.close()
        elif not rnd.undecided:
            rnd.finish()

    def _failed_by_key(self, rnd: _Round) -> dict[int, list[tuple[str, NodeFailure]]]:
        failed: dict[int, list[tuple[str, NodeFailure]]] = {}
        for node_id, indexes, failure in rnd.failures:
            for index in indexes:
                failed.setdefault(index, []).append((node_id, failure))
        return failed

    def _missing_by_key(self, rnd: _Round) -> dict[int, list[str]]:
        """Per key, the owners whose chunk failed or stayed silent past the deadline."""
        missing: dict[int, list[str]] = {}
        for node_id, indexes, _ in rnd.failures:
            for index in indexes:
                missing.setdefault(index, []).append(node_id)
        for node_id, indexes in rnd.silent:
            for index in indexes:
                missing.setdefault(index, []).append(node_id)
        return missing

    def _settle(
        self,
        rnd: _Round,
        writes: Writes,
        owners_of: Sequence[tuple[str, ...]],
        epoch: int,
    ) -> None:
        """Every reply is in: owners that acknowledged a key keep markers for the owners
        that did not (keys the general path takes again get its markers instead)."""
        if not rnd.failures and not rnd.silent:
            return
        failed = self._failed_by_key(rnd)
        for index, nodes in self._missing_by_key(rnd).items():
            reasons = [f for _, f in failed.get(index, [])]
            if not rnd.acks[index] or rnd.retried(index, reasons):
                continue
            missing = tuple(nodes)
            for holder in owners_of[index]:
                if holder not in missing:
                    self._keep_markers(holder, writes[index], missing, epoch)

    def _outcomes(
        self,
        rnd: _Round,
        writes: Writes,
        owners_of: Sequence[tuple[str, ...]],
        general: Sequence[int],
    ) -> list[WriteOutcome | None]:
        """Each key's outcome; None for a key the general path must place again."""
        acks, needed, tally = rnd.acks, rnd.needed, self._tally
        skipped = set(general)
        failed = self._failed_by_key(rnd) if rnd.undecided else {}
        acked: dict[int, set[str]] = {}
        if rnd.undecided:
            for node_id, indexes in rnd.answered:
                for index in indexes:
                    acked.setdefault(index, set()).add(node_id)
        outcomes: list[WriteOutcome | None] = []
        reached = acknowledged = 0  # the tally of keys that reached W
        for index, version in enumerate(writes.versions):
            if index in skipped:
                outcomes.append(None)
                continue
            got = acks[index]
            if got >= needed:
                reached += 1
                acknowledged += got
                outcomes.append(WriteOutcome(version, None))
                continue
            reasons = failed.get(index, [])
            if rnd.retried(index, [f for _, f in reasons]):
                outcomes.append(None)
                continue
            tally.add(needed, got)
            by_node = dict(reasons)
            heard = acked.get(index, set())
            silent = [o for o in owners_of[index] if o not in heard and o not in by_node]
            failure = _failure(writes.keys[index], got, needed, self._n, by_node, silent)
            outcomes.append(WriteOutcome(version, failure, _code(by_node)))
        tally.add_reached(reached, needed, acknowledged)
        return outcomes


def _failure(
    key: bytes,
    got: int,
    needed: int,
    replication: int,
    failed: dict[str, NodeFailure],
    silent: Sequence[str],
) -> str:
    """Why a key missed its quorum, worded as the general path words it (quorum.py)."""
    reasons = [f"{node_id} ({failure})" for node_id, failure in sorted(failed.items())]
    reasons += [f"{node_id} (no answer before the deadline)" for node_id in sorted(silent)]
    return (
        f"write of key {key[:64]!r}: {got} of {needed} required replicas acknowledged"
        f" (N={replication}); failed: {', '.join(reasons) or 'none'}"
    )


def _code(failed: dict[str, NodeFailure]) -> grpc.StatusCode:
    """The status of a key that missed its quorum: RESOURCE_EXHAUSTED when an owner shed
    it, else UNAVAILABLE."""
    if any(f.code == grpc.StatusCode.RESOURCE_EXHAUSTED for f in failed.values()):
        return grpc.StatusCode.RESOURCE_EXHAUSTED
    return grpc.StatusCode.UNAVAILABLE
