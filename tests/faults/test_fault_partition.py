"""Partitions between the router and one node, made by a TCP proxy on the link: a slow link
(every byte 150 ms late), a black hole (connections stay open, nothing arrives: calls hang
until their deadline) and a cut (every connection reset). Three nodes, N=3, R=W=2, one
router; the same checks as the process faults: nothing acknowledged is lost, no stale
read, every value read is linked to its write, the replicas converge once the link heals,
and reads as well as writes succeed while each fault lasts.

Each fault must also be seen to take effect, or the checks could pass on a proxy that did
nothing: the router's Admin GetHealth shows the black-holed node DOWN (for a call that ran
out its deadline) and the cut one DOWN, and every read at ALL made while the link is slow
(it needs the slow node's answer) takes at least the two delays of its round trip.

The scenario runs with the harness's test-tuned timeouts (health checks every 200 ms) and
again with what a user gets (faults/timeouts.py): the router's built-in defaults, with no
[timeouts] table, and the table `make cluster` writes (health checks every 500 ms, node
calls of 1 s and 2 s)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import stopped_after
from shardkv.client import Client
from shardkv.router.membership.topology import load_topology
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
from faults.observe import describe
from faults.report import scenario_line
from faults.timeouts import SHIPPED_TIMEOUTS
from faults.workload import Workload, run_workload

DELAY_S = 0.15
TUNED = "test-tuned"


@pytest.fixture
def cluster(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[FaultyCluster]:
    """n3 behind a proxy; with a parameter, the routers run with that set of timeouts."""
    which = getattr(request, "param", TUNED)
    timeouts = None if which == TUNED else SHIPPED_TIMEOUTS[which]()
    with stopped_after(
        start_faulty_cluster(tmp_path, proxied=["n3"], timeouts=timeouts), request
    ) as running:
        yield running


@pytest.mark.timeout(90)
@pytest.mark.parametrize("cluster", [TUNED, *SHIPPED_TIMEOUTS], indirect=True)
def test_slow_blackholed_and_cut_links(cluster: FaultyCluster) -> None:
    spec = Workload()

    def faults() -> None:
        # 150 ms each way keeps the node's health checks (500 ms) passing: slow, not down.
        cluster.partition("n3", "delay", 2.0, delay_s=DELAY_S)
        time.sleep(1.0)
        # Each partition begins with n3 UP, so a DOWN seen meanwhile is the partition's.
        wait_node_state(cluster.router.address, "n3", admin_pb2.UP, timeout_s=30)
        cluster.partition("n3", "blackhole", 3.0)
        time.sleep(1.0)
        wait_node_state(cluster.router.address, "n3", admin_pb2.UP, timeout_s=30)
        cluster.partition("n3", "cut", 2.0)

    history = run_workload(cluster.addresses(), faults, spec=spec)
    keys = [spec.key(i) for i in range(spec.keys)]
    converge_s = converge(cluster, keys)
    verdict = check(history.ops, final_state(cluster, keys))
    during = cluster.acknowledged_during_faults(history.ops)
    reads = reads_during(history.ops, cluster.windows)
    timeouts = load_topology(cluster.config).timeouts
    scenario_line(
        f"partitions, {timeouts}", history, verdict, cluster.faults, converge_s, during, reads
    )
    delay, blackhole, cut = cluster.faults
    print(
        f"[fault effects] reads at ALL before the slow link: {_ms(cluster.reads_before[delay])};"
        f" while slow: {_ms(cluster.slow_reads[delay])}; n3 as the router saw it:"
        + "; ".join(f" {fault}: {describe(cluster.seen[fault])}" for fault in cluster.faults)
    )
    assert verdict.acknowledged_writes > 500, verdict.summary()
    assert verdict.reads - verdict.reads_not_found > 300, verdict.summary()
    assert verdict.reads_not_found > 10, verdict.summary()
    assert not verdict.problems(), "\n".join(verdict.problems())
    assert len(during) == 3, during
    assert all(count > 0 for count in during.values()), during
    assert all(count > 0 for count in reads.values()), reads
    assert cluster.proxies["n3"].connections > 1, "the router never reconnected through the proxy"
    # The faults took effect. A read at ALL waits for n3, whose request and reply each
    # wait DELAY_S in the proxy: none can be quicker (a lower bound; load only adds to it).
    slow = cluster.slow_reads[delay]
    assert len(slow) >= 2, f"too few reads at ALL succeeded while the link was slow: {slow}"
    assert min(slow) >= 2 * DELAY_S, f"a read at ALL beat the slow link: {_ms(slow)}"
    # The router saw n3 go from UP to DOWN while each partition lasted, for the reason the
    # partition gives: a black hole lets calls run out their deadline, a cut refuses them.
    assert any("DEADLINE_EXCEEDED" in s.reason for s in cluster.seen_down(blackhole)), describe(
        cluster.seen[blackhole]
    )
    assert any("UNAVAILABLE" in s.reason for s in cluster.seen_down(cut)), describe(
        cluster.seen[cut]
    )


def _ms(seconds: list[float]) -> str:
    if not seconds:
        return "none"
    return f"{len(seconds)} reads, {min(seconds) * 1000:.0f}-{max(seconds) * 1000:.0f} ms"


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
