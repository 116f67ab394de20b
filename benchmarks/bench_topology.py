"""Topology changes and anti-entropy, measured on real processes.

    .venv/bin/python benchmarks/bench_topology.py [--keys 134000] [--ae-keys 100000]

1. Moves: three durable shardd nodes (N=3, R=W=2) and one router; --keys records of
   --value-bytes are loaded, then n4, n5 and n6 are added one by one with
   ``Admin.AddNode``. For each add: records streamed vs the ideal (keys whose preference
   list changed, computed from the rings), the time spent streaming (COUNTING to SWITCHED,
   polled every 20 ms) and the whole move (both settle delays of --settle-ms included).
   134k keys make the 4th node's move about 100k records.
2. Anti-entropy: a fresh 3-node cluster with --ae-keys keys; --divergence of the keys get
   a newer record on one random replica, written to it directly; then one repair pass
   (``Admin.Repair``) runs until done, unpaced and again paced at the default 50k
   records/s. Reported: the pass's time and counters, and whether every node's full
   digest is equal afterwards.

Results go to benchmarks/results/topology-<timestamp>.json and to stdout.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shardkv.client import Client
from shardkv.router.placement.ring import Ring
from shardkv.v1 import admin_pb2, admin_pb2_grpc, replica_pb2, replica_pb2_grpc

from benchmarks.procs import Fleet, Server, router_server, shardd_server, write_cluster_toml

RESULTS = Path(__file__).resolve().parent / "results"


def _config(path: Path, nodes: list[Server], *, settle_ms: int, pace: int) -> Path:
    write_cluster_toml(path, nodes, replication=3, read_quorum=2, write_quorum=2)
    with path.open("a") as out:
        out.write(
            f"\n[rebalance]\nsettle_ms = {settle_ms}\n"
            f"\n[repair]\ninterval_s = 0\nmax_records_per_s = {pace}\n"
        )
    return path


def _load(router: str, keys: list[bytes], value_bytes: int) -> float:
    started = time.monotonic()
    value = b"v" * value_bytes
    with Client(router, timeout=30) as client:
        for offset in range(0, len(keys), 5000):
            client.put_many({k: value for k in keys[offset : offset + 5000]})
    return len(keys) / (time.monotonic() - started)


def _add(admin: Any, node: Server) -> dict[str, Any]:
    """Adds node and follows the move; returns its figures."""
    started = time.monotonic()
    move = admin.AddNode(admin_pb2.AddNodeRequest(id=node.name, address=node.address), timeout=30)
    stream_start = stream_end = None
    while True:
        moves = admin.GetMoves(admin_pb2.GetMovesRequest(), timeout=10)
        current = moves.current if moves.HasField("current") else moves.history[-1]
        now = time.monotonic()
        if current.state >= admin_pb2.MOVE_COUNTING and stream_start is None:
            stream_start = now
        if current.state >= admin_pb2.MOVE_SWITCHED and stream_end is None:
            stream_end = now
        if current.state in (admin_pb2.MOVE_DONE, admin_pb2.MOVE_FAILED):
            break
        time.sleep(0.02)
    if current.state != admin_pb2.MOVE_DONE:
        raise RuntimeError(f"move {move.id} failed: {current.error}")
    assert stream_start is not None and stream_end is not None
    streaming_s = stream_end - stream_start
    return {
        "move": current.id,
        "records_moved": current.keys_moved,
        "bytes_moved": current.bytes_moved,
        "records_dropped_by_old_owners": current.keys_dropped,
        "streaming_s": round(streaming_s, 3),
        "move_total_s": round(time.monotonic() - started, 3),
        "records_per_s": round(current.keys_moved / streaming_s),
        "mb_per_s": round(current.bytes_moved / streaming_s / 1e6, 2),
    }


def bench_moves(base: Path, keys: int, value_bytes: int, settle_ms: int) -> list[dict[str, Any]]:
    names = [f"k{i:07d}".encode() for i in range(keys)]
    base.mkdir(parents=True)
    with Fleet(base) as fleet:
        nodes = [fleet.add(shardd_server(base, f"n{i}")) for i in range(1, 7)]
        fleet.start(nodes)
        config = _config(base / "cluster.toml", nodes[:3], settle_ms=settle_ms, pace=0)
        router = fleet.add(router_server(base, config))
        fleet.start([router])
        rate = _load(router.address, names, value_bytes)
        print(f"loaded {keys} keys at {rate:.0f} keys/s", flush=True)
        admin = admin_pb2_grpc.AdminStub(grpc.insecure_channel(router.address))
        results = []
        for count in (4, 5, 6):
            old = Ring({f"n{i}": 1 for i in range(1, count)})
            new = Ring({f"n{i}": 1 for i in range(1, count + 1)})
            ideal = sum(1 for k in names if old.preference_list(k, 3) != new.preference_list(k, 3))
            figures = _add(admin, nodes[count - 1])
            figures |= {
                "nodes_after": count,
                "ideal_records": ideal,
                "stored_records_before": keys * 3,
                "moved_fraction_of_stored": round(figures["records_moved"] / (keys * 3), 4),
                "ideal_fraction": round(1 / count, 4),
            }
            print(json.dumps(figures), flush=True)
            results.append(figures)
        return results


def _digests(nodes: list[Server]) -> set[tuple[bytes, int]]:
    found = set()
    for node in nodes:
        with grpc.insecure_channel(node.address) as channel:
            reply = replica_pb2_grpc.ReplicaStub(channel).Digest(
                replica_pb2.DigestRequest(), timeout=60
            )
        found.add((reply.digest, reply.count))
    return found


def _diverge(nodes: list[Server], names: list[bytes], fraction: float, seed: int) -> int:
    rng = random.Random(seed)
    chosen = rng.sample(names, int(len(names) * fraction))
    per_node: dict[str, list[replica_pb2.Record]] = {}
    version = (int(time.time() * 1000) + 1000) << 16
    for key in chosen:
        node = rng.choice(nodes)
        record = replica_pb2.Record(key=key, value=b"diverged", version=version, writer=99)
        per_node.setdefault(node.address, []).append(record)
    for address, records in per_node.items():
        with grpc.insecure_channel(address) as channel:
            stub = replica_pb2_grpc.ReplicaStub(channel)
            for offset in range(0, len(records), 1000):
                stub.Apply(
                    replica_pb2.ApplyRequest(records=records[offset : offset + 1000]), timeout=30
                )
    return len(chosen)


def _repair(router: Server) -> tuple[float, admin_pb2.RepairStatus]:
    admin = admin_pb2_grpc.AdminStub(grpc.insecure_channel(router.address))
    started = time.monotonic()
    status = admin.Repair(admin_pb2.RepairRequest(), timeout=10)
    number = getattr(status, "pass")
    while status.running or getattr(status, "pass") != number:
        time.sleep(0.05)
        status = admin.GetRepair(admin_pb2.GetRepairRequest(), timeout=10)
    return time.monotonic() - started, status


def bench_antientropy(
    base: Path, keys: int, value_bytes: int, fraction: float
) -> list[dict[str, Any]]:
    names = [f"a{i:07d}".encode() for i in range(keys)]
    results = []
    base.mkdir(parents=True)
    with Fleet(base) as fleet:
        nodes = [fleet.add(shardd_server(base, f"n{i}")) for i in range(1, 4)]
        fleet.start(nodes)
        config = base / "cluster.toml"
        previous: Server | None = None
        for pace in (0, 50_000):
            _config(config, nodes, settle_ms=1000, pace=pace)
            if previous is not None:
                previous.stop()
            router = previous = fleet.add(router_server(base, config, f"r-pace{pace}"))
            fleet.start([router])
            if pace == 0:
                rate = _load(router.address, names, value_bytes)
                print(f"loaded {keys} keys at {rate:.0f} keys/s", flush=True)
            diverged = _diverge(nodes, names, fraction, seed=pace)
            before = len(_digests(nodes))
            seconds, status = _repair(router)
            after = _digests(nodes)
            figures = {
                "keys": keys,
                "replicas": 3,
                "diverged_keys": diverged,
                "max_records_per_s": pace,
                "distinct_digests_before": before,
                "converged": len(after) == 1,
                "repair_s": round(seconds, 3),
                "segments": status.segments_total,
                "segments_differing": status.segments_differing,
                "records_compared": status.records_compared,
                "records_repaired": status.records_repaired,
                "error": status.error,
            }
            print(json.dumps(figures), flush=True)
            results.append(figures)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=134_000)
    parser.add_argument("--ae-keys", type=int, default=100_000)
    parser.add_argument("--divergence", type=float, default=0.01)
    parser.add_argument("--value-bytes", type=int, default=100)
    parser.add_argument("--settle-ms", type=int, default=1000)
    args = parser.parse_args()
    report: dict[str, Any] = {"args": vars(args)}
    with tempfile.TemporaryDirectory(prefix="bench-topology-") as tmp:
        report["moves"] = bench_moves(
            Path(tmp) / "moves", args.keys, args.value_bytes, args.settle_ms
        )
        report["antientropy"] = bench_antientropy(
            Path(tmp) / "ae", args.ae_keys, args.value_bytes, args.divergence
        )
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"topology-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"results in {out}")


if __name__ == "__main__":
    main()
