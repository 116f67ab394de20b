"""Whether a node's disk still takes its writes. A node whose commits stop completing (a
disk that hangs, a dead device under a live process) still answers health checks, pings
and reads from memory, so nothing else would tell a router: its writes would wait there
to their deadline, request after request, and leave no hint for it. So the node says
NOT_SERVING on its health service once one commit has waited ``stall_s``, and SERVING
again as soon as it completes: routers count it DOWN meanwhile (their writes park hints
for it elsewhere, their reads ask other owners). A disk slow for a moment (a checkpoint's
writeback beside the journal's fsync, about a second under the bench's load) is not that.
Cassandra's disk_failure_policy stops such a node; this one reports it and recovers with
its disk."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from grpc_health.v1 import health, health_pb2
from shardkv.shardd.commit import GroupCommitter

log = logging.getLogger(__name__)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class DiskWatch:
    """Looks at the group committer every interval and sets the health services' status."""

    def __init__(
        self,
        committer: GroupCommitter,
        servicer: health.aio.HealthServicer,
        services: Sequence[str],
        *,
        stall_s: float,
    ) -> None:
        self._committer = committer
        self._servicer = servicer
        self._services = services
        self._stall_s = stall_s
        self._interval_s = min(1.0, stall_s / 4)
        self._stalled = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="disk-watch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self._interval_s)
            waited = self._committer.waiting_s(loop.time())
            stalled = waited >= self._stall_s
            if stalled == self._stalled:
                continue
            self._stalled = stalled
            if stalled:
                log.warning(
                    "disk_stalled waited_s=%.1f limit_s=%g: NOT_SERVING until the commit completes",
                    waited,
                    self._stall_s,
                )
            else:
                log.info("disk_recovered: the stalled commit completed; SERVING")
            for service in self._services:
                await self._servicer.set(service, NOT_SERVING if stalled else SERVING)
