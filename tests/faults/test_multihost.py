"""Multi-host faults with real network separation (issue 15 item 7).

Every process runs on a host of its own, a network namespace on a bridge this module
creates (netns_hosts.py): three etcd members (e1..e3), five nodes (n1..n5, N=3, R=W=2),
two routers (r1, r2) sharing the topology in etcd, and spare nodes (n6, n7, n8) to add.
SDK writers and readers go through both routers (one client per router: c0 -> r1,
c1 -> r2) while each fault lasts:

(a) a node host's link is cut (its bridge port down: a black hole), then restored;
(b) a router host is cut off from the etcd hosts (blackhole routes both ways): it keeps
    serving its last topology and refuses a change (adding n8) with UNAVAILABLE naming
    etcd; should the refused change still land after the heal, it must not be left half
    done;
(c) n6 is added through r1, and r1 is SIGKILLed while the move streams: r2 must take the
    move over and finish it (the time it took is printed);
(d) r2 is SIGSTOPped across a whole move (n7 added through r1, drops included), then
    resumed while still cut off from etcd, so it surely acts on the placement it was
    paused with: the nodes' fences must refuse it (nothing written or read under it).

After each: nothing acknowledged is lost and no read is stale (faults/checker.py, R+W>N),
reads succeeded through a serving router while the fault lasted, both routers serve one
epoch, and every key written so far (the bulk load too) is held by exactly its owners, read
from every node directly. Each fault is also seen to take effect (the router saw the cut
node DOWN, the refusal, the dead driver, the stopped process), so no check passes because
a fault did nothing. The cluster is shared by the four tests (set-up ~10 s); each test can
also run alone. The killed driver comes last, so that no later test starts with clients
whose reconnect back-off grew while its router was down (the SDK bounds it at 1 s:
integration/test_client_reconnect.py).
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from harness import Proc, failed
from netns_cluster import (
    MultiHostCluster,
    admin,
    on_exactly_owners,
    served,
    start_multihost,
    wait_member,
    wait_one_epoch,
)
from netns_hosts import Lan, lan, unavailable
from shardkv.client import Client
from shardkv.v1 import admin_pb2

from faults.checker import check
from faults.cluster import wait_nodes_up
from faults.history import OK, History, reads_during
from faults.observe import HealthWatch, describe, seen_down
from faults.report import scenario_line
from faults.workload import Workload, client_of, run_workload, writers

HOSTS = ("e1", "e2", "e3", "n1", "n2", "n3", "n4", "n5", "n6", "n7", "n8", "r1", "r2")
BULK_KEYS = 3000  # streamed by every move: paced at 1000 records/s, a move lasts seconds
TAKEOVER_BOUND_S = 30.0
# How long after the heal a change refused while cut off from etcd is watched for.
REFUSED_GRACE_S = 5.0


@dataclass
class Run:
    """The module's cluster, and every key written into it so far."""

    cluster: MultiHostCluster
    keys: list[bytes] = field(default_factory=list)

    @property
    def lan(self) -> Lan:
        return self.cluster.lan

    @property
    def r1(self) -> Proc:
        return self.cluster.router("r1")

    @property
    def r2(self) -> Proc:
        return self.cluster.router("r2")


@dataclass
class Window:
    """A fault's span (time.monotonic()) and the clients whose reads must succeed in it."""

    name: str
    start: float
    end: float
    via: tuple[str, ...]


