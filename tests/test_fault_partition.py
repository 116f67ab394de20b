"""Partitions between the router and one node, made by a TCP proxy on the link: a slow link
(every byte 150 ms late), a black hole (connections stay open, nothing arrives: calls hang
until their deadline) and a cut (every connection reset). Three nodes, N=3, R=W=2, one
router; the same checks as the process faults: nothing acknowledged is lost, no stale
read, the replicas converge once the link heals."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from faults.checker import check
from faults.cluster import FaultyCluster, converge, final_state, start_faulty_cluster
from faults.report import scenario_line
from faults.workload import Workload, run_workload

pytestmark = pytest.mark.slow


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
    scenario_line("partitions", history, verdict, cluster.faults, converge_s, during)
    assert verdict.acknowledged_writes > 500, verdict.summary()
    assert not verdict.problems(), "\n".join(verdict.problems())
    assert all(count > 0 for count in during.values()), during
    assert cluster.proxies["n3"].connections > 1, "the router never reconnected through the proxy"
