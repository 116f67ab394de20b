"""Hinted hand-off: what nodes kept for an owner that missed writes goes to it when it returns.

A holder keeps two kinds of hints (shardkv.shardd.parked): records parked on a fallback
node, and markers an owner keeps for another owner of the same key; for a marker the
holder hands over its current record of the key. Every hint_interval_ms, and at once when
a node comes back from DOWN, the router asks each UP node which targets it holds hints
for; for every target that is UP, and every target no longer in the topology, it reads a
page of hints, applies each where it belongs now (hint_delivery.py: its target while the
target owns the key, else every current owner of the key), and then deletes those every
destination took from the holder (the holder removes a hint or marker only if it is not
newer than what was handed over). So after any topology change, within one round, hints
reach the current owners of their keys, including those parked for a node that gave a
range away or left. A failure anywhere leaves the hints where they are for the next round:
re-homing is retried until done. Hints for a node that is DOWN wait for it (or for its
removal). Hints are best effort, as in Cassandra: they do not replace anti-entropy (a
returning node also gets an anti-entropy pass of its ranges, router.repair.anti_entropy).

Tombstone GC must not purge a delete while an older write of the key waits in a hint that
may still reach an owner. Anti-entropy keeps the tombstones of segments whose owners have
hints waiting; that covers only hints whose target owns the key. ``placed`` tells it when
that holds: every target with hints is in the topology, and a complete round (every node
answered) found it without hints under the placement in force, so all its hints were
parked under this placement.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Iterable, Mapping

import grpc
from shardkv.router.placement.current import Placement
from shardkv.router.requests.health import NodeHealth
from shardkv.router.requests.hint_delivery import deliver
from shardkv.router.requests.node_client import NodeClient

log = logging.getLogger(__name__)

# Hints moved per ReadHints/Apply/DeleteHints step, and steps per target per round (so one
# huge backlog does not starve the other targets).
HINT_PAGE = 500
MAX_PAGES_PER_ROUND = 20


class HintHandoff:
    """The hand-off loop, and the last count of hints pending per target (for Admin)."""

    def __init__(
        self,
        clients: Mapping[str, NodeClient],
        health: NodeHealth,
        *,
        placement: Placement,
        replication: int,
        interval_s: float,
    ) -> None:
        """clients: the router's node channels, one per node of the topology (changed in
        place when the topology changes); placement: where keys live now."""
        self._clients = clients
        self._health = health
        self._placement = placement
        self._replication = replication
        self._interval_s = interval_s
        self.pending: Counter[str] = Counter()
        self.handed_off = 0
        # Per node: the topology epoch under which a complete round last found it without
        # hints (every hint it has now was parked under that epoch's placement).
        self._clean: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        health.on_return(lambda node_id: self._wake.set())

    def placed(self, targets: Iterable[str]) -> bool:
        """Whether every hint waiting for targets is for a key its target owns under the
        placement in force (see the module's docstring); tombstone GC relies on it."""
        epoch = self._placement.layout.epoch
        return all(t in self._clients and self._clean.get(t) == epoch for t in targets)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="hint-handoff")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self._interval_s)
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                await self.round()
            except Exception:
                log.exception("hint hand-off round failed")

    async def round(self) -> None:
        """Counts hints on every UP holder and hands over those whose target is UP or no
        longer in the topology."""
        epoch = self._placement.layout.epoch
        pending: Counter[str] = Counter()
        complete = True
        # A copy: the node set may change (a node added or removed) while this round awaits.
        for holder_id, holder in list(self._clients.items()):
            if not self._health.is_up(holder_id):
                complete = False
                continue
            try:
                summary = await holder.hint_summary()
            except grpc.aio.AioRpcError as err:
                log.info("hint summary from %s failed: %s", holder_id, err.code().name)
                complete = False
                continue
            for entry in summary.targets:
                left = entry.count
                if entry.target not in self._clients or self._health.is_up(entry.target):
                    moved, finished = await self._hand_off(holder_id, entry.target)
                    # Hints parked meanwhile may be among those moved: only a finished walk
                    # shows that none is left behind.
                    left = 0 if finished else max(1, left - moved)
                pending[entry.target] += left
        self.pending = pending
        if complete and self._placement.layout.epoch == epoch:
            for node_id in list(self._clients):
                if not pending[node_id]:
                    self._clean[node_id] = epoch

    async def _hand_off(self, holder_id: str, target_id: str) -> tuple[int, bool]:
        """Moves hints for target_id from holder_id to where they belong now; returns how
        many the holder deleted, and whether the walk finished (every hint it read was
        delivered, and the last page was short)."""
        holder = self._clients.get(holder_id)  # it may have left while this round awaited
        if holder is None:
            return 0, False
        moved = rehomed = 0
        finished = False
        try:
            for _ in range(MAX_PAGES_PER_ROUND):
                records = await holder.read_hints(target_id, HINT_PAGE)
                if not records:
                    finished = True
                    break
                delivered = await deliver(
                    records,
                    target_id,
                    clients=self._clients,
                    health=self._health,
                    placement=self._placement,
                    replication=self._replication,
                )
                if delivered.records:
                    moved += await holder.delete_hints(target_id, delivered.records)
                rehomed += delivered.rehomed
                # Undelivered hints stay first in the holder's order: the rest waits too.
                if len(delivered.records) < len(records):
                    break
                if len(records) < HINT_PAGE:
                    finished = True
                    break
            else:
                finished = not await holder.read_hints(target_id, 1)
        except grpc.aio.AioRpcError as err:
            log.info(
                "hint_handoff_stopped target=%s holder=%s code=%s detail=%r",
                target_id,
                holder_id,
                err.code().name,
                err.details(),
            )
        if moved:
            log.info(
                "hints_handed_off target=%s holder=%s count=%d rehomed=%d",
                target_id, holder_id, moved, rehomed,
            )  # fmt: skip
            self.handed_off += moved
        return moved, finished
