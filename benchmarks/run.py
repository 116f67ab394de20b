"""`python -m benchmarks.run`: runs a profile against every system and writes the results.

For each system in turn it starts the servers (a Fleet in a temp dir), preloads the
keyspaces, runs the profile's cells with a progress bar, and stops the servers before the
next system starts, so no two systems compete for the two cores; then it runs the
profile's pairs (paired.py). Results go to
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
from pathlib import Path
from typing import Any

from benchmarks import charts, paired, placement, plan, report
from benchmarks.environment import describe_machine
from benchmarks.procs import Fleet, ServerError, etcd_binary
from benchmarks.quiet import QuietGate
from benchmarks.systems import Progress, run_system, skipped, start_system
from benchmarks.targets import comparisons, evaluate

log = logging.getLogger("benchmarks")

RESULTS_DIR = Path(__file__).parent / "results"


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
                            rows.append(skipped(system, planned, "failed", str(err)[:200]))
                            progress.finish_cell(planned)
                        continue
                    asyncio.run(
                        run_system(system, fleet, addresses, cells, progress, rows, preloads, gate)
                    )
            if profile.pairs:
                paired_root = Path(tmp) / "paired"
                paired_root.mkdir()
                paired.run_pairs(profile.pairs, paired_root, etcd, progress, rows, preloads, gate)
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
