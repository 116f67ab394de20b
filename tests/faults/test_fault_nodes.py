"""Process faults under a recorded workload: node SIGKILL and restart, a hung node
(SIGSTOP/SIGCONT), a router killed and restarted. Three nodes, N=3, R=W=2, one router.

After the faults heal, the replicas must converge, no acknowledged write may be lost, no
read may be staler than a write acknowledged before it began, every read and the final
records must be what some write wrote under that write's version, and, with a single
router whose versions follow real time, LWW must discard no acknowledged write
(faults/checker.py). Those checks mean something only if reads succeeded, so the test also
requires successful reads overall and while each node fault lasted, and that the router saw
each node fault take effect (the node UP when it began, then DOWN).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import stopped_after
from shardkv.v1 import admin_pb2

from faults.checker import check
from faults.cluster import (
    FaultyCluster,
    converge,
    final_state,
    start_faulty_cluster,
    wait_node_state,
)
from faults.history import reads_during
from faults.observe import describe
from faults.report import scenario_line
from faults.workload import Workload, run_workload


@pytest.fixture
def cluster(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[FaultyCluster]:
    with stopped_after(start_faulty_cluster(tmp_path), request) as running:
        yield running


@pytest.mark.timeout(60)
def test_node_kill_hang_and_router_restart(cluster: FaultyCluster) -> None:
    spec = Workload()

    def faults() -> None:
        cluster.kill_restart("n1", down_s=2.0)
        # One node out at a time: n1 counted again (with n1 uncounted and n2 paused a write
        # needs n2), and n2 UP when its fault begins, so a DOWN seen meanwhile is the pause's.
        for node_id in ("n1", "n2"):
            wait_node_state(cluster.router.address, node_id, admin_pb2.UP, 30, counted=True)
        cluster.pause("n2", paused_s=3.0)
        cluster.restart_router(0, kill=True)

    history = run_workload(cluster.addresses(), faults, spec=spec)
    keys = [spec.key(i) for i in range(spec.keys)]
    converge_s = converge(cluster, keys)
    verdict = check(history.ops, final_state(cluster, keys))
    during = cluster.acknowledged_during_faults(history.ops)
    reads = reads_during(history.ops, cluster.windows)
    scenario_line("process faults", history, verdict, cluster.faults, converge_s, during, reads)
    assert verdict.acknowledged_writes > 500, verdict.summary()
    assert verdict.reads - verdict.reads_not_found > 300, verdict.summary()
    assert verdict.reads_not_found > 10, verdict.summary()
    assert not verdict.problems(), "\n".join(verdict.problems())
    # One node down of three: writes and reads go on. The lone router's restart is an
    # outage for every call, so its window is reported, not required.
    node_faults = [fault for fault in during if "router" not in fault]
    assert len(node_faults) == 2, during
    assert all(during[fault] > 0 for fault in node_faults), during
    assert all(reads[fault] > 0 for fault in node_faults), reads
    # Each node fault took effect: the router saw the node go from UP to DOWN meanwhile.
    print("[fault effects] " + "; ".join(f"{f}: {describe(cluster.seen[f])}" for f in node_faults))
    assert all(cluster.seen_down(fault) for fault in node_faults), {
        fault: describe(cluster.seen[fault]) for fault in node_faults
    }
