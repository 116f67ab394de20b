"""`python -m benchmarks.cpu_per_key`: CPU per key of every process, cell by cell.

The figure to compare before and after a change: CPU time per key, read from /proc per
process, moves far less with other work on the machine than throughput does. Starts one
system (shardkv with --nodes nodes, or a lone shardd), preloads a keyspace, runs the cells
the router targets name (single Put/Get at 256 and at 1 in flight, batches of 100 and 1000
written and read) and prints a line per cell: keys/s, p50, and µs of CPU per key for the
router, the mean node and the client, with the cores other processes used meanwhile.

    python -m benchmarks.cpu_per_key --system shardkv --seconds 4
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from benchmarks.load import CLIENT, Cell, preload, run_cell
from benchmarks.plan import BATCH_IN_FLIGHT
from benchmarks.procs import Fleet, start_shardd, start_shardkv
from benchmarks.shardkv_driver import ShardkvDriver

KEYSPACE = 20_000
# (mix, batch, in flight)
CELLS = (
    ("put-only", 1, 256),
    ("get-only", 1, 256),
    ("put-only", 100, BATCH_IN_FLIGHT),
    ("get-only", 100, BATCH_IN_FLIGHT),
    ("put-only", 1000, BATCH_IN_FLIGHT),
    ("get-only", 1000, BATCH_IN_FLIGHT),
    ("put-only", 1, 1),
    ("get-only", 1, 1),
)


def _us_per_key(per_1k: dict[str, float], prefix: str) -> str:
    values = [v for name, v in per_1k.items() if name.startswith(prefix)]
    return f"{sum(values) * 1000 / len(values):7.1f}" if values else "      -"


async def _measure(address: str, pids: dict[str, int], seconds: float) -> None:
    driver = ShardkvDriver(address)
    try:
        await preload(driver, value_bytes=100, keyspace=KEYSPACE)
        print("cell                         keys/s    p50 ms  router    node  client  other")
        for mix, batch, in_flight in CELLS:
            cell = Cell(
                mix,
                batch=batch,
                in_flight=in_flight,
                duration_s=seconds,
                warmup_s=1.0,
                keyspace=KEYSPACE,
            )
            row = await run_cell(driver, cell, system="measured", pids=pids)
            per_1k = row.cpu_s_per_1k_keys
            print(
                f"{mix:9} batch {batch:<4} x{in_flight:<4} {row.keys_per_s:9,.0f}"
                f" {row.latency_us['p50'] / 1000:9.2f} {_us_per_key(per_1k, 'r')}"
                f" {_us_per_key(per_1k, 'n')} {_us_per_key(per_1k, CLIENT)}"
                f" {row.other_cpu_cores:6.2f}",
                flush=True,
            )
    finally:
        await driver.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cpu_per_key", description=__doc__)
    parser.add_argument("--system", choices=("shardkv", "shardd"), default="shardkv")
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="shardkv-cpu-") as tmp, Fleet(Path(tmp)) as fleet:
        if args.system == "shardkv":
            server = start_shardkv(fleet, nodes=args.nodes)
        else:
            server = start_shardd(fleet)
        asyncio.run(_measure(server.address, fleet.pids(), args.seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
