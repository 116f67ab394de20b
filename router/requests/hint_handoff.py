"""Hinted hand-off: records parked on fallback nodes go back to their owners when they return.

Every hint_interval_ms the router asks each UP node which targets it holds hints for; for
every target that is UP again it reads a page of hints, applies them to the target (the
target keeps each only if newer, so a repeat is harmless), and then deletes them from the
holder (the holder removes a hint only if its parked version is unchanged). A failure
anywhere leaves the hints where they are for the next round. Hints are best effort, as in
Cassandra: they do not replace anti-entropy.
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

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="hint-handoff")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
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
        holder, target = self._clients[holder_id], self._clients[target_id]
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
