"""Clock skew: two routers write the same keys while one router's clock runs 3 s ahead
(--clock-offset-ms, the machine's clock is untouched).

Last write wins by version, and a version is the coordinating router's hybrid logical
clock, so a write through the slow router made up to 3 s after a write through the fast
one can lose to it although it was acknowledged later: Jepsen found exactly this in
Cassandra and Riak. The test measures how many acknowledged writes LWW discards that way
and reports the figure rather than asserting it away. What it does assert: no write is
lost by version (the final record is never older than an acknowledged write), and each
router's versions strictly increase in real time (its HLC never goes back, whatever it
observes).

How the checker models the skew: it is told which router stamped each operation
(workload.writers). Within one router, versions must follow real time, including the
versions that reads show for unknown-outcome puts; that is never excused. Across the two
routers versions say nothing about real time, so an acknowledged write that lost to an
earlier write through the other router counts as an LWW discard (reported, allowed), and
an unknown-outcome delete through one router may explain a not-found read after any write
through the other (the run reports how many writes had an unknown outcome). Everything
else is checked as strictly as with one router: lost writes, reads staler by version than
a write acknowledged before them, values linked to their put and its version, tombstones
linked to a delete. The blind phase has no reads by design; the mixed phase must have
successful reads, or "no stale read" would say nothing.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import router_proc
from shardkv.common.hlc import version_millis

from faults.checker import check
from faults.cluster import FaultyCluster, converge, final_state, start_faulty_cluster
from faults.history import OK, Op
from faults.report import scenario_line
from faults.verdict import Verdict
from faults.workload import Workload, run_workload, writers

SKEW_MS = 3000
# Above the skew, so nodes take r2's versions and r1's clock adopts them; with the default
# (500 ms) the nodes would refuse every write of r2 (tests/integration/test_router_clock.py).
MAX_OFFSET_MS = 10_000


@pytest.fixture
def cluster(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[FaultyCluster]:
    running = start_faulty_cluster(
        tmp_path, routers=0, node_extra=["--max-clock-offset-ms", str(MAX_OFFSET_MS)]
    )
    try:
        with running.config.open("a") as out:
            out.write(f"\n[clock]\nmax_offset_ms = {MAX_OFFSET_MS}\n")
        running.routers.append(router_proc(tmp_path, running.config, "r1").start())
        skewed = router_proc(
            tmp_path, running.config, "r2", extra=["--clock-offset-ms", str(SKEW_MS)]
        )
        running.routers.append(skewed.start())
        yield running
    finally:
        running.stop()
        report = getattr(request.node, "rep_call", None)
        if report is None or report.failed:
            print(running.logs())


def assert_monotonic(writes: list[Op]) -> None:
    """A write that began after another ended (same router) has a higher version."""
    ended = sorted(writes, key=lambda op: op.end)
    index, highest = 0, 0
    for op in sorted(writes, key=lambda op: op.start):
        while index < len(ended) and ended[index].end < op.start:
            highest = max(highest, ended[index].version)
            index += 1
        assert op.version > highest, f"version went back: {op} after version {highest}"
    assert len({op.version for op in writes}) == len(writes), "a router reused a version"


def skew_phase(cluster: FaultyCluster, name: str, spec: Workload) -> tuple[Verdict, int]:
    """Runs spec through both routers for a few seconds; checks it and returns the verdict
    and how many r1 writes were versioned more than half the skew ahead of wall time."""
    r1, r2 = cluster.addresses()
    history = run_workload([r1, r2], lambda: time.sleep(2.0), spec=spec, after_s=1.0)
    keys = [spec.key(i) for i in range(spec.keys)]
    converge_s = converge(cluster, keys)
    routers = writers([router.name for router in cluster.routers])
    verdict = check(history.ops, final_state(cluster, keys), writer_of=routers)
    scenario_line(name, history, verdict, [f"r2 clock +{SKEW_MS} ms"], converge_s)
    assert not verdict.problems(allow_discards=True), "\n".join(
        verdict.problems(allow_discards=True)
    )
    by_router = {
        router: [
            op
            for op in history.ops
            if op.is_write and op.outcome == OK and op.worker.startswith(client)
        ]
        for router, client in (("r1", "c0"), ("r2", "c1"))
    }
    for writes in by_router.values():
        assert_monotonic(writes)
    wall_offset_s = time.time() - time.monotonic()
    ahead = sum(
        version_millis(op.version) - (op.start + wall_offset_s) * 1000 > SKEW_MS / 2
        for op in by_router["r1"]
    )
    print(
        f"[{name}] lww_discards={len(verdict.discarded)} of {verdict.acknowledged_writes}"
        f" acknowledged writes; r1 writes versioned >{SKEW_MS // 2} ms ahead of wall clock:"
        f" {ahead} of {len(by_router['r1'])}"
    )
    return verdict, ahead


@pytest.mark.timeout(60)
def test_lww_under_a_skewed_router_clock(cluster: FaultyCluster) -> None:
    # Blind writes first: r1 never reads, so nothing moves its clock towards r2's, and its
    # writes lose to r2's made up to 3 s before them.
    blind = Workload(keys=10, workers=12, put_share=1.0, delete_share=0.0, prefix=b"blind/")
    verdict, _ = skew_phase(cluster, "clock skew, blind writes", blind)
    assert verdict.acknowledged_writes > 300, verdict.summary()
    assert verdict.discarded, "a 3 s skew with blind writes should make LWW discard writes"
    # Reads make r1's HLC observe r2's versions: r1's later writes order after them.
    mixed = Workload(keys=10, workers=12, put_share=0.5, delete_share=0.05, prefix=b"mixed/")
    verdict, ahead = skew_phase(cluster, "clock skew, reads and writes", mixed)
    assert verdict.acknowledged_writes > 200, verdict.summary()
    assert verdict.reads - verdict.reads_not_found > 100, verdict.summary()
    assert ahead > 0
