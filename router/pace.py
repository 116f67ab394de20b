"""A shared pace for background work (moves, repair), so it leaves room for foreground traffic."""

from __future__ import annotations

import asyncio


class Pacer:
    """Lets the tasks that share it do at most rate items per second in total (0 = no limit).

    Each caller reports the items it just did; the pacer makes it wait until they fit the
    rate, so bursts are at most one batch.
    """

    def __init__(self, rate: int) -> None:
        self._rate = rate
        self._next = 0.0

    async def take(self, count: int) -> None:
        if not self._rate or count <= 0:
            return
        now = asyncio.get_running_loop().time()
        self._next = max(self._next, now) + count / self._rate
        delay = self._next - now
        if delay > 0:
            await asyncio.sleep(delay)
