"""The bounds of issue 16 as the benchmark targets judge them: router CPU per key against
a node's, server CPU against etcd's members, latency over a direct shardd, growth with the
cluster; peers measured at zero are no baseline; etcd's serializable reads are compared,
never judged."""

from __future__ import annotations

import json
from typing import Any

import pytest

pytest.importorskip("hdrh", reason="the bench extra is not installed (make bench-deps)")

from bench_rows import (
    GET_P50,
    GROWTH,
    PLACEMENT,
    PUT_P50,
    READS_VS_ETCD3,
    ROUTER_BATCH,
    ROUTER_GET,
    ROUTER_PUT,
    SERVER_CPU,
    WRITES_VS_ETCD3,
    clean_rows,
    the,
    verdicts_of,
)

from benchmarks.plan import BATCH_IN_FLIGHT, ETCD1, ETCD3, SHARDD, SHARDKV, SHARDKV12
from benchmarks.rows import find
from benchmarks.targets import comparisons, evaluate


@pytest.mark.parametrize(
    ("cell", "name"),
    [
        ((ETCD3, "put-only", BATCH_IN_FLIGHT, 100), WRITES_VS_ETCD3),
        ((ETCD3, "get-only", BATCH_IN_FLIGHT, 100), READS_VS_ETCD3),
    ],
)
def test_a_peer_at_zero_keys_per_s_is_na(cell: tuple[Any, ...], name: str) -> None:
    """Any rate over 0 keys/s is 'infinitely' better and proves nothing: n/a, and no
    infinite ratio in the results (JSON has no infinity)."""
    rows = clean_rows()
    the(rows, *cell)["keys_per_s"] = 0.0
    verdicts = evaluate(rows, PLACEMENT)
    by_name = {v.name: v for v in verdicts}
    assert by_name[name].verdict == "n/a", by_name[name]
    assert by_name[name].ratio is None
    json.dumps([v.to_json() for v in verdicts], allow_nan=False)


@pytest.mark.parametrize(("mix", "name"), [("get-only", GET_P50), ("put-only", PUT_P50)])
def test_a_direct_shardd_at_zero_latency_is_na(mix: str, name: str) -> None:
    """A baseline p50 of 0 is no measurement: the router-over-direct figure is n/a."""
    rows = clean_rows()
    the(rows, SHARDD, mix, 1)["latency_us"]["p50"] = 0.0
    verdicts = evaluate(rows, PLACEMENT)
    by_name = {v.name: v for v in verdicts}
    assert by_name[name].verdict == "n/a", by_name[name]
    json.dumps([v.to_json() for v in verdicts], allow_nan=False)


def test_a_missing_peer_is_na() -> None:
    rows = [r for r in clean_rows() if r["system"] not in (ETCD1, ETCD3)]
    verdicts = verdicts_of(rows)
    for name in (WRITES_VS_ETCD3, READS_VS_ETCD3, SERVER_CPU):
        assert verdicts[name].verdict == "n/a"


@pytest.mark.parametrize(
    ("cell", "name"),
    [
        ((SHARDKV, "put-only", 256), ROUTER_PUT),
        ((SHARDKV, "get-only", 256), ROUTER_GET),
        *(((SHARDKV, m, BATCH_IN_FLIGHT, n), name) for (m, n), name in ROUTER_BATCH.items()),
    ],
)
def test_a_router_dearer_than_1_2_nodes_per_key_is_a_miss(cell: tuple[Any, ...], name: str) -> None:
    """The router's CPU per key is judged against the mean node of the same cell: 1.2x
    passes (barely), 1.3x misses, and the client's CPU plays no part."""
    rows = clean_rows()
    row = the(rows, *cell)
    row["cpu_s_per_1k_keys"].update(r1=0.024, client=5.0)
    assert verdicts_of(rows)[name].verdict == "PASS"
    row["cpu_s_per_1k_keys"]["r1"] = 0.026
    verdict = verdicts_of(rows)[name]
    assert verdict.verdict == "MISS" and verdict.ratio == 1.3, verdict


