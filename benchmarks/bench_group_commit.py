"""Durable writes/s through GroupCommitter into a real, fsync'd LMDB store.

Compares one fsync'd transaction per write (no grouping) with group commit at 1 and 64
concurrent writers, prints a table and writes the figures to
benchmarks/results/group_commit-<timestamp>.json.

    .venv/bin/python benchmarks/bench_group_commit.py [--seconds 3] [--value-bytes 100]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import lmdb
from shardkv.shardd.commit import GroupCommitter
from shardkv.shardd.records import Record
from shardkv.shardd.store import Store

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Result:
    scenario: str
    writers: int
    writes: int
    seconds: float
    writes_per_s: float
    commits: int
    items_per_commit: float
    p50_ms: float
    p99_ms: float


def _record(writer: int, seq: int, value: bytes) -> Record:
    # Keys spread over the tree (writer-major order would append to one page).
    key = b"%08x-%02d-%07d" % ((seq * 2654435761) & 0xFFFFFFFF, writer % 100, seq)
    return Record(key, value, time.time_ns(), writer)


def _summary(
    scenario: str, writers: int, latencies: list[float], seconds: float, commits: int
) -> Result:
    ordered = sorted(latencies)
    return Result(
        scenario=scenario,
        writers=writers,
        writes=len(ordered),
        seconds=round(seconds, 3),
        writes_per_s=round(len(ordered) / seconds, 1),
        commits=commits,
        items_per_commit=round(len(ordered) / max(commits, 1), 1),
        p50_ms=round(statistics.median(ordered) * 1000, 3),
        p99_ms=round(ordered[int(len(ordered) * 0.99) - 1] * 1000, 3),
    )


def bench_fsync_per_write(path: Path, seconds: float, value: bytes) -> Result:
    """The baseline: every write is its own LMDB transaction and fsync."""
    store = Store(path)
    latencies: list[float] = []
    try:
        started = time.perf_counter()
        deadline = started + seconds
        seq = 0
        while (now := time.perf_counter()) < deadline:
            store.apply([_record(0, seq, value)])
            latencies.append(time.perf_counter() - now)
            seq += 1
        elapsed = time.perf_counter() - started
    finally:
        store.close()
    return _summary("one fsync'd txn per write", 1, latencies, elapsed, len(latencies))


async def _group(path: Path, writers: int, seconds: float, value: bytes) -> Result:
    store = Store(path)
    committer = GroupCommitter(store)
    latencies: list[float] = []
    try:
        started = time.perf_counter()
        deadline = started + seconds

        async def writer(w: int) -> None:
            seq = 0
            while (now := time.perf_counter()) < deadline:
                await committer.apply([_record(w, seq, value)])
                latencies.append(time.perf_counter() - now)
                seq += 1

        await asyncio.gather(*(writer(w) for w in range(writers)))
        elapsed = time.perf_counter() - started
        await committer.close()
    finally:
        store.close()
    return _summary("group commit", writers, latencies, elapsed, committer.commits)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="duration of each run")
    parser.add_argument("--value-bytes", type=int, default=100)
    parser.add_argument("--writers", type=int, nargs="+", default=[1, 64])
    parser.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="where the temporary stores live (default: the system temp dir)",
    )
    args = parser.parse_args()
    value = os.urandom(args.value_bytes)
    results: list[Result] = []
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench-group-commit-") as tmp:
        base = Path(tmp)
        results.append(bench_fsync_per_write(base / "baseline", args.seconds, value))
        for writers in args.writers:
            results.append(
                asyncio.run(_group(base / f"group-{writers}", writers, args.seconds, value))
            )

    header = (
        f"{'scenario':<28} {'writers':>7} {'writes/s':>10} {'commits':>8}"
        f" {'items/commit':>12} {'p50 ms':>8} {'p99 ms':>8}"
    )
    lines = [header, "-" * len(header)]
    lines += [
        f"{r.scenario:<28} {r.writers:>7} {r.writes_per_s:>10.0f} {r.commits:>8}"
        f" {r.items_per_commit:>12.1f} {r.p50_ms:>8.2f} {r.p99_ms:>8.2f}"
        for r in results
    ]
    sys.stdout.write("\n".join(lines) + "\n")

    stamp = time.strftime("%Y%m%dT%H%M%S")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"group_commit-{stamp}.json"
    out.write_text(
        json.dumps(
            {
                "benchmark": "group_commit",
                "timestamp": stamp,
                "seconds_per_run": args.seconds,
                "value_bytes": args.value_bytes,
                "durable": True,
                "python": platform.python_version(),
                "lmdb": lmdb.__version__,
                "cpus": os.cpu_count(),
                "results": [asdict(r) for r in results],
            },
            indent=2,
        )
        + "\n"
    )
    sys.stdout.write(f"wrote {out.relative_to(RESULTS.parent.parent)}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
