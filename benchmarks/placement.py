"""Placement figures: the cost of one preference-list lookup and how evenly the ring
spreads keys, both measured on `shardkv.router.ring.Ring` itself."""

from __future__ import annotations

import statistics
import timeit
from collections import Counter
from typing import Any

from shardkv.router.placement.ring import Ring

REPLICATION = 3
LOOKUP_KEYS = 10_000
BALANCE_KEYS = 1_000_000


def _ring(nodes: int) -> Ring:
    return Ring({f"node-{i:03d}": 1 for i in range(nodes)})


def lookup_us(nodes: int, *, repeats: int = 5) -> dict[str, float]:
    """Microseconds per `preference_list(key, 3)`: median and best of `repeats` passes
    over LOOKUP_KEYS distinct keys."""
    ring = _ring(nodes)
    keys = [b"user:%08d" % i for i in range(LOOKUP_KEYS)]

    def one_pass() -> None:
        for key in keys:
            ring.preference_list(key, REPLICATION)

    runs = [t / LOOKUP_KEYS * 1e6 for t in timeit.repeat(one_pass, number=1, repeat=repeats)]
    return {"median_us": round(statistics.median(runs), 3), "best_us": round(min(runs), 3)}


def balance(nodes: int = 100, *, keys: int = BALANCE_KEYS) -> dict[str, Any]:
    """Replicas each node holds when `keys` keys are placed with N = 3, and the busiest
    node's load over the mean (1.0 is perfect)."""
    ring = _ring(nodes)
    load: Counter[str] = Counter()
    for i in range(keys):
        load.update(ring.preference_list(b"key:%d" % i, REPLICATION))
    mean = keys * REPLICATION / nodes
    return {
        "nodes": nodes,
        "keys": keys,
        "replication": REPLICATION,
        "max_over_mean": round(max(load.values()) / mean, 4),
        "min_over_mean": round(min(load.values()) / mean, 4),
    }


def measure() -> dict[str, Any]:
    return {
        "lookup_us": {str(n): lookup_us(n) for n in (3, 10, 100)},
        "balance": balance(),
    }
