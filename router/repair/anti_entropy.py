"""Anti-entropy: replicas of every token segment compare digests and exchange only what
differs, newest winning; then tombstones the pass covered are purged (tombstone GC).

A pass, in the spirit of Dynamo's Merkle exchange and Riak's active anti-entropy:

1. digest: the token space is cut at every ring point and at ``[repair] segments`` equal
   cuts, so each segment has one preference list. Every node digests all the segments it
   replicates in one paced walk of its store (Replica.TokenDigests).
2. exchange: for each segment whose replicas' digests differ, the replicas list its keys
   with their versions but no values (StreamTokenRanges, keys_only); for every key some
   replica lacks or holds older, the newest record is read from a replica holding it and
   applied where it is missing. Only differing records travel.
3. purge: a segment is covered when all its N replicas answered and matched or were
   reconciled. Its replicas then drop tombstones older than min(now - tombstone_grace_s,
   the pass's start): every replica held each such tombstone (or something newer) when the
   pass compared them, so no replica can bring the deleted value back. Segments with a
   replica down, or whose replicas have hints waiting (a parked older write could still
   arrive), are not covered and keep their tombstones. That rule sees only hints whose
   target owns the key; after a topology change a hint may wait for a node that gave the
   key's range away or left, and its write would reach the key's owners by re-homing
   (router/requests/hint_delivery.py). So no tombstone at all is purged while some node
   fails to report its hints, or while hints wait that the hand-off cannot yet vouch were
   parked under the placement in force (HintHandoff.placed). Nor while some node may hold
   a copy of a segment it does not own (a move's leftover, until its drop): first every
   node drops what it holds of the pass's segments it does not own (a sweep, as
   Cassandra's ``nodetool cleanup``), and tombstones go only if every node did. Such a
   copy is never read (scans keep only owners' records), but it would come back the day
   its node owns the range again.

A node that does not count toward quorums (its data directory is new, behind or being
rebuilt: router/membership/identity.py) takes no part: what an old copy holds may be a
value deleted and purged everywhere else, so it is never a source, and its segments wait.

Passes run every ``[repair] interval_s``, on demand (Admin Repair), and shortly after a
node comes back from DOWN (over the segments it replicates only: it may have missed
writes that no hint covers), one at a time, paced to ``max_records_per_s`` on the nodes'
walks and on the records copied. A node marked DOWN is not asked, and a long call to a
node that goes DOWN meanwhile (hung, or cut off without a reset) is given up (while_up):
its segments are skipped and no tombstone is purged by that pass. A move cancels a
running pass, and no pass starts while the topology is in transition (a returning node's
pass waits until the move is over).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import grpc
from shardkv.common.hlc import LOGICAL_BITS
from shardkv.router.membership.live_topology import Membership
from shardkv.router.membership.move_plan import MoveConflict, describe_error, now_ms
from shardkv.router.pace import Pacer
from shardkv.router.placement.current import Piece, merge_ranges, pieces, segment_cuts
from shardkv.router.repair.reconcile import Reconciler, RepairProgress
from shardkv.router.requests.health import NodeHealth, NodeWentDown, while_up
from shardkv.v1 import replica_pb2

log = logging.getLogger(__name__)

# A walk of a node's whole store, paced, gets this long.
BULK_TIMEOUT_S = 3600.0
# A returning node's pass starts this long after it is UP again, so that hint hand-off
# (which starts at once) goes first and the pass finds little left to copy.
RETURN_DELAY_S = 1.0
# How often a returning node's pass checks whether a move is over.
MOVE_POLL_S = 5.0


@dataclass(frozen=True)
class _Plan:
    """The segments of one pass and, per node, the indices of those it replicates, under
    the topology epoch they were computed for."""

    segments: list[Piece]
    by_node: dict[str, list[int]]
    epoch: int


class AntiEntropy:
    """Runs repair passes in the background and on demand; reports the last one."""

    def __init__(
        self,
        *,
        membership: Membership,
        health: NodeHealth,
        moving: Callable[[], bool],
        hints_placed: Callable[[Iterable[str]], bool],
    ) -> None:
        """moving: whether a move is in progress; hints_placed: whether every hint waiting
        for these targets is for a key its target owns now (HintHandoff.placed)."""
        self._membership = membership
        self._health = health
        self._moving = moving
        self._hints_placed = hints_placed
        self._task: asyncio.Task[None] | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self.status = RepairProgress(0, "")
        # Nodes back from DOWN whose pass has not started yet, and the task that runs it.
        self._returned: set[str] = set()
        self._return_task: asyncio.Task[None] | None = None
        health.on_return(self._node_returned)

    def start(self) -> None:
        interval_s = self._membership.topology.repair.interval_s
        if interval_s:
            self._loop_task = asyncio.create_task(self._background(interval_s), name="repair")

    async def stop(self) -> None:
        for task in (self._loop_task, self._return_task, self._task):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def request(self) -> RepairProgress:
        """Starts a pass now (Admin Repair), or returns the one running."""
        if self._moving():
            raise MoveConflict("a node is being added or removed; repair runs after the move")
        if not self.running:
            self._launch("admin")
        return self.status

    async def pause(self) -> None:
        """Cancels a running pass (a move is starting); its segments stay uncovered."""
        if self.running and self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def wait(self) -> RepairProgress:
        """Waits for the running pass (if any) and returns its status."""
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        return self.status

    def _launch(self, trigger: str, only: frozenset[str] = frozenset()) -> None:
        """Starts a pass over every segment, or over the segments replicated by only."""
        self.status = RepairProgress(self.status.pass_number + 1, trigger)
        self._task = asyncio.create_task(self._pass(self.status, only), name="repair-pass")

    def _node_returned(self, node_id: str) -> None:
        """A node went from DOWN to UP: a pass of its segments follows shortly."""
        self._returned.add(node_id)
        if self._return_task is None or self._return_task.done():
            self._return_task = asyncio.create_task(self._repair_returned(), name="repair-return")

    async def _repair_returned(self) -> None:
        """Runs one pass over the segments of every node that returned meanwhile."""
        await asyncio.sleep(RETURN_DELAY_S)
        while self._returned:
            while self.running or self._moving():
                if self.running:
                    await self.wait()
                else:
                    await asyncio.sleep(MOVE_POLL_S)
            nodes = frozenset(self._returned)
            self._returned.clear()
            self._launch(f"node {', '.join(sorted(nodes))} returned", nodes)
            await self.wait()

    async def _background(self, interval_s: int) -> None:
        while True:
            await asyncio.sleep(interval_s)
            if not self.running and not self._moving():
                self._launch("background")
                await self.wait()

    async def _pass(self, status: RepairProgress, only: frozenset[str]) -> None:
        try:
            await self._run(status, only)
            status.phase = "done"
        except asyncio.CancelledError:
            status.error = "cancelled (a move started, or the router stopped)"
            raise
        except Exception as err:
            status.error = str(err) or type(err).__name__
            log.exception("repair pass %d failed", status.pass_number)
        finally:
            status.finished_ms = now_ms()
            log.info("repair pass %d: %s", status.pass_number, status.summary())

    async def _run(self, status: RepairProgress, only: frozenset[str]) -> None:
        topology = self._membership.topology
        layout = self._membership.layout
        if layout.new is not None:
            raise MoveConflict("the topology is in transition; repair runs after the move")
        settings = topology.repair
        pacer = Pacer(settings.max_records_per_s)
        cuts = segment_cuts(settings.segments) if settings.segments else ()
        segments = pieces(layout.old, layout.old, topology.replication, cuts=cuts)
        if only:
            segments = [segment for segment in segments if only.intersection(segment.old)]
        plan = _Plan(segments, _by_node(segments), layout.epoch)
        status.segments_total = len(segments)

        status.phase = "digest"
        digests, foreign = await self._digests(plan, settings.max_records_per_s)
        differing: list[int] = []
        covered: set[int] = set()
        for index, segment in enumerate(segments):
            answers = [digests.get(node_id, {}).get(index) for node_id in segment.old]
            if any(a is None for a in answers):
                status.segments_skipped += 1
            elif len({(a.digest, a.count) for a in answers if a is not None}) == 1:
                covered.add(index)
            else:
                differing.append(index)
        status.segments_differing = len(differing)
        status.segments_covered = len(covered)

        status.phase = "exchange"
        reconciler = Reconciler(self._membership.clients, self._health, pacer=pacer, status=status)
        reconciled = await reconciler.run(
            [segments[i] for i in differing], pace=settings.max_records_per_s
        )
        for index, segment in zip(differing, (segments[i] for i in differing), strict=True):
            if (segment.start, segment.end) in reconciled:
                covered.add(index)
        status.segments_covered = len(covered)

        status.phase = "purge"
        cutoff_ms = min(now_ms() - settings.tombstone_grace_s * 1000, status.started_ms)
        if await self._sweep(plan, foreign):
            await self._purge(plan, covered, cutoff_ms << LOGICAL_BITS, status)

    async def _digests(
        self, plan: _Plan, pace: int
    ) -> tuple[dict[str, dict[int, replica_pb2.TokenDigest]], dict[str, int]]:
        """Per node that answered, its digest of each segment it replicates, and how many
        records it holds of the segments it does not replicate (what the sweep drops). A
        node walks its whole store whatever ranges it is asked for, so asking for every
        segment of the pass costs the same walk."""
        clients = self._membership.clients
        ranges = [(segment.start, segment.end) for segment in plan.segments]

        async def one(node_id: str) -> tuple[str, dict[int, replica_pb2.TokenDigest], int] | None:
            if self._health.is_down(node_id) or node_id not in clients:
                return None
            if node_id in self._membership.placement.uncounted:
                return None  # its directory is being checked or rebuilt: never a source
            try:
                answers = await while_up(
                    self._health,
                    node_id,
                    clients[node_id].token_digests(
                        ranges, count_only=False, pace=pace, timeout_s=BULK_TIMEOUT_S
                    ),
                )
            except (grpc.aio.AioRpcError, NodeWentDown) as err:
                log.warning("repair: %s could not digest: %s", node_id, describe_error(err))
                return None
            owned = {i: answers[i] for i in plan.by_node.get(node_id, [])}
            foreign = sum(a.count for i, a in enumerate(answers) if i not in owned)
            return node_id, owned, foreign

        found = [f for f in await asyncio.gather(*(one(n) for n in list(clients))) if f]
        return {n: owned for n, owned, _ in found}, {n: foreign for n, _, foreign in found}

    async def _sweep(self, plan: _Plan, foreign: dict[str, int]) -> bool:
        """Every node drops what it holds of the pass's segments it does not own (foreign:
        how many such records each node that digested holds; a node that did not is asked
        all the same): copies a move left on a node that gave the range away (its drop
        failed or has not run yet). Nothing else stores records on a non-owner, and such a
        copy, unseen by the owners' digests, could outlive their purged tombstone and come
        back when its node owns the range again. Returns whether every node did (else no
        tombstone may be purged); a node DOWN did not."""
        clients = self._membership.clients
        swept = True
        for node_id, client in list(clients.items()):
            if self._membership.layout.epoch != plan.epoch:
                return False  # a move began: what a node owns is no longer the plan's
            if foreign.get(node_id) == 0:
                continue
            ranges = merge_ranges(
                (segment.start, segment.end)
                for segment in plan.segments
                if node_id not in segment.old
            )
            if not ranges:
                continue
            try:
                if self._health.is_down(node_id):
                    raise NodeWentDown(f"{node_id} is DOWN")
                dropped = await while_up(
                    self._health,
                    node_id,
                    client.purge_token_ranges(
                        ranges, all_records=True, timeout_s=BULK_TIMEOUT_S, epoch=plan.epoch
                    ),
                )
            except (grpc.aio.AioRpcError, NodeWentDown) as err:
                log.warning(
                    "repair: %s could not drop copies of ranges it does not own (%s); no"
                    " tombstone purged",
                    node_id,
                    describe_error(err),
                )
                swept = False
                continue
            if dropped:
                log.info(
                    "repair: %s dropped %d records of ranges it does not own", node_id, dropped
                )
        return swept

    async def _purge(
        self, plan: _Plan, covered: set[int], before_version: int, status: RepairProgress
    ) -> None:
        """Drops old tombstones of covered segments whose replicas have no hints waiting."""
        waiting = await self._hint_targets()
        if not self._hints_placed(waiting):
            log.info(
                "repair: no tombstone purged: hints wait for %s, not yet handed to the"
                " current owners of their keys",
                ", ".join(sorted(waiting)),
            )
            return
        clients = self._membership.clients
        for node_id, indices in plan.by_node.items():
            ranges = merge_ranges(
                (plan.segments[i].start, plan.segments[i].end)
                for i in indices
                if i in covered and not waiting.intersection(plan.segments[i].old)
            )
            if not ranges or node_id not in clients or self._health.is_down(node_id):
                continue  # a node DOWN keeps its tombstones until a later pass
            try:
                status.tombstones_purged += await while_up(
                    self._health,
                    node_id,
                    clients[node_id].purge_token_ranges(
                        ranges,
                        tombstones_before=before_version,
                        timeout_s=BULK_TIMEOUT_S,
                        epoch=plan.epoch,
                    ),
                )
            except (grpc.aio.AioRpcError, NodeWentDown) as err:
                reason = describe_error(err)
                log.warning("repair: %s could not purge tombstones: %s", node_id, reason)

    async def _hint_targets(self) -> set[str]:
        """Nodes some node holds hints for; every node must answer (else: all, no purge)."""
        targets: set[str] = set()
        for client in list(self._membership.clients.values()):
            try:
                summary = await client.hint_summary()
            except grpc.aio.AioRpcError:
                return set(self._membership.clients)
            targets.update(entry.target for entry in summary.targets if entry.count)
        return targets


def _by_node(segments: Sequence[Piece]) -> dict[str, list[int]]:
    by_node: dict[str, list[int]] = {}
    for index, segment in enumerate(segments):
        for node_id in segment.old:
            by_node.setdefault(node_id, []).append(index)
    return by_node