def test_a_read_at_r_of_n_says_what_a_node_spends_per_key_it_read() -> None:
    """Reads ask R of N owners, so a node reads a share of the cell's keys: the verdict
    says what a node spent per key it read, and still judges per key of the cell (1.3x a
    node's misses however few keys each node read). Writes, which every node reads none
    of, say nothing of it."""
    rows = clean_rows()
    read = the(rows, SHARDKV, "get-only", 256)
    read["cpu_s_per_1k_keys"]["r1"] = 0.026
    keys = read["keys_per_s"]
    read["node_metrics"] = {n: {"keys_read_per_s": keys * 2 / 3} for n in ("n1", "n2", "n3")}
    verdict = verdicts_of(rows)[ROUTER_GET]
    assert verdict.verdict == "MISS" and verdict.ratio == 1.3, verdict
    assert "a node read 0.67 of the keys: 30.00 µs per key it read" in verdict.measured
    written = the(rows, SHARDKV, "put-only", 256)
    written["node_metrics"] = {n: {"keys_read_per_s": 0.0} for n in ("n1", "n2", "n3")}
    assert "key it read" not in verdicts_of(rows)[ROUTER_PUT].measured


def test_server_cpu_counts_router_and_every_node_against_etcds_members() -> None:
    """Router + 3 nodes against 3 etcd members (270 µs): 91 µs (0.337x) misses 1/3, 80 µs
    (0.296x) passes. Client CPU counts on neither side."""
    rows = clean_rows()
    row = the(rows, SHARDKV, "put-only", 256)
    row["cpu_s_per_1k_keys"].update(r1=0.031)
    assert verdicts_of(rows)[SERVER_CPU].verdict == "MISS"
    assert verdicts_of(rows)[SERVER_CPU].ratio == 0.34
    row["cpu_s_per_1k_keys"].update(r1=0.02, client=1.0)
    verdict = verdicts_of(rows)[SERVER_CPU]
    assert verdict.verdict == "PASS" and verdict.ratio == 0.3, verdict


def test_p50_via_router_may_exceed_direct_by_one_millisecond() -> None:
    rows = clean_rows()
    the(rows, SHARDKV, "put-only", 1)["latency_us"]["p50"] = 2300.0  # direct 1.2 ms
    assert verdicts_of(rows)[PUT_P50].verdict == "MISS"
    assert "+1.10 ms" in verdicts_of(rows)[PUT_P50].measured


def test_router_cpu_growing_with_the_cluster_is_a_miss() -> None:
    """12 nodes at 256 in flight against 3 nodes at 64: 1.25x passes, 1.5x misses; a flawed
    3-node baseline is a MISS too (both cells are ours)."""
    rows = clean_rows()
    twelve = the(rows, SHARDKV12, "put-only", 256)
    twelve["cpu_s_per_1k_keys"]["r1"] = 0.0275
    assert verdicts_of(rows)[GROWTH].verdict == "PASS"
    twelve["cpu_s_per_1k_keys"]["r1"] = 0.033
    assert verdicts_of(rows)[GROWTH].verdict == "MISS"
    twelve["cpu_s_per_1k_keys"]["r1"] = 0.022
    the(rows, SHARDKV, "put-only", 64)["errors"] = 3
    assert verdicts_of(rows)[GROWTH].verdict == "MISS"


def test_serializable_cells_are_told_apart_and_only_compared() -> None:
    """etcd's serializable Range is a row of its own: find() never mistakes it for the
    linearizable one, and it appears in the comparisons, not in the targets."""
    rows = clean_rows()
    linear = find(rows, ETCD3, mix="get-only", in_flight=256)
    fast = find(rows, ETCD3, mix="get-only", in_flight=256, serializable=True)
    assert linear is not None and fast is not None and linear is not fast
    found = {c.name: c for c in comparisons(rows)}
    assert found["Gets/s vs etcd-3 linearizable Range"].ratio == round(50_000 / 9_000, 2)
    assert found["Gets/s vs etcd-3 serializable Range"].ratio == round(50_000 / 30_000, 2)
    assert found["Gets/s vs etcd-1 serializable Range"].ratio is None
    the(rows, SHARDKV, "get-only", 256)["errors"] = 1
    assert all(c.ours is None for c in comparisons(rows) if c.name.startswith("Gets/s")), (
        "a flawed row is left out"
    )
