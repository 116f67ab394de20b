"""What happens on a write and on a read: versions, replicas, quorums, hints and read repair.

Writes: each record gets a version from the router's hybrid logical clock (ties broken by
the router's writer number) and goes to all N owners of its key at once; the write
succeeds when W (or the level asked for) have acknowledged, and the other replica writes
carry on in the background. An owner that is DOWN, or whose write fails before the quorum
is decided (any failure but RESOURCE_EXHAUSTED), is replaced by the next node on the ring
beyond the preference list, which parks the record as a durable hint for the owner. As in
Cassandra, and unlike Dynamo's sloppy quorum, that hint never counts toward W: an
acknowledged write is on W owners, so any R owners that answer a later read include one
that holds it (R + W > N). The hint only hands the record over when the owner returns.

Every owner that does not acknowledge a write gets a hint, whatever the failure and in
every cluster shape. Where no fallback is up (3 nodes, N=3), the live owners keep a
(key, target) marker, committed with the record itself (replica.proto, Marker), and hand
their current record over when the target returns (hint_handoff.py). A marker kept by an
owner never counts toward W: the owner's own copy counts once, so one disk never counts
twice (two of three owners down: W=2 fails). Owners known DOWN get their markers with the
record; an owner that fails or stays silent is found when the write's replies are all in
(or its deadline passed), and the owners that acknowledged then keep markers for it.

Reads: on the batch path R owners are asked (a node measured much slower than the others
last), and the rest only when one fails or the request is late (speculative retry,
batch_read.py, replica_latency.py); on the per-key path every owner not known to be DOWN
is asked. The answer is the newest (version, writer) among the first R replies (a
tombstone answers not found). When every asked replica has answered (or the deadline
passed), each one that answered with an older record or none gets the newest one (read
repair), without the client waiting for it (key_reads.py).

During a move a key's owners are its old and its pending new owners, and each request
needs one more reply per pending owner (placement.py explains why that is enough).

Batches group their items by node; the per-node coalescers turn each group into one call.
Most requests (every owner up, no move, every owner counted) take the batch paths instead
(batch_write.py, batch_read.py): the same quorums, counted per batch in arrays, with one
chunk and one reply per node; a key they cannot decide that way comes back here.

Fencing: every item goes out with the topology epoch its owners were picked under. A node
fenced at a newer epoch refuses it; the request's failed items are then placed again once
the router has reloaded the topology (router/membership/fencing.py, ``rerouted``), which
the client never sees.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial

import grpc
from shardkv.common import hlc, requestid
from shardkv.common.hlc import HybridClock
from shardkv.router.membership.fencing import RouterEpoch, rerouted
from shardkv.router.placement.current import Placement
from shardkv.router.requests.batch_read import BatchReader
from shardkv.router.requests.batch_write import BatchWriter
from shardkv.router.requests.coalescer import Deliver, NodeFailure
from shardkv.router.requests.health import NodeHealth
from shardkv.router.requests.key_reads import KeyReader, apply_to, ignore
from shardkv.router.requests.node_client import MAX_BATCH_ITEMS
from shardkv.router.requests.node_link import ApplyItem, MarkedRecord, NodeLink
from shardkv.router.requests.outcomes import ReadOutcome, WriteOutcome, not_read, not_written
from shardkv.router.requests.quorum import Quorum, QuorumGroup
from shardkv.router.requests.read_budget import ReadBudget
from shardkv.router.requests.writes import Mutations, Writes
from shardkv.serving.tally import QuorumTally
from shardkv.v1 import replica_pb2

log = logging.getLogger(__name__)

# The outcomes live in outcomes.py (shared with the batch paths), Mutations in writes.py.
__all__ = ["Coordinator", "Mutations", "ReadOutcome", "WriteOutcome", "newest"]


def newest(records: Sequence[replica_pb2.Record]) -> replica_pb2.Record:
    """The record every replica would keep: highest (version, writer), ties broken by the
    contents (the one comparison nodes and repair use, shardkv.common.hlc)."""
    return hlc.newest(records)


@dataclass(slots=True)
class _Write:
    """One record being written: its owners and quorum, the nodes already holding or sent
    it, and who keeps hints for owners that were DOWN."""

    record: replica_pb2.Record
    owners: tuple[str, ...]
    used: set[str]
    deadline: float
    quorum: Quorum[bool] = field(init=False)
    # Owners the live owners keep markers for, sent with the record.
    marked: tuple[str, ...] = ()
    # Reply name of each hint on a fallback -> the owner it is for (None: no hint sent).
    hinted: dict[str, str] | None = None
    # The topology epoch the owners were picked under (sent with every item of the write).
    epoch: int = 0


# Items per node: (record or hint, its write, replica name, whether it goes to an owner).
_Outbox = defaultdict[str, list[tuple[ApplyItem, _Write, str, bool]]]


class Coordinator:
    """Places each key's reads and writes on its replicas and decides by quorum."""

    def __init__(
        self,
        *,
        ring: Placement,
        replication: int,
        clients: Mapping[str, NodeLink],
        health: NodeHealth,
        clock: HybridClock,
        writer: int,
        repair_timeout_s: float,
        epochs: RouterEpoch | None = None,
    ) -> None:
        """epochs: what a fence refusal reloads (None: requests are not routed again)."""
        self._ring = ring
        self._epochs = epochs
        # Runs a request, routing its items again past fence refusals (fencing.py).
        self._routed = partial(rerouted, placement=ring, epochs=epochs)
        self._n = replication
        self._clients = clients
        self._health = health
        self._clock = clock
        self._writer = writer
        self._repair_timeout_s = repair_timeout_s
        # Plain counters the metrics endpoint reads (router/api/metrics.py).
        self.hints_stored = 0
        # Markers owners were asked to keep for other owners (not hints on fallbacks).
        self.markers_kept = 0
        self.reads = QuorumTally()
        self.writes = QuorumTally()
        # The per-key read path, and read repair (key_reads.py).
        self._key_reader = KeyReader(
            ring=ring,
            replication=replication,
            clients=clients,
            health=health,
            clock=clock,
            repair_timeout_s=repair_timeout_s,
            tally=self.reads,
        )
        # The batch paths: every owner up, no move, every owner counted (most requests).
        self._batch_writer = BatchWriter(
            placement=ring,
            replication=replication,
            clients=clients,
            health=health,
            keep_markers=self._keep_markers,
            tally=self.writes,
            max_chunk=MAX_BATCH_ITEMS,
        )
        self._batch_reader = BatchReader(
            placement=ring,
            replication=replication,
            clients=clients,
            health=health,
            clock=clock,
            repair=self._key_reader.repair_one,
            tally=self.reads,
            max_chunk=MAX_BATCH_ITEMS,
        )

    @property
    def repairs(self) -> int:
        """Read repairs sent, by either read path."""
        return self._key_reader.repairs

    @property
    def placement(self) -> Placement:
        """Where keys live now (scans keep only what owners hold: requests/scan.py)."""
        return self._ring

    @property
    def epochs(self) -> RouterEpoch | None:
        """What a fence refusal catches up with (scans route their rounds again with it)."""
        return self._epochs

    async def write(self, mutations: Mutations, needed: int, deadline: float) -> list[WriteOutcome]:
        """Writes every mutation with a fresh version; answers once each is decided."""
        # One clock call for the batch: its versions are consecutive, in mutation order.
        count = len(mutations.keys)
        first = self._clock.now_many(count) if count else 0
        writes = Writes(
            mutations.keys,
            mutations.values,
            mutations.deletes,
            range(first, first + count),
            self._writer,
        )
        general = partial(self._place_at, needed=needed, deadline=deadline)
        place = partial(self._batch_writer.place, needed=needed, deadline=deadline, general=general)
        return await self._routed(writes, place, not_written, deadline=deadline)

    async def write_records(
        self, records: Sequence[replica_pb2.Record], needed: int, deadline: float
    ) -> list[WriteOutcome]:
        """Writes records with the versions and writers they carry (a restore), exactly as
        writes travel; the clock moves past them, so later writes order after them. A
        version beyond the max clock offset refuses the whole call (VersionAhead). Records
        marked restore are judged by each owner (Record.restore), never parked on a
        fallback, which could not judge them."""
        for record in records:
            self._clock.check(record.version, f"restored record of key {record.key[:64]!r}")
        if records:
            self._clock.observe(max(record.version for record in records))
        return await self._place(records, needed, deadline)

    async def _place(
        self, records: Sequence[replica_pb2.Record], needed: int, deadline: float
    ) -> list[WriteOutcome]:
        place = partial(self._place_at, needed=needed, deadline=deadline)
        return await self._routed(records, place, not_written, deadline=deadline)

    async def _place_at(
        self, records: Sequence[replica_pb2.Record], epoch: int, *, needed: int, deadline: float
    ) -> list[WriteOutcome]:
        group: QuorumGroup[bool] = QuorumGroup(deadline)
        plans: list[_Write] = []
        outbox: _Outbox = defaultdict(list)
        for record in records:
            owners = self._ring.preference_list(record.key, self._n)
            plan = _Write(record, owners, set(owners), deadline, epoch=epoch)
            # During a move, one more acknowledgement per pending owner (see placement.py).
            plan.quorum = group.quorum(
                needed,
                partial(self._cover, plan),
                pending=self._ring.pending_owners(record.key, self._n),
            )
            item: ApplyItem = record
            down = [owner for owner in owners if self._health.is_down(owner)]
            if down:
                plan.marked = tuple(o for o in down if not self._hint(plan, o, outbox))
                for owner in down:
                    reason = self._health.last_error(owner) or "DOWN"
                    kept = "owners keep a marker" if owner in plan.marked else "hint parked"
                    plan.quorum.fail(owner, f"DOWN ({reason}); {kept}")
                if plan.marked:
                    item = MarkedRecord(record, plan.marked)
                    self.markers_kept += len(plan.marked)
            for owner in owners:
                if not down or owner not in down:
                    outbox[owner].append((item, plan, owner, True))
            plans.append(plan)
        self._send(outbox, deadline)
        await group.wait()
        for plan in plans:
            self.writes.add(plan.quorum.needed, plan.quorum.acks)
        return [
            WriteOutcome(
                plan.record.version,
                None,
                possibly_deleted=plan.record.restore and False in plan.quorum.ok.values(),
            )
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
                        name,
                        partial(self._redirect, plan, node_id) if direct else None,
                        counts=direct,
                    ),
                )
                for item, plan, name, direct in entries
            ]
            self._apply(node_id, items, deadline, entries[0][1].epoch)

    def _apply(
        self,
        node_id: str,
        items: list[tuple[ApplyItem, Deliver[bool]]],
        deadline: float,
        epoch: int,
    ) -> None:
        apply_to(self._clients, node_id, items, deadline, epoch)

    def _redirect(self, plan: _Write, owner: str, failure: NodeFailure) -> None:
        """An owner's write failed before the quorum was decided: park the record on a
        fallback instead (one that refused for lack of resources is not spilled over, nor
        one fenced past the write's epoch: the write is routed again)."""
        if failure.code in (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            grpc.StatusCode.FAILED_PRECONDITION,
        ):
            return
        outbox: _Outbox = defaultdict(list)
        if self._hint(plan, owner, outbox):
            self._send(outbox, plan.deadline)

    def _cover(self, plan: _Write, quorum: Quorum[bool]) -> None:
        """Every reply is in (or the deadline passed): the owners that acknowledged keep a
        marker for each owner that did not and has no hint yet (failed, silent, or its
        fallback's hint failed). Nobody waits for this; a marker that fails to land is
        left to anti-entropy (the owner's return from DOWN starts a pass)."""
        if not quorum.failed:
            return  # every owner acknowledged
        ok = quorum.ok
        holders = [owner for owner in plan.owners if owner in ok]
        covered = set(plan.marked) if holders else set()
        if plan.hinted:
            covered.update(owner for name, owner in plan.hinted.items() if name in ok)
        missing = tuple(o for o in plan.owners if o not in ok and o not in covered)
        if not missing:
            return
        if not holders:  # the write failed outright (not logged per key: overload sheds many)
            log.debug(
                "no owner acknowledged key=%r to keep markers for %s request_id=%s",
                plan.record.key[:64],
                ",".join(missing),
                requestid.current.get() or "-",
            )
            return
        item = MarkedRecord(plan.record, missing)
        deadline = asyncio.get_running_loop().time() + self._repair_timeout_s
        for holder in holders:
            self._apply(holder, [(item, ignore)], deadline, plan.epoch)
        self.markers_kept += len(missing)

    def _keep_markers(
        self, holder: str, record: replica_pb2.Record, targets: tuple[str, ...], epoch: int
    ) -> None:
        """The batch path's _cover: holder keeps markers for targets beside record."""
        deadline = asyncio.get_running_loop().time() + self._repair_timeout_s
        self._apply(holder, [(MarkedRecord(record, targets), ignore)], deadline, epoch)
        self.markers_kept += len(targets)

    def _hint(self, plan: _Write, owner: str, outbox: _Outbox) -> bool:
        """Queues a hint for owner on the next fallback not down; False when there is none
        (or the record is a restore's: the owners keep markers for it instead)."""
        if plan.record.restore:
            return False
        candidates = self._ring.fallbacks(plan.record.key, self._n, skip=frozenset(plan.used))
        fallback = next((n for n in candidates if not self._health.is_down(n)), None)
        if fallback is None:
            return False
        plan.used.add(fallback)
        self.hints_stored += 1
        hint = replica_pb2.Hint(target=owner, record=plan.record)
        name = f"{fallback} (hint for {owner})"
        if plan.hinted is None:
            plan.hinted = {}
        plan.hinted[name] = owner
        outbox[fallback].append((hint, plan, name, False))
        return True

    async def read(
        self,
        keys: Sequence[bytes],
        needed: int,
        deadline: float,
        *,
        budget: ReadBudget | None = None,
    ) -> list[ReadOutcome]:
        """Each key's entry of the answer (a ReadFailure where it could not be read).
        Reads every key from R of its owners (more when one is late or fails; every
        live owner during a move or with an owner DOWN or not counted: batch_read.py,
        key_reads.py); answers once each key is decided. Replies beyond budget (bytes of
        answers and records held) are dropped as RESOURCE_EXHAUSTED."""
        general = partial(self._key_reader.read_at, needed=needed, deadline=deadline, budget=budget)
        read = partial(
            self._batch_reader.read,
            needed=needed,
            deadline=deadline,
            budget=budget,
            general=general,
        )
        return await self._routed(keys, read, not_read, deadline=deadline)
