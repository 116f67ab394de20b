"""`python -m benchmarks.run`: runs a profile against every system and writes the results.

For each system in turn it starts the servers (a Fleet in a temp dir), preloads the
keyspaces, runs the profile's cells with a progress bar, and stops the servers before the
next system starts, so no two systems compete for the two cores. Results go to
benchmarks/results/<timestamp>.json, .md and -*.png. Ctrl-C or SIGTERM stops every server
this run started and still writes what was measured so far.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tqdm import tqdm

from benchmarks import charts, placement, plan, report
from benchmarks.environment import describe_machine
from benchmarks.etcd_driver import EtcdDriver
from benchmarks.load import Driver, preload, run_cell
from benchmarks.nodemetrics import NodeProbe
from benchmarks.procs import (
    Fleet,
    ServerError,
    etcd_binary,
    start_etcd,
    start_shardd,
    start_shardkv,
)
from benchmarks.quiet import QuietGate
from benchmarks.shardkv_driver import ShardkvDriver
from benchmarks.targets import comparisons, evaluate

log = logging.getLogger("benchmarks")

RESULTS_DIR = Path(__file__).parent / "results"


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


def _skipped(system: str, planned: plan.Planned, status: str, reason: str) -> dict[str, Any]:
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


async def _preload_all(
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


async def _run_one(
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
        return _skipped(
            system, planned, "n/a", f"{system} takes at most {driver.max_batch} per call"
        )
    if dead := fleet.dead():
        return _skipped(system, planned, "failed", f"server(s) exited: {', '.join(dead)}")
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
        return _skipped(system, planned, "failed", f"{type(err).__name__}: {err}"[:300])
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
            await _preload_all(system, driver, cells, progress, preloads)
        except Exception as err:
            log.exception("%s: preload failed", system)
            reason = f"preload failed: {type(err).__name__}: {err}"[:300]
            for planned in cells:
                rows.append(_skipped(system, planned, "failed", reason))
                progress.finish_cell(planned)
            return
        for planned in cells:
            progress.label(f"{system}: {planned.cell.label}")
            progress.start_cell(planned)
            serializable = planned.cell.serializable
            if serializable not in drivers:
                drivers[serializable] = make_driver(system, addresses, serializable=serializable)
            rows.append(
                await _run_one(system, fleet, drivers[serializable], planned, progress, gate)
            )
            progress.finish_cell(planned)
    finally:
        for each in drivers.values():
            await each.close()


def run_profile(
    profile: plan.Profile,
    rows: list[dict[str, Any]],
    preloads: dict[str, float],
    *,
    etcd: str | None,
    data_root: Path | None,
    show_progress: bool,
    gate: QuietGate | None = None,
) -> None:
    """Runs every system of profile in turn, appending result rows as cells finish (so an
    interrupted run keeps what it measured) and preload seconds per keyspace; gate, if
    given, holds each cell back while other processes keep the cores busy."""
    progress = Progress(profile, enabled=show_progress)
    try:
        with tempfile.TemporaryDirectory(prefix="shardkv-bench-", dir=data_root) as tmp:
            for system, cells in profile.cells.items():
                base = Path(tmp) / system
                base.mkdir()
                with Fleet(base) as fleet:
                    progress.label(f"{system}: starting")
                    try:
                        addresses = start_system(system, fleet, etcd)
                    except ServerError as err:
                        log.error("%s did not start: %s", system, err)
                        for planned in cells:
                            rows.append(_skipped(system, planned, "failed", str(err)[:200]))
                            progress.finish_cell(planned)
                        continue
                    asyncio.run(
                        run_system(system, fleet, addresses, cells, progress, rows, preloads, gate)
                    )
    finally:
        progress.close()


def _interrupt_on_signals() -> None:
    """Ctrl-C, SIGTERM and SIGHUP all end the run the same way (KeyboardInterrupt), so the
    servers are stopped; SIGINT is set explicitly since a shell may start us ignoring it."""

    def handler(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler)


def write_results(doc: dict[str, Any], out_dir: Path, stamp: str) -> list[Path]:
    """Writes <stamp>.json, <stamp>.md and the charts; each file appears whole or not at all."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / stamp
    pictures = charts.draw_all(doc["results"], stem)
    written = [*pictures]
    for suffix, text in (
        (".json", json.dumps(doc, indent=1) + "\n"),
        (".md", report.render(doc, pictures)),
    ):
        final = stem.with_suffix(suffix)
        partial = final.with_name(final.name + ".tmp")
        partial.write_text(text, encoding="utf-8")
        partial.replace(final)
        written.append(final)
    return written


