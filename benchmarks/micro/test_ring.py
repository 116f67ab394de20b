"""Preference-list lookups (N=3) on the router's ring at 3, 10 and 100 nodes; target
at 100 nodes: 5 µs per lookup."""

from __future__ import annotations

import itertools

import pytest
from pytest_benchmark.fixture import BenchmarkFixture
from shardkv.router.placement.ring import Ring


@pytest.mark.parametrize("nodes", [3, 10, 100])
def test_preference_list(benchmark: BenchmarkFixture, nodes: int) -> None:
    ring = Ring({f"node-{i:03d}": 1 for i in range(nodes)})
    keys = itertools.cycle([b"user:%08d" % i for i in range(4096)])
    owners = benchmark(lambda: ring.preference_list(next(keys), 3))
    assert len(owners) == 3
