"""Waiting, within bounds, for other processes to leave the two cores alone before a cell."""

from __future__ import annotations

import asyncio
import os

from benchmarks.procstat import machine_busy_s, other_cores, usages


class QuietGate:
    """Before a cell, waits (within bounds) until processes not under test leave the two
    cores alone: a test suite running next to a cell can halve what it measures."""

    SAMPLE_S = 0.5

    def __init__(self, *, threshold_cores: float, per_cell_s: float, budget_s: float) -> None:
        self.threshold_cores = threshold_cores
        self.per_cell_s = per_cell_s
        self.budget_s = budget_s

    async def wait(self, pids: dict[str, int]) -> float:
        """Seconds waited; gives up after per_cell_s, or at once when the budget is spent."""
        watched = {**pids, "client": os.getpid()}
        waited = 0.0
        while waited < min(self.per_cell_s, self.budget_s):
            busy, before = machine_busy_s(), usages(watched)
            await asyncio.sleep(self.SAMPLE_S)
            waited += self.SAMPLE_S
            if other_cores(watched, busy, before, self.SAMPLE_S) <= self.threshold_cores:
                break
        self.budget_s -= waited
        return round(waited, 1)