def build_doc(
    profile: plan.Profile,
    rows: list[dict[str, Any]],
    meta: dict[str, Any],
    ring: dict[str, Any] | None,
) -> dict[str, Any]:
    """The results document: what ran where, every row, placement figures, the verdicts."""
    return {
        "meta": meta,
        "profile": {
            "name": profile.name,
            "summary": profile.summary,
            "systems": list(profile.systems),
            "plan": profile.describe(),
        },
        "results": rows,
        "placement": ring,
        "targets": [v.to_json() for v in evaluate(rows, ring)],
        "comparisons": [c.to_json() for c in comparisons(rows)],
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    parser.add_argument("--profile", choices=(*plan.PROFILES, "soak"), default="full")
    parser.add_argument(
        "--minutes", type=float, default=5.0, help="length of the soak profile's steady run"
    )
    parser.add_argument("--no-etcd", action="store_true", help="skip the etcd systems")
    parser.add_argument(
        "--systems", default="", help=f"comma-separated subset of {', '.join(plan.SYSTEM_TITLES)}"
    )
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    parser.add_argument(
        "--data-root",
        type=Path,
        default=None,
        help="where the servers' temp data dirs go (default: the system's)",
    )
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=10.0,
        help="before each cell, wait up to this many seconds while processes not under test"
        " use more than --quiet-cores (0 = never wait); at most 3 minutes per run",
    )
    parser.add_argument("--quiet-cores", type=float, default=0.25)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    _interrupt_on_signals()

    notes: list[str] = []
    etcd = None if args.no_etcd else etcd_binary()
    if args.no_etcd:
        notes.append("etcd skipped (--no-etcd): the etcd comparisons are n/a.")
    elif etcd is None:
        notes.append(
            "etcd is NOT installed (Debian package etcd-server; run `make bench-deps`)"
            ": the etcd systems were skipped and their comparisons are n/a."
        )
        log.warning(notes[-1])
    if args.profile == "soak":
        profile = plan.soak(minutes=args.minutes)
    else:
        profile = plan.PROFILES[args.profile](with_etcd=etcd is not None)
    if args.systems:
        profile = plan.only(profile, args.systems.split(","))

    stamp = time.strftime("%Y%m%d-%H%M%S")
    started = time.time()
    meta = describe_machine(etcd=etcd, data_root=args.data_root)
    meta.update(
        started=time.strftime("%Y-%m-%d %H:%M:%S %z"),
        command=" ".join(["python -m benchmarks.run", *(argv or sys.argv[1:])]),
        notes=notes,
        quiet_gate={"max_wait_s": args.quiet_wait, "cores": args.quiet_cores},
    )
    rows: list[dict[str, Any]] = []
    preloads: dict[str, float] = {}
    interrupted = False
    try:
        gate = None
        if args.quiet_wait > 0:
            gate = QuietGate(
                threshold_cores=args.quiet_cores, per_cell_s=args.quiet_wait, budget_s=180.0
            )
        run_profile(
            profile,
            rows,
            preloads,
            etcd=etcd,
            data_root=args.data_root,
            show_progress=not args.no_progress,
            gate=gate,
        )
    except KeyboardInterrupt:
        interrupted = True
        notes.append("the run was interrupted; the results are partial.")
        log.warning("interrupted: every server was stopped")
    ring = placement.measure() if profile.placement and not interrupted else None
    meta.update(wall_s=round(time.time() - started, 1), preload_s=preloads)
    doc = build_doc(profile, rows, meta, ring)
    for path in write_results(doc, args.out, stamp):
        print(path)
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