@pytest.fixture(scope="module")
def multihost(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    reason = unavailable()
    if reason:
        pytest.skip(f"multi-host tests need network namespaces: {reason}")
    base = tmp_path_factory.mktemp("multihost")
    with lan(HOSTS) as network:
        cluster = start_multihost(base, network, spares=("n6", "n7", "n8"))
        try:
            try:
                keys = _bulk_load(cluster)
            except BaseException:
                print(cluster.logs())
                raise
            yield Run(cluster, keys)
        finally:
            cluster.stop()


@pytest.fixture
def run(multihost: Run, request: pytest.FixtureRequest) -> Iterator[Run]:
    """The shared cluster; its logs are printed when the test failed."""
    yield multihost
    if failed(request):
        print(multihost.cluster.logs())


def _bulk_load(cluster: MultiHostCluster) -> list[bytes]:
    keys = [b"bulk/%05d" % i for i in range(BULK_KEYS)]
    with Client(cluster.router("r1").address, timeout=30) as kv:
        for i in range(0, len(keys), 500):
            kv.put_many({key: b"v" * 100 for key in keys[i : i + 500]})
    return keys


def scenario(
    run: Run,
    name: str,
    fault: Callable[[list[Window]], None],
    seed: int,
) -> None:
    """Runs the workload through r1 and r2 while fault runs (it appends its windows), then
    checks everything the module docstring lists."""
    spec = Workload(keys=40, workers=8, prefix=f"{name}/".encode())
    windows: list[Window] = []
    targets = [run.r1.address, run.r2.address]
    history = run_workload(targets, lambda: fault(windows), spec=spec, after_s=2.0, seed=seed)
    keys = [spec.key(i) for i in range(spec.keys)]
    run.keys += keys
    started = time.monotonic()
    for router in (run.r1, run.r2):
        wait_nodes_up(router.address, 30)
    final = on_exactly_owners(run.cluster, run.keys)
    settle_s = time.monotonic() - started
    finals = {key: final[key] for key in keys}
    verdict = check(history.ops, finals, writer_of=writers([run.r1.name, run.r2.name]))
    reads = _reads_via(history, windows)
    during = {
        w.name: sum(
            op.is_write and op.outcome == OK and w.start <= op.start and op.end <= w.end
            for op in history.ops
        )
        for w in windows
    }
    scenario_line(f"multihost {name}", history, verdict, [w.name for w in windows], settle_s,
                  during, {w.name: sum(reads[w.name].values()) for w in windows})  # fmt: skip
    print(f"[multihost {name}] reads ok per router while each fault lasted: {reads}")
    assert verdict.acknowledged_writes > 100, verdict.summary()
    problems = verdict.problems()
    assert not problems, "\n".join(problems)
    assert windows, "the fault recorded no window"
    for window in windows:
        assert all(reads[window.name][c] > 0 for c in window.via), (window.name, reads)


def _reads_via(history: History, windows: list[Window]) -> dict[str, dict[str, int]]:
    """Per window, the reads that began and succeeded in it, per client (c0: r1, c1: r2)."""
    ops = history.ops
    return {
        w.name: {
            c: reads_during([op for op in ops if client_of(op) == c], [(w.name, w.start, w.end)])[
                w.name
            ]
            for c in ("c0", "c1")
        }
        for w in windows
    }


def add_node(router: Proc, node: Proc, timeout_s: float = 20) -> admin_pb2.Move:
    request = admin_pb2.AddNodeRequest(id=node.name, address=node.address)
    with admin(router) as stub:
        move: admin_pb2.Move = stub.AddNode(request, timeout=timeout_s)
    return move


def wait_move(router: Proc, move_id: str, states: set[int], timeout_s: float = 30) -> int:
    """Waits until router reports move_id (current or finished) in one of states."""
    deadline = time.monotonic() + timeout_s
    while True:
        with admin(router) as stub:
            reply = stub.GetMoves(admin_pb2.GetMovesRequest(), timeout=5)
        moves = [*reply.history, *([reply.current] if reply.HasField("current") else [])]
        state = next((int(m.state) for m in moves if m.id == move_id), None)
        if state is not None and state in states:
            return state
        assert time.monotonic() < deadline, f"move {move_id} never reached {states}: {reply}"
        time.sleep(0.03)


def process_state(proc: Proc) -> str:
    """The process's state letter in /proc (T: stopped)."""
    return Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


@pytest.mark.timeout(120)
def test_node_host_link_cut_and_restored(run: Run) -> None:
    host = run.lan.host("n2")
    seen: list[str] = []

    def fault(windows: list[Window]) -> None:
        watch = HealthWatch(run.r1.address, "n2").start()
        start = time.monotonic()
        run.lan.cut(host)
        try:
            time.sleep(3.0)
        finally:
            run.lan.restore(host)
            windows.append(Window("n2's link cut 3 s", start, time.monotonic(), ("c0", "c1")))
            samples = watch.stop()
            seen.append(describe(samples))
            assert seen_down(samples), f"r1 never saw n2 DOWN: {describe(samples)}"

    scenario(run, "a", fault, seed=11)
    print(f"[multihost a] n2 as r1 saw it: {seen[0]}")


@pytest.mark.timeout(120)
def test_router_host_cut_off_from_etcd(run: Run) -> None:
    etcd_hosts = [run.lan.host(m.name) for m in run.cluster.etcd]
    refused: list[grpc.RpcError] = []
    epochs: list[int] = []
    landed: list[float] = []  # seconds after the heal the refused change took effect

    def fault(windows: list[Window]) -> None:
        before = served(run.r1).epoch
        start = time.monotonic()
        run.lan.separate([run.lan.host("r1")], etcd_hosts)
        try:
            try:
                add_node(run.r1, run.cluster.node("n8"), timeout_s=40)
            except grpc.RpcError as err:
                refused.append(err)
            print(f"[multihost b] r1 answered the change {time.monotonic() - start:.1f} s in")
            time.sleep(1.0)
            epochs.extend([before, served(run.r1).epoch, served(run.r2).epoch])
        finally:
            run.lan.rejoin()
            windows.append(Window("r1 cut off from etcd", start, time.monotonic(), ("c0", "c1")))
        # The refused change is of unknown outcome, like a write that timed out: its Txn
        # may still sit in a TCP send queue, delivered once the routes are back
        # (retransmissions back off to seconds). If it lands, the move must not be left
        # half done with nobody to drive it.
        healed = time.monotonic()
        while refused and time.monotonic() < healed + REFUSED_GRACE_S:
            if served(run.r2).epoch != before:
                landed.append(time.monotonic() - healed)
                try:
                    wait_one_epoch([run.r1, run.r2], timeout_s=30)
                except AssertionError as err:
                    raise AssertionError(
                        f"the change r1 refused with UNAVAILABLE took effect {landed[0]:.1f} s"
                        f" after the heal, and nobody finished it: {err}"
                    ) from None
                break
            time.sleep(0.1)

    scenario(run, "b", fault, seed=12)
    assert refused, "r1 cut off from etcd made a topology change"
    assert refused[0].code() == grpc.StatusCode.UNAVAILABLE, refused[0]
    assert "etcd" in (refused[0].details() or ""), refused[0].details()
    assert len(set(epochs)) == 1, f"the epoch changed while r1 was cut off: {epochs}"
    if landed:
        print(f"[multihost b] the refused change took effect {landed[0]:.1f} s after the heal")


@pytest.mark.timeout(120)
def test_router_paused_across_a_whole_move(run: Run) -> None:
    """r2 is also cut off from etcd from its pause until 2 s after it resumed, so that it
    surely acts on the placement it was paused with before it hears of the move (left to
    a race with its watch, the check would catch a stale write only now and then)."""
    r2_host = run.lan.host("r2")
    etcd_hosts = [run.lan.host(m.name) for m in run.cluster.etcd]

    views: list[tuple[int, int]] = []  # (r2's epoch, r1's) just after r2 resumed

    def fault(windows: list[Window]) -> None:
        run.r2.signal(signal.SIGSTOP)
        start = time.monotonic()
        try:
            run.lan.separate([r2_host], etcd_hosts)
            assert process_state(run.r2) == "T", "r2 did not stop"
            move = add_node(run.r1, run.cluster.node("n7"))
            wait_move(run.r1, move.id, {admin_pb2.MOVE_DONE}, timeout_s=60)
            print(f"[multihost d] move {move.id} done {time.monotonic() - start:.1f} s in")
            run.r2.signal(signal.SIGCONT)
            views.append((served(run.r2).epoch, served(run.r1).epoch))
            time.sleep(2.0)
        finally:
            run.r2.signal(signal.SIGCONT)
            run.lan.rejoin()
            windows.append(Window("SIGSTOP r2 across add-n7", start, time.monotonic(), ("c0",)))

    scenario(run, "d", fault, seed=14)
    assert views and views[0][0] < views[0][1], f"r2 resumed on the current epoch: {views}"
    refused = sum(n.log().count("stale epoch") for n in run.cluster.nodes)
    print(f"[multihost d] r2 resumed at epoch {views[0][0]} (r1: {views[0][1]});"
          f" nodes logged {refused} refusal(s) of a stale epoch")  # fmt: skip


@pytest.mark.timeout(120)
def test_driver_killed_during_a_move_is_taken_over(run: Run) -> None:
    took: list[float] = []

    def fault(windows: list[Window]) -> None:
        move = add_node(run.r1, run.cluster.node("n6"))
        state = wait_move(run.r1, move.id, {admin_pb2.MOVE_STREAMING, admin_pb2.MOVE_SWITCHED})
        killed = time.monotonic()
        run.r1.kill()
        print(f"[multihost c] r1 SIGKILLed with move {move.id} {admin_pb2.MoveState.Name(state)}")
        try:
            assert not run.r1.alive()
            took.append(wait_member(run.r2, "n6", TAKEOVER_BOUND_S) - killed)
        finally:
            windows.append(Window("SIGKILL r1 driving add-n6", killed, time.monotonic(), ("c1",)))
            run.r1.start()  # both routers again for the checks (and the next test)

    scenario(run, "c", fault, seed=13)
    print(f"[multihost c] r2 finished the move {took[0]:.2f} s after its driver was killed")
