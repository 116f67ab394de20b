"""The profile's pairs: two systems up at once, the same cell run on each in alternating
rounds (plan.Pair). A comparison of systems measured minutes apart, as the per-system
cells are, also measures how the VM's speed moved in between; alternating rounds, ours
first and then theirs first, let each round compare like with like, and the target takes
the median round (targets.py). Only the two systems compared are up (pairs with the same
two systems share their start); the idle one costs little, and a cell reports what other
processes used, as every cell does."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from benchmarks import plan
from benchmarks.load import Driver
from benchmarks.procs import Fleet, ServerError
from benchmarks.quiet import QuietGate
from benchmarks.systems import Progress, make_driver, preload_all, run_one, skipped, start_system

log = logging.getLogger("benchmarks")

SECTION = "paired"


def run_pairs(
    pairs: Sequence[plan.Pair],
    root: Path,
    etcd: str | None,
    progress: Progress,
    rows: list[dict[str, Any]],
    preloads: dict[str, float],
    gate: QuietGate | None,
) -> None:
    """For each two systems compared, starts both (each a Fleet under root), then runs the
    rounds of their pairs, appending a row per cell with its round; a system that does not
    start fails its pairs' rows."""
    groups: dict[tuple[str, str], list[plan.Pair]] = {}
    for pair in pairs:
        groups.setdefault((pair.ours, pair.theirs), []).append(pair)
    for number, (systems, grouped) in enumerate(groups.items()):
        with ExitStack() as stack:
            fleets: dict[str, Fleet] = {}
            addresses: dict[str, list[str]] = {}
            failed: dict[str, str] = {}
            for system in systems:
                base = root / str(number) / system
                base.mkdir(parents=True)
                fleet = stack.enter_context(Fleet(base))
                progress.label(f"paired: starting {system}")
                try:
                    addresses[system] = start_system(system, fleet, etcd)
                    fleets[system] = fleet
                except ServerError as err:
                    log.error("%s did not start: %s", system, err)
                    failed[system] = str(err)[:200]
            asyncio.run(_rounds(grouped, fleets, addresses, failed, progress, rows, preloads, gate))


async def _rounds(
    pairs: Sequence[plan.Pair],
    fleets: dict[str, Fleet],
    addresses: dict[str, list[str]],
    failed: dict[str, str],
    progress: Progress,
    rows: list[dict[str, Any]],
    preloads: dict[str, float],
    gate: QuietGate | None,
) -> None:
    drivers: dict[str, Driver] = {}
    try:
        for system, address in addresses.items():
            drivers[system] = make_driver(system, address)
            cells = [_planned(p) for p in pairs if system in (p.ours, p.theirs)]
            try:
                group = f"paired {pairs[0].ours}/{pairs[0].theirs}: {system}"
                await preload_all(group, drivers[system], cells, progress, preloads)
            except Exception as err:
                log.exception("paired %s: preload failed", system)
                failed[system] = f"preload failed: {type(err).__name__}: {err}"[:300]
        for number in range(plan.PAIRED_ROUNDS):
            for pair in pairs:
                order = (pair.ours, pair.theirs) if number % 2 == 0 else (pair.theirs, pair.ours)
                for system, peer in (order, order[::-1]):
                    planned = _planned(pair)
                    progress.label(f"paired {number + 1}: {system} {pair.cell.label}")
                    progress.start_cell(planned)
                    if system in failed:
                        row = skipped(system, planned, "failed", failed[system])
                    elif peer in failed:  # nothing to compare with: not run
                        row = skipped(system, planned, "n/a", f"not run: {peer} failed")
                    else:
                        row = await run_one(
                            system, fleets[system], drivers[system], planned, progress, gate
                        )
                    rows.append({**row, "round": number})
                    progress.finish_cell(planned)
    finally:
        for driver in drivers.values():
            await driver.close()


def _planned(pair: plan.Pair) -> plan.Planned:
    return plan.Planned(SECTION, pair.cell)
