"""Partitions between the router and one node, made by a TCP proxy on the link: a slow link
(every byte 150 ms late), a black hole (connections stay open, nothing arrives: calls hang
until their deadline) and a cut (every connection reset). Three nodes, N=3, R=W=2, one
router; the same checks as the process faults: nothing acknowledged is lost, no stale
read, every value read is linked to its write, the replicas converge once the link heals,
and reads as well as writes succeed while each fault lasts."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from shardkv.client import Client
from shardkv.v1 import admin_pb2

from faults.checker import check
from faults.cluster import (
    FaultyCluster,
    converge,
    digest,
    final_state,
    start_faulty_cluster,
    wait_node_state,
)
from faults.history import reads_during
from faults.report import scenario_line
from faults.workload import Workload, run_workload


@pytest.fixture
def cluster(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[FaultyCluster]:
    running = start_faulty_cluster(tmp_path, proxied=["n3"])
    try:
        yield running
    finally:
        running.stop()
        report = getattr(request.node, "rep_call", None)
        if report is None or report.failed:
            print(running.logs())


@pytest.mark.timeout(60)
def test_slow_blackholed_and_cut_links(cluster: FaultyCluster) -> None:
    spec = Workload()

    def faults() -> None:
        # 150 ms each way keeps the node's health checks (500 ms) passing: slow, not down.
        cluster.partition("n3", "delay", 2.0, delay_s=0.15)
        time.sleep(1.0)
        cluster.partition("n3", "blackhole", 3.0)
        time.sleep(1.0)
        cluster.partition("n3", "cut", 2.0)

    history = run_workload(cluster.addresses(), faults, spec=spec)
    keys = [spec.key(i) for i in range(spec.keys)]
    converge_s = converge(cluster, keys)
    verdict = check(history.ops, final_state(cluster, keys))
    during = cluster.acknowledged_during_faults(history.ops)
    reads = reads_during(history.ops, cluster.windows)
    scenario_line("partitions", history, verdict, cluster.faults, converge_s, during, reads)
    assert verdict.acknowledged_writes > 500, verdict.summary()
    assert verdict.reads - verdict.reads_not_found > 300, verdict.summary()
    assert verdict.reads_not_found > 10, verdict.summary()
    assert not verdict.problems(), "\n".join(verdict.problems())
    assert len(during) == 3, during
    assert all(count > 0 for count in during.values()), during
    assert all(count > 0 for count in reads.values()), reads
    assert cluster.proxies["n3"].connections > 1, "the router never reconnected through the proxy"


@pytest.mark.timeout(60)
def test_a_node_that_missed_writes_catches_up(cluster: FaultyCluster) -> None:
    """n3 is black-holed while 300 keys are written and 30 deleted (W=2 goes on without
    it), then the link heals: the replicas converge (n1 and n2 kept markers for n3 and hand
    the writes over; reading the keys would repair them too)."""
    keys = [b"missed/%03d" % i for i in range(300)]
    proxy = cluster.proxies["n3"]
    with Client(cluster.router.address, timeout=5) as kv:
        kv.put_many({key: b"before" for key in keys[:30]})
        proxy.blackhole()
        try:
            wait_node_state(cluster.router.address, "n3", admin_pb2.DOWN)
            versions = kv.put_many({key: b"while n3 was away" for key in keys})
            for key in keys[:30]:
                kv.delete(key)
        finally:
            proxy.heal()
    assert len(versions) == len(keys)
    digests = {node.name: digest(node.address) for node in cluster.nodes}
    assert digests["n1"].digest == digests["n2"].digest  # n3 may have caught up already
    converge_s = converge(cluster, keys)
    final = final_state(cluster, keys)
    assert all(final[key].tombstone for key in keys[:30])
    assert all(final[key].value == b"while n3 was away" for key in keys[30:])
    print(
        f"[catch-up] n3 held {digests['n3'].count} of {digests['n1'].count} records at the heal;"
        f" replicas equal {converge_s:.2f} s after the heal"
    )
