"""A disk stall on every node at once, under a recorded workload: each node's writes wait
in the kernel for longer than the router's node call timeout (faults/slow_disk.py), while
the processes run on. Three nodes, N=3, R=W=2, one router with the timeouts a user gets.

A slow disk is not a node down: a node that answers its health checks must stay UP, reads
(served from memory) must go on, and writes must wait, not fail, when the stall ends
within their deadline. Before the fix the router marked a node DOWN for every call that
used its whole node_call_ms, so a stall of the three disks failed the reads and writes
sent meanwhile ("DOWN (call failed: DEADLINE_EXCEEDED ...)"), and the nodes flapped DOWN
and UP while their queues drained; and a write's calls gave up after node_call_ms, so a
stall of twice that failed writes whose deadline it left time for.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from harness import stopped_after
from shardkv.v1 import admin_pb2, kv_pb2, kv_pb2_grpc

from faults.checker import check
from faults.cluster import (
    FaultyCluster,
    converge,
    final_state,
    start_faulty_cluster,
    wait_node_state,
)
from faults.history import OK
from faults.observe import PROBE_KEY, HealthWatch, describe, seen_down
from faults.report import scenario_line
from faults.slow_disk import unavailable
from faults.workload import Workload, run_workload

STALL_S = 2.2


@pytest.fixture
def cluster(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[FaultyCluster]:
    reason = unavailable(tmp_path)
    if reason is not None:
        pytest.skip(reason)
    stall_s = getattr(request, "param", 10.0)  # shardd's --disk-stall-s
    started = start_faulty_cluster(
        tmp_path, timeouts={}, node_extra=["--disk-stall-s", str(stall_s)]
    )
    with stopped_after(started, request) as running:
        yield running


def reads_at_all(router: str, seconds: float) -> tuple[int, list[str]]:
    """Reads one key at ALL through router, one after another, for seconds: how many
    succeeded, and why the others failed."""
    ok, failed = 0, []
    request = kv_pb2.GetRequest(key=PROBE_KEY, consistency=kv_pb2.ALL)
    until = time.monotonic() + seconds
    with grpc.insecure_channel(router) as channel:
        kv = kv_pb2_grpc.KVStub(channel)
        while time.monotonic() < until:
            try:
                kv.Get(request, timeout=5)
                ok += 1
            except grpc.RpcError as err:
                failed.append(f"{err.code().name}: {err.details()}")
                time.sleep(0.05)
    return ok, failed


@pytest.mark.timeout(90)
def test_a_disk_stall_on_every_node_fails_nothing_and_marks_no_node_down(
    cluster: FaultyCluster,
) -> None:
    spec = Workload(timeout_s=5.0)
    nodes = [node.name for node in cluster.nodes]
    watches = [HealthWatch(cluster.router.address, node_id).start() for node_id in nodes]
    reads: list[tuple[int, list[str]]] = []

    def stall() -> None:
        with cluster.stalled_disks():
            reads.append(reads_at_all(cluster.router.address, STALL_S))

    history = run_workload(cluster.addresses(), stall, spec=spec, after_s=3.0)
    samples = {node_id: watch.stop() for node_id, watch in zip(nodes, watches, strict=True)}
    keys = [spec.key(i) for i in range(spec.keys)]
    converge_s = converge(cluster, keys)
    verdict = check(history.ops, final_state(cluster, keys))
    during = cluster.acknowledged_during_faults(history.ops)
    scenario_line("disk stall", history, verdict, cluster.faults, converge_s, during, {})
    print("[router's view] " + "; ".join(f"{n}: {describe(s)}" for n, s in samples.items()))
    [(read_ok, read_failed)] = reads
    print(f"[reads at ALL during the stall] {read_ok} ok, {len(read_failed)} failed")
    assert not verdict.problems(), "\n".join(verdict.problems())
    # The stall took effect: writes begun in it were acknowledged only once it ended.
    [(_, start, end)] = cluster.windows
    stalled = [op for op in history.ops if op.is_write and start < op.start < end - 0.5]
    assert stalled, "no write began during the stall"
    early = [str(op) for op in stalled if op.outcome == OK and op.end < end - 0.2]
    assert not early, f"writes acknowledged while every disk stalled: {early[:5]}"
    failed = [str(op) for op in history.ops if op.outcome != OK]
    assert not failed, f"{len(failed)} operations failed or timed out, e.g. {failed[:5]}"
    assert not read_failed and read_ok > 20, (read_ok, read_failed[:5])
    assert not any(seen_down(s) for s in samples.values()), {
        n: describe(s) for n, s in samples.items()
    }


@pytest.mark.timeout(90)
@pytest.mark.parametrize("cluster", [1.0], indirect=True)
def test_a_node_whose_disk_stays_stalled_says_not_serving_until_it_recovers(
    cluster: FaultyCluster,
) -> None:
    """n1's disk writes stalled 3.5 s, its nodes' --disk-stall-s 1: once a commit has
    waited a second n1 says NOT_SERVING and the router counts it DOWN (its writes park
    markers with n2 and n3, its reads go to them); when the stall ends n1 serves again and
    the router counts it UP. Nothing fails meanwhile (W=R=2 from n2 and n3), and nothing is
    lost. Before the watch, n1 stayed UP through any stall and every write waited on it."""
    spec = Workload(timeout_s=5.0)

    def stall() -> None:
        with cluster.stalled_disks("n1"):
            time.sleep(3.5)

    history = run_workload(cluster.addresses(), stall, spec=spec, after_s=3.0)
    wait_node_state(cluster.router.address, "n1", admin_pb2.UP, timeout_s=10)
    keys = [spec.key(i) for i in range(spec.keys)]
    converge_s = converge(cluster, keys)
    verdict = check(history.ops, final_state(cluster, keys))
    during = cluster.acknowledged_during_faults(history.ops)
    scenario_line("one disk stalled", history, verdict, cluster.faults, converge_s, during, {})
    [fault] = cluster.faults
    print(f"[router's view of n1] {describe(cluster.seen[fault])}")
    assert not verdict.problems(), "\n".join(verdict.problems())
    failed = [str(op) for op in history.ops if op.outcome != OK]
    assert not failed, f"{len(failed)} operations failed or timed out, e.g. {failed[:5]}"
    assert during[fault] > 50, during
    down = cluster.seen_down(fault)
    assert down and all("NOT_SERVING" in sample.reason for sample in down), describe(
        cluster.seen[fault]
    )
