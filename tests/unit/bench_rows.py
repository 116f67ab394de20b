"""Hand-made result rows for the benchmark target tests: a run in which every target of
issue 16 is met with room to spare, and the names of those targets."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from benchmarks.plan import BATCH_IN_FLIGHT, ETCD1, ETCD3, SHARDD, SHARDKV, SHARDKV12
from benchmarks.rows import Verdict
from benchmarks.targets import evaluate

Row = dict[str, Any]

ROUTER_PUT = "Router CPU per key vs a node's, Put at 256 in flight"
ROUTER_GET = "Router CPU per key vs a node's, Get at 256 in flight"
ROUTER_BATCH = {
    (mix, size): f"Router CPU per key vs a node's, batches of {size} {what}"
    for size in (100, 1000)
    for mix, what in (("put-only", "written"), ("get-only", "read"))
}
WRITES_VS_ETCD3 = "Keys written/s via router, batches of 100, vs etcd-3 Txn of 100 puts"
READS_VS_ETCD3 = "Keys read/s via router, batches of 100, vs etcd-3 Txn of 100 ranges"
SERVER_CPU = "Server CPU per replicated write (router + 3 nodes vs etcd's 3 members), 256 in flight"
GET_P50 = "Get p50 via router vs direct shardd, 1 in flight"
PUT_P50 = "Put p50 via router vs direct shardd, 1 in flight"
GROWTH = "Router CPU per put, 12 nodes at 256 in flight vs 3 nodes at 64"
RSS = "RSS stable in a steady run (end vs after warm-up)"

PLACEMENT = {"lookup_us": {"100": {"median_us": 2.0}}, "balance": {"max_over_mean": 1.05}}
PROCESSES = ("router", "n1", "n2", "n3", "client")
# CPU s per 1000 keys of a clean cell: the router at 1.1x a node; etcd's members 4.5x.
SHARDKV_CPU = {"r1": 0.022, "n1": 0.02, "n2": 0.02, "n3": 0.02, "client": 0.03}
SHARDD_CPU = {"n1": 0.02, "client": 0.03}
ETCD3_CPU = {"e1": 0.09, "e2": 0.09, "e3": 0.09, "client": 0.1}
CPU = {SHARDKV: SHARDKV_CPU, SHARDKV12: SHARDKV_CPU, SHARDD: SHARDD_CPU, ETCD3: ETCD3_CPU}


def row(
    system: str,
    mix: str,
    in_flight: int,
    batch: int = 1,
    *,
    calls_per_s: float,
    mean_us: float = 1000.0,
    p50_us: float = 1000.0,
    section: str = "sweep",
    serializable: bool = False,
) -> Row:
    """A clean row as load.run_cell and systems.run_one write it (the fields targets read)."""
    return {
        "system": system,
        "section": section,
        "status": "ok",
        "cell": {
            "mix": mix,
            "keys": "uniform",
            "value_bytes": 100,
            "batch": batch,
            "in_flight": in_flight,
            "serializable": serializable,
        },
        "window_s": 60.0,
        "calls": int(calls_per_s * 60),
        "calls_per_s": calls_per_s,
        "keys_per_s": calls_per_s * batch,
        "latency_us": {"p50": p50_us, "p99": p50_us * 3, "p99.9": p50_us * 5, "mean": mean_us},
        "errors": 0,
        "error_kinds": {},
        "misses": 0,
        "exited": [],
        "cpu_s_per_1k_keys": dict(CPU.get(system, {"e1": 0.05, "client": 0.1})),
        "rss_samples": [],
        "anon_samples": [],
    }


def steady() -> Row:
    """The soak's row: RSS sampled three times, every process flat within 5%."""
    soak = row(SHARDKV, "50/50", 256, calls_per_s=20_000, section="steady")
    soak["rss_samples"] = [
        {"t_s": float(t), **{p: 100.0 * growth for p in PROCESSES}}
        for t, growth in ((0, 1.0), (30, 1.02), (60, 1.05))
    ]
    soak["anon_samples"] = [dict(sample) for sample in soak["rss_samples"]]
    return soak


def clean_rows() -> list[Row]:
    """A run in which every target is met with room to spare."""
    batches = [
        row(SHARDKV, mix, BATCH_IN_FLIGHT, size, calls_per_s=400, section="batches")
        for size in (100, 1000)
        for mix in ("put-only", "get-only")
    ]
    return [
        row(SHARDKV, "put-only", 1, calls_per_s=500, p50_us=2000),
        row(SHARDKV, "get-only", 1, calls_per_s=1000, p50_us=1500),
        row(SHARDKV, "put-only", 64, calls_per_s=20_000),
        row(SHARDKV, "put-only", 256, calls_per_s=30_000),
        row(SHARDKV, "get-only", 256, calls_per_s=50_000, mean_us=5000),
        *batches,
        row(SHARDKV12, "put-only", 256, calls_per_s=25_000, section="nodes"),
        steady(),
        row(SHARDD, "put-only", 1, calls_per_s=1000, p50_us=1200),
        row(SHARDD, "get-only", 1, calls_per_s=1200, p50_us=900),
        row(ETCD1, "put-only", 256, calls_per_s=10_000),
        row(ETCD1, "get-only", 256, calls_per_s=10_000),
        row(ETCD3, "put-only", 256, calls_per_s=10_000),
        row(ETCD3, "get-only", 256, calls_per_s=9_000),
        row(ETCD3, "get-only", 256, calls_per_s=30_000, serializable=True),
        row(ETCD3, "put-only", BATCH_IN_FLIGHT, 100, calls_per_s=200, section="batches"),
        row(ETCD3, "get-only", BATCH_IN_FLIGHT, 100, calls_per_s=300, section="batches"),
    ]


def verdicts_of(rows: Sequence[Row]) -> dict[str, Verdict]:
    return {v.name: v for v in evaluate(rows, PLACEMENT)}


def the(rows: list[Row], system: str, mix: str, in_flight: int, batch: int = 1) -> Row:
    (found,) = (
        r
        for r in rows
        if r["system"] == system
        and r["cell"]["mix"] == mix
        and r["cell"]["in_flight"] == in_flight
        and r["cell"]["batch"] == batch
        and not r["cell"]["serializable"]
    )
    return found
