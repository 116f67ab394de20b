"""Hinted hand-off: what nodes kept for an owner that missed writes goes to it when it returns.

A holder keeps two kinds of hints (shardkv.shardd.parked): records parked on a fallback
node, and markers an owner keeps for another owner of the same key; for a marker the
holder hands over its current record of the key. Every hint_interval_ms, and at once when
a node comes back from DOWN, the router asks each UP node which targets it holds hints
for; for every target that is UP it reads a page of hints, applies them to the target (the
target keeps each only if newer, so a repeat is harmless), and then deletes them from the
holder (the holder removes a hint or marker only if it is not newer than what was handed
over). A failure anywhere leaves the hints where they are for the next round. Hints are
best effort, as in Cassandra: they do not replace anti-entropy (a returning node also gets
an anti-entropy pass of its ranges, router.repair.anti_entropy).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Mapping

import grpc
from shardkv.router.requests.health import NodeHealth
from shardkv.router.requests.node_client import NodeClient

log = logging.getLogger(__name__)

# Hints moved per ReadHints/Apply/DeleteHints step, and steps per target per round (so one
# huge backlog does not starve the other targets).
HINT_PAGE = 500
MAX_PAGES_PER_ROUND = 20


class HintHandoff:
    """The hand-off loop, and the last count of hints pending per target (for Admin)."""

    def __init__(
        self, clients: Mapping[str, NodeClient], health: NodeHealth, *, interval_s: float
    ) -> None:
        self._clients = clients
        self._health = health
        self._interval_s = interval_s
        self.pending: Counter[str] = Counter()
        self.handed_off = 0
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        health.on_return(lambda node_id: self._wake.set())

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
        """Counts hints on every UP holder and hands back those whose target is UP."""
        pending: Counter[str] = Counter()
        # A copy: the node set may change (a node added or removed) while this round awaits.
        for holder_id, holder in list(self._clients.items()):
            if not self._health.is_up(holder_id):
                continue
            try:
                summary = await holder.hint_summary()
            except grpc.aio.AioRpcError as err:
                log.info("hint summary from %s failed: %s", holder_id, err.code().name)
                continue
            for entry in summary.targets:
                left = entry.count
                if entry.target in self._clients and self._health.is_up(entry.target):
                    left -= await self._hand_off(holder_id, entry.target)
                pending[entry.target] += max(0, left)
        self.pending = pending

    async def _hand_off(self, holder_id: str, target_id: str) -> int:
        """Moves hints for target_id from holder_id to target_id; returns how many moved."""
        # Either may have left the topology while this round awaited.
        holder, target = self._clients.get(holder_id), self._clients.get(target_id)
        if holder is None or target is None:
            return 0
        moved = 0
        try:
            for _ in range(MAX_PAGES_PER_ROUND):
                records = await holder.read_hints(target_id, HINT_PAGE)
                if not records:
                    break
                await target.apply_now(records, timeout_s=5.0)
                moved += await holder.delete_hints(target_id, records)
                if len(records) < HINT_PAGE:
                    break
        except grpc.aio.AioRpcError as err:
            log.info(
                "hint_handoff_stopped target=%s holder=%s code=%s detail=%r",
                target_id,
                holder_id,
                err.code().name,
                err.details(),
            )
        if moved:
            log.info("hints_handed_off target=%s holder=%s count=%d", target_id, holder_id, moved)
            self.handed_off += moved
        return moved
