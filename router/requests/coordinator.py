"""What happens on a write and on a read: versions, replicas, quorums, hints and read repair.

Writes: each record gets a version from the router's hybrid logical clock (ties broken by
the router's writer number) and goes to all N owners of its key at once; the write
succeeds when W (or the level asked for) have acknowledged, and the other replica writes
carry on in the background. An owner that is DOWN, or whose write fails as UNAVAILABLE, is
replaced by the next node on the ring beyond the preference list, which parks the record
as a durable hint for the owner; that hint counts toward W. This is Dynamo's sloppy
quorum: it keeps writes available while a node is down, at the price that an
acknowledged write may, for a while, sit on fewer than W of its owners (R + W > N then
guarantees read-your-writes only once the hints are handed back).

Reads: every owner not known to be DOWN is asked; the answer is the newest (version,
writer) among the first R replies (a tombstone answers not found). When every asked
replica has answered (or the deadline passed), each one that answered with an older record
or none gets the newest one (read repair), without the client waiting for it.

During a move a key's owners are its old and its pending new owners, and each request
needs one more reply per pending owner (placement.py explains why that is enough).

Batches group their items by node; the per-node coalescers turn each group into one call.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial

import grpc
from shardkv.common import requestid
from shardkv.common.hlc import HybridClock
from shardkv.router.placement.current import Placement
from shardkv.router.requests.coalescer import NodeFailure
from shardkv.router.requests.health import NodeHealth
from shardkv.router.requests.node_client import ApplyItem, NodeClient
from shardkv.router.requests.quorum import Quorum, QuorumGroup
from shardkv.serving.tally import QuorumTally
from shardkv.v1 import replica_pb2

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Mutation:
    """One write: a value, or a delete (tombstone) when delete is true."""

    key: bytes
    value: bytes = b""
    delete: bool = False


@dataclass(frozen=True, slots=True)
class WriteOutcome:
    """The version a write got, and why it failed (None when it reached its quorum) with the
    status that failure maps to."""

    version: int
    error: str | None
    code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE


@dataclass(frozen=True, slots=True)
class ReadOutcome:
    """The newest record of a key among its replies (None when none holds it), or an error
    with its status."""

    record: replica_pb2.Record | None
    error: str | None
    code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE


def newest(records: Sequence[replica_pb2.Record]) -> replica_pb2.Record:
    """The record every replica would keep: highest (version, writer)."""
    return max(records, key=lambda r: (r.version, r.writer))


@dataclass(slots=True)
class _Write:
    """One record being written: its quorum, and the nodes already holding or sent it."""

    record: replica_pb2.Record
    quorum: Quorum[bool]
    used: set[str]
    deadline: float


# Items per node: (record or hint, its write, replica name, whether it goes to an owner).
_Outbox = defaultdict[str, list[tuple[ApplyItem, _Write, str, bool]]]


class Coordinator:
    """Places each key's reads and writes on its replicas and decides by quorum."""

    def __init__(
        self,
        *,
        ring: Placement,
        replication: int,
        clients: Mapping[str, NodeClient],
        health: NodeHealth,
        clock: HybridClock,
        writer: int,
        repair_timeout_s: float,
    ) -> None:
        self._ring = ring
        self._n = replication
        self._clients = clients
        self._health = health
        self._clock = clock
        self._writer = writer
        self._repair_timeout_s = repair_timeout_s
        # Plain counters the metrics endpoint reads (router/api/metrics.py).
        self.repairs = 0
        self.hints_stored = 0
        self.reads = QuorumTally()
        self.writes = QuorumTally()

    async def write(
        self, mutations: Sequence[Mutation], needed: int, deadline: float
    ) -> list[WriteOutcome]:
        """Writes every mutation with a fresh version; answers once each is decided."""
        records = [
            replica_pb2.Record(
                key=mutation.key,
                value=b"" if mutation.delete else mutation.value,
                version=self._clock.now(),
                writer=self._writer,
                tombstone=mutation.delete,
            )
            for mutation in mutations
        ]
        return await self._place(records, needed, deadline)

    async def write_records(
        self, records: Sequence[replica_pb2.Record], needed: int, deadline: float
    ) -> list[WriteOutcome]:
        """Writes records with the versions and writers they carry (a restore), exactly as
        writes travel; the clock moves past them, so later writes order after them."""
        if records:
            self._clock.observe(max(record.version for record in records))
        return await self._place(records, needed, deadline)

    async def _place(
        self, records: Sequence[replica_pb2.Record], needed: int, deadline: float
    ) -> list[WriteOutcome]:
        group: QuorumGroup[bool] = QuorumGroup(deadline)
        plans: list[_Write] = []
        outbox: _Outbox = defaultdict(list)
        for record in records:
            owners = self._ring.preference_list(record.key, self._n)
            # During a move, one more acknowledgement per pending owner (see placement.py).
            quorum = group.quorum(needed + self._ring.pending(record.key, self._n))
            plan = _Write(record, quorum, set(owners), deadline)
            for owner in owners:
                if self._health.is_down(owner):
                    if not self._hint(plan, owner, outbox):
                        reason = self._health.last_error(owner) or "DOWN"
                        plan.quorum.fail(owner, f"DOWN ({reason}); no fallback node up for a hint")
                else:
                    outbox[owner].append((record, plan, owner, True))
            plans.append(plan)
        self._send(outbox, deadline)
        await group.wait()
        for plan in plans:
            self.writes.add(plan.quorum.needed, len(plan.quorum.ok))
        return [
            WriteOutcome(plan.record.version, None)
            if plan.quorum.succeeded
            else WriteOutcome(
                plan.record.version,
                plan.quorum.describe("write", plan.record.key, self._n),
                plan.quorum.failure_code(),
            )
            for plan in plans
        ]

    def _send(self, outbox: _Outbox, deadline: float) -> None:
        """Submits each node's items together, so they share one coalesced call."""
        for node_id, entries in outbox.items():
            items = [
                (
                    item,
                    plan.quorum.add(
                        name, partial(self._redirect, plan, node_id) if direct else None
                    ),
                )
                for item, plan, name, direct in entries
            ]
            self._clients[node_id].apply(items, deadline)

    def _redirect(self, plan: _Write, owner: str, failure: NodeFailure) -> None:
        """An owner's write failed as UNAVAILABLE: park the record on a fallback instead."""
        if failure.code != grpc.StatusCode.UNAVAILABLE:
            return
        outbox: _Outbox = defaultdict(list)
        if self._hint(plan, owner, outbox):
            self._send(outbox, plan.deadline)

    def _hint(self, plan: _Write, owner: str, outbox: _Outbox) -> bool:
        """Queues a hint for owner on the next fallback not down; False when there is none."""
        candidates = self._ring.fallbacks(plan.record.key, self._n, skip=frozenset(plan.used))
        fallback = next((n for n in candidates if not self._health.is_down(n)), None)
        if fallback is None:
            return False
        plan.used.add(fallback)
        self.hints_stored += 1
        hint = replica_pb2.Hint(target=owner, record=plan.record)
        outbox[fallback].append((hint, plan, f"{fallback} (hint for {owner})", False))
        return True

    async def read(self, keys: Sequence[bytes], needed: int, deadline: float) -> list[ReadOutcome]:
        """Reads every key from its live owners; answers once each key is decided."""
        group: QuorumGroup[replica_pb2.Record] = QuorumGroup(deadline)
        quorums: list[Quorum[replica_pb2.Record]] = []
        outbox: defaultdict[str, list[tuple[bytes, Quorum[replica_pb2.Record]]]] = defaultdict(list)
        for key in keys:
            quorum = group.quorum(
                needed + self._ring.pending(key, self._n), partial(self._repair, key)
            )
            for owner in self._ring.preference_list(key, self._n):
                if self._health.is_down(owner):
                    quorum.fail(owner, f"DOWN ({self._health.last_error(owner) or 'not serving'})")
                else:
                    outbox[owner].append((key, quorum))
            quorums.append(quorum)
        for node_id, entries in outbox.items():
            self._clients[node_id].read([(key, q.add(node_id)) for key, q in entries], deadline)
        await group.wait()
        outcomes = []
        for key, quorum in zip(keys, quorums, strict=True):
            self.reads.add(quorum.needed, len(quorum.ok))
            if not quorum.succeeded:
                error = quorum.describe("read", key, self._n)
                outcomes.append(ReadOutcome(None, error, quorum.failure_code()))
                continue
            best = newest(list(quorum.ok.values()))
            self._clock.observe(best.version)
            outcomes.append(ReadOutcome(best if best.version else None, None))
        return outcomes

    def _repair(self, key: bytes, quorum: Quorum[replica_pb2.Record]) -> None:
        """Sends the newest record to every replica that answered with an older one or none."""
        if not quorum.ok:
            return
        best = newest(list(quorum.ok.values()))
        if not best.version:
            return
        stale = [
            node_id
            for node_id, record in quorum.ok.items()
            if (record.version, record.writer) < (best.version, best.writer)
        ]
        if not stale:
            return
        deadline = asyncio.get_running_loop().time() + self._repair_timeout_s
        for node_id in stale:
            log.debug(
                "read_repair key=%r node=%s from_version=%d to_version=%d request_id=%s",
                key[:64],
                node_id,
                quorum.ok[node_id].version,
                best.version,
                requestid.current.get() or "-",
            )
            self._clients[node_id].apply([(best, _ignore)], deadline)
            self.repairs += 1


def _ignore(result: bool | NodeFailure) -> None:
    """Read repair is best effort: a failed repair is retried by the next read."""
