"""Rebuilding a node whose data directory was wiped, measured on real processes.

    .venv/bin/python benchmarks/bench_rebuild.py [--keys 100000] [--value-bytes 100]

Three durable shardd nodes (N=3, R=W=2) and one router; --keys records of --value-bytes
are loaded, n3 is stopped, its directory removed, and n3 started again. The router finds
the directory new and rebuilds n3 from n1 and n2 by itself. Reported: the rebuild's own
time (Admin.GetRebuilds: started to finished), the time from n3's restart until it counts
again (its directory ``ok``), records copied (each key once from each of the two other
owners) and their rate. Results go to benchmarks/results/rebuild-<timestamp>.json and to
stdout.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shardkv.client import Client
from shardkv.v1 import admin_pb2, admin_pb2_grpc

from benchmarks.procs import Fleet, router_server, shardd_server, write_cluster_toml

RESULTS = Path(__file__).resolve().parent / "results"


def bench_rebuild(base: Path, keys: int, value_bytes: int) -> dict[str, Any]:
    names = [f"r{i:07d}".encode() for i in range(keys)]
    value = b"v" * value_bytes
    base.mkdir(parents=True)
    with Fleet(base) as fleet:
        nodes = [fleet.add(shardd_server(base, f"n{i}")) for i in range(1, 4)]
        fleet.start(nodes)
        config = write_cluster_toml(
            base / "cluster.toml", nodes, replication=3, read_quorum=2, write_quorum=2
        )
        router = fleet.add(router_server(base, config))
        fleet.start([router])
        started = time.monotonic()
        with Client(router.address, timeout=30) as client:
            for offset in range(0, keys, 5000):
                client.put_many({k: value for k in names[offset : offset + 5000]})
        print(f"loaded {keys} keys in {time.monotonic() - started:.1f} s", flush=True)
        n3 = nodes[2]
        n3.stop()
        shutil.rmtree(base / "n3")
        restarted = time.monotonic()
        fleet.start([n3])
        admin = admin_pb2_grpc.AdminStub(grpc.insecure_channel(router.address))
        while True:
            topology = admin.GetTopology(admin_pb2.GetTopologyRequest(), timeout=10)
            rebuilds = admin.GetRebuilds(admin_pb2.GetRebuildsRequest(), timeout=10).rebuilds
            done = [r for r in rebuilds if r.node_id == "n3" and r.state == admin_pb2.REBUILD_DONE]
            if done and next(n for n in topology.nodes if n.id == "n3").directory == "ok":
                break
            if time.monotonic() - restarted > 600:
                raise RuntimeError(f"n3 not rebuilt after 600 s: {list(rebuilds)}")
            time.sleep(0.02)
        counts_again_s = time.monotonic() - restarted
        rebuild = done[0]
        seconds = (rebuild.finished_ms - rebuild.started_ms) / 1000
        return {
            "keys": keys,
            "value_bytes": value_bytes,
            "records_copied": rebuild.keys_copied,
            "bytes_copied": rebuild.bytes_copied,
            "sources": list(rebuild.sources),
            "rebuild_s": round(seconds, 3),
            "records_per_s": round(rebuild.keys_copied / seconds) if seconds else None,
            "restart_to_counted_s": round(counts_again_s, 3),
            "generation": rebuild.generation,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--value-bytes", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-rebuild-") as tmp:
        figures = bench_rebuild(Path(tmp) / "rebuild", args.keys, args.value_bytes)
    print(json.dumps(figures), flush=True)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"rebuild-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.write_text(json.dumps({"args": vars(args), "rebuild": figures}, indent=2) + "\n")
    print(f"results in {out}")


if __name__ == "__main__":
    main()
