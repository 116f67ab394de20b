"""Running cells against a started system: starting a system's servers, its driver,
preloading its keyspaces, one cell's row (measured, n/a, or failed with the reason), and
the progress bar, counted in planned seconds. Shared by the per-system runs (run.py) and
the paired rounds (paired.py)."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from tqdm import tqdm

from benchmarks import plan
from benchmarks.etcd_driver import EtcdDriver
from benchmarks.load import Driver, preload, run_cell
from benchmarks.nodemetrics import NodeProbe
from benchmarks.procs import Fleet, ServerError, start_etcd, start_shardd, start_shardkv
from benchmarks.quiet import QuietGate
from benchmarks.shardkv_driver import ShardkvDriver

log = logging.getLogger("benchmarks")


def start_system(system: str, fleet: Fleet, etcd: str | None) -> list[str]:
    """Starts the servers of system; returns the addresses the client talks to."""
    if system in plan.SHARDKV_NODES:
        return [start_shardkv(fleet, nodes=plan.SHARDKV_NODES[system]).address]
    if system == plan.SHARDD:
        return [start_shardd(fleet).address]
    if system in plan.ETCD_SYSTEMS:
        if etcd is None:
            raise ServerError("etcd is not installed")
        members = 1 if system == plan.ETCD1 else 3
        return [s.address for s in start_etcd(fleet, etcd, members=members)]
    raise ValueError(f"unknown system {system!r}")


def make_driver(system: str, addresses: Sequence[str], *, serializable: bool = False) -> Driver:
    """The driver of system; serializable reads only where the system offers them (etcd)."""
    if system in plan.ETCD_SYSTEMS:
        return EtcdDriver(addresses, serializable=serializable)
    if serializable:
        raise ValueError(f"{system} has no serializable reads (its reads are quorum reads)")
    return ShardkvDriver(addresses[0])


def skipped(system: str, planned: plan.Planned, status: str, reason: str) -> dict[str, Any]:
    return {
        "system": system,
        "section": planned.section,
        "cell": asdict(planned.cell),
        "status": status,
        "reason": reason,
    }


class Progress:
    """The progress bar, counted in planned seconds of warm-up and measurement."""

    def __init__(self, profile: plan.Profile, *, enabled: bool) -> None:
        self._bar = tqdm(
            total=round(profile.total_seconds()),
            unit="s",
            disable=not enabled,
            bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s [{elapsed}<{remaining}]",
            dynamic_ncols=True,
        )
        self._done = 0.0
        self._cap = 0.0

    def label(self, text: str) -> None:
        self._bar.set_description_str(text[:60])

    def tick(self, seconds: float) -> None:
        """Advances by seconds, but never past the end of the current cell's plan."""
        self._bar.update(max(0.0, min(seconds, self._cap - self._bar.n)))

    def start_cell(self, planned: plan.Planned) -> None:
        self._cap = self._done + planned.cell.warmup_s + planned.cell.duration_s

    def finish_cell(self, planned: plan.Planned) -> None:
        """Re-aligns the bar with the plan after a cell (drain time is not planned)."""
        self._done += planned.cell.warmup_s + planned.cell.duration_s
        self._bar.update(self._done - self._bar.n)

    def close(self) -> None:
        self._bar.close()


async def preload_all(
    system: str,
    driver: Driver,
    cells: Sequence[plan.Planned],
    progress: Progress,
    preloads: dict[str, float],
) -> None:
    """Fills every keyspace that some cell of system reads from."""
    spaces = sorted(
        {(p.cell.value_bytes, p.cell.keyspace) for p in cells if p.cell.mix != "put-only"}
    )
    for value_bytes, keyspace in spaces:
        progress.label(f"{system}: preload {keyspace:,} x {value_bytes} B")
        started = time.perf_counter()
        await preload(driver, value_bytes=value_bytes, keyspace=keyspace)
        preloads[f"{system} {keyspace} x {value_bytes} B"] = round(time.perf_counter() - started, 2)


async def run_one(
    system: str,
    fleet: Fleet,
    driver: Driver,
    planned: plan.Planned,
    progress: Progress,
    gate: QuietGate | None,
) -> dict[str, Any]:
    """The row of one cell: measured, n/a, or failed with the reason (a failing cell must
    not cost the rest of the run)."""
    if planned.cell.batch > driver.max_batch:
        return skipped(
            system, planned, "n/a", f"{system} takes at most {driver.max_batch} per call"
        )
    if dead := fleet.dead():
        return skipped(system, planned, "failed", f"server(s) exited: {', '.join(dead)}")
    waited = await gate.wait(fleet.pids()) if gate else 0.0
    try:
        urls = fleet.metrics_urls()
        result = await run_cell(
            driver,
            planned.cell,
            system=system,
            pids=fleet.pids(),
            on_tick=progress.tick,
            probe=NodeProbe(urls) if urls else None,
        )
    except Exception as err:
        log.exception("%s: cell %s failed", system, planned.cell.label)
        return skipped(system, planned, "failed", f"{type(err).__name__}: {err}"[:300])
    row = {"section": planned.section, "quiet_wait_s": waited, **result.to_json()}
    # A server the Fleet sees dead now died during this cell (the check above found none
    # before it), even one that died before run_cell read its PID and so was never watched.
    row["exited"] = sorted({*row["exited"], *fleet.dead()})
    return row


async def run_system(
    system: str,
    fleet: Fleet,
    addresses: Sequence[str],
    cells: Sequence[plan.Planned],
    progress: Progress,
    rows: list[dict[str, Any]],
    preloads: dict[str, float],
    gate: QuietGate | None,
) -> None:
    """Preloads, then runs every cell of system, appending a row per cell to rows."""
    driver = make_driver(system, addresses)
    # Serializable cells read through a driver of their own (made when first needed).
    drivers = {False: driver}
    try:
        try:
            await preload_all(system, driver, cells, progress, preloads)
        except Exception as err:
            log.exception("%s: preload failed", system)
            reason = f"preload failed: {type(err).__name__}: {err}"[:300]
            for planned in cells:
                rows.append(skipped(system, planned, "failed", reason))
                progress.finish_cell(planned)
            return
        for planned in cells:
            progress.label(f"{system}: {planned.cell.label}")
            progress.start_cell(planned)
            serializable = planned.cell.serializable
            if serializable not in drivers:
                drivers[serializable] = make_driver(system, addresses, serializable=serializable)
            rows.append(
                await run_one(system, fleet, drivers[serializable], planned, progress, gate)
            )
            progress.finish_cell(planned)
    finally:
        for each in drivers.values():
            await each.close()
