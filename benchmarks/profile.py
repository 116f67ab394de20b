"""`python -m benchmarks.profile`: where the CPU goes in one cell, process by process.

Starts one system as `make bench` does, runs one cell, and samples every server process
(and the client) with py-spy during the measured window. Prints, per process, the
functions that most often were on CPU: self time (the innermost frame) and inclusive
time (anywhere on the stack), as percentages of that process's samples, and writes the
raw collapsed stacks (flame-graph input) beside the text under benchmarks/results/.

    python -m benchmarks.profile --system shardkv --mix put-only --batch 1000 --in-flight 8
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from benchmarks import plan
from benchmarks.load import CLIENT, Cell, preload, run_cell
from benchmarks.procs import BIN, Fleet, etcd_binary
from benchmarks.run import RESULTS_DIR
from benchmarks.systems import make_driver, start_system

PY_SPY = BIN / "py-spy"
SAMPLE_RATE = 200


def summarize(raw: str, *, top: int) -> list[str]:
    """Top functions by self and by inclusive samples, from py-spy's collapsed stacks."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")[1:]  # the first frame names the thread
        if not frames:
            continue
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    if not total:
        return ["  (no samples on CPU)"]
    lines = [f"  {total} samples on CPU; self %:"]
    lines += [f"    {100 * n / total:5.1f}  {frame}" for frame, n in own.most_common(top)]
    lines += ["  inclusive %:"]
    lines += [f"    {100 * n / total:5.1f}  {frame}" for frame, n in inclusive.most_common(top)]
    return lines


async def _profiled_cell(
    system: str, fleet: Fleet, addresses: Sequence[str], cell: Cell, out: Path
) -> tuple[str, dict[str, Path]]:
    driver = make_driver(system, addresses)
    spies: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}
    try:
        if cell.mix != "put-only":
            await preload(driver, value_bytes=cell.value_bytes, keyspace=cell.keyspace)
        pids = {**fleet.pids(), CLIENT: os.getpid()}

        async def spy_on_window() -> None:
            await asyncio.sleep(cell.warmup_s)
            for name, pid in pids.items():
                path = out.with_name(f"{out.name}-{name}.collapsed")
                argv = [
                    str(PY_SPY),
                    "record",
                    "--pid",
                    str(pid),
                    "--rate",
                    str(SAMPLE_RATE),
                    "--duration",
                    str(int(cell.duration_s)),
                    "--format",
                    "raw",
                    "--nonblocking",
                    "-o",
                    str(path),
                ]
                spies[name] = (
                    subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
                    path,
                )

        spy_task = asyncio.create_task(spy_on_window())
        result = await run_cell(driver, cell, system=system, pids=fleet.pids())
        await spy_task
    finally:
        await driver.close()
        for popen, _ in spies.values():
            try:
                popen.wait(30)
            except subprocess.TimeoutExpired:
                popen.kill()
                popen.wait(10)
    headline = (
        f"{system} {cell.label}: {result.calls_per_s:,.0f} calls/s, "
        f"{result.keys_per_s:,.0f} keys/s, p50 {result.latency_us['p50'] / 1000:.2f} ms, "
        f"CPU s per 1k keys {result.cpu_s_per_1k_keys}"
    )
    return headline, {name: path for name, (_, path) in spies.items()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.profile",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--system", choices=tuple(plan.SYSTEM_TITLES), default=plan.SHARDKV)
    parser.add_argument("--mix", default="put-only")
    parser.add_argument("--keys", default="uniform")
    parser.add_argument("--value-bytes", type=int, default=100)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--in-flight", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--keyspace", type=int, default=20_000)
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    cell = Cell(
        args.mix,
        keys=args.keys,
        value_bytes=args.value_bytes,
        batch=args.batch,
        in_flight=args.in_flight,
        duration_s=args.seconds,
        warmup_s=1.0,
        keyspace=args.keyspace,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"profile-{time.strftime('%Y%m%d-%H%M%S')}-{args.system}"
    with tempfile.TemporaryDirectory(prefix="shardkv-profile-") as tmp, Fleet(Path(tmp)) as fleet:
        addresses = start_system(args.system, fleet, etcd_binary())
        headline, files = asyncio.run(_profiled_cell(args.system, fleet, addresses, cell, stem))
    lines = [headline, ""]
    for name, path in files.items():
        raw = path.read_text() if path.exists() else ""
        lines += [f"== {name} ({path.name})", *summarize(raw, top=args.top), ""]
    text = "\n".join(lines)
    stem.with_suffix(".txt").write_text(text + "\n", encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
