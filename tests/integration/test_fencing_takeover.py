"""One driver per move, on etcd (issue 15 item 5): a driver that dies or pauses at any step
is taken over by another router, which finishes the move, drops included, and a paused
old driver can do nothing after.

One real etcd member, nodes n1..n4 (n1..n3 in the ring, N=3, R=W=2), two routers on one
etcd prefix, 3000 keys, moves paced at 1500 records a second so a test can act mid-move:

- r1 is SIGSTOPped while it streams n4 in; r2 takes the move over once r1's lease expired
  (a compare-and-swap to epoch + 1 naming r2, and a Fence of that epoch) and finishes it;
  r1 resumes afterwards and changes nothing.
- r1 is SIGKILLed between the switch and the drop (a giver's commits held so the drop
  cannot run first); r2 takes over and the giver drops what it gave away.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from etcd_harness import etcd_members, etcdctl, start_etcd
from faults.test_overload import CommitHold
from harness import Proc, router_proc, shardd_proc, stopped_after, wait_serving, write_cluster_toml
from shardkv.client import Client
from shardkv.router.membership.topology import Topology, parse_topology
from shardkv.router.placement.ring import Ring
from shardkv.v1 import admin_pb2, admin_pb2_grpc, replica_pb2, replica_pb2_grpc

PREFIX = "/shardkv/takeover"
KEYS = [b"k/%05d" % i for i in range(3000)]
BEFORE = Ring({"n1": 1, "n2": 1, "n3": 1})
AFTER = Ring({"n1": 1, "n2": 1, "n3": 1, "n4": 1})


@dataclass
class EtcdCluster:
    base: Path
    etcd: list[Proc]
    nodes: list[Proc]
    routers: list[Proc]

    def node(self, node_id: str) -> Proc:
        return next(n for n in self.nodes if n.name == node_id)

    def stop(self) -> None:
        for proc in [*self.routers, *self.nodes, *self.etcd]:
            proc.stop()

    def logs(self) -> str:
        procs = [*self.routers, *self.nodes, *self.etcd]
        return "\n".join(f"===== {p.name} =====\n{p.log()[-8000:]}" for p in procs)


@pytest.fixture
def cluster(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[EtcdCluster]:
    nodes = [shardd_proc(tmp_path, f"n{i}") for i in range(1, 5)]
    running = EtcdCluster(tmp_path, etcd_members(tmp_path), nodes, [])
    with stopped_after(running, request):
        start_etcd(running.etcd)
        for node in nodes:
            node.start(wait=False)
        for node in nodes:
            wait_serving(node.address)
        config = write_cluster_toml(tmp_path / "cluster.toml", nodes[:3])
        config.write_text(
            config.read_text()
            + "\n[rebalance]\nmax_records_per_s = 1500\n\n[repair]\ninterval_s = 0\n"
        )
        url = f"etcd://{running.etcd[0].address}{PREFIX}"
        for name in ("r1", "r2"):
            router = router_proc(tmp_path, config, name, extra=["--topology", url])
            running.routers.append(router.start())
        with Client(running.routers[1].address) as client:
            client.put_many({key: b"v" for key in KEYS})
        yield running


def _admin(router: Proc) -> admin_pb2_grpc.AdminStub:
    return admin_pb2_grpc.AdminStub(grpc.insecure_channel(router.address))  # type: ignore[no-untyped-call]


def _stored(cluster: EtcdCluster) -> Topology:
    text = etcdctl(cluster.etcd, "get", f"{PREFIX}/topology", "--print-value-only")
    return parse_topology(text, source="etcd")


def _wait(what: str, ready: object, timeout_s: float = 40.0) -> float:
    deadline = time.monotonic() + timeout_s
    while not ready():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"{what} not within {timeout_s} s"
        time.sleep(0.05)
    return time.monotonic()


def _streaming(router: Proc) -> bool:
    moves = _admin(router).GetMoves(admin_pb2.GetMovesRequest(), timeout=5)
    return moves.HasField("current") and moves.current.state == admin_pb2.MOVE_STREAMING


def _held(node: Proc, keys: list[bytes]) -> set[bytes]:
    with grpc.insecure_channel(node.address) as channel:
        stub = replica_pb2_grpc.ReplicaStub(channel)  # type: ignore[no-untyped-call]
        held: set[bytes] = set()
        for i in range(0, len(keys), 1000):
            reply = stub.Read(replica_pb2.ReadRequest(keys=keys[i : i + 1000]), timeout=10)
            held |= {r.key for r in reply.records if r.version}
    return held


def _check_placement(cluster: EtcdCluster) -> None:
    """Every key readable, on each of its owners, and on no other node."""
    with Client(cluster.routers[1].address, timeout=10) as client:
        assert len(client.get_many(KEYS)) == len(KEYS), "keys unreadable after the move"
    for node in cluster.nodes:
        held = _held(node, KEYS)
        owned = {k for k in KEYS if node.name in AFTER.preference_list(k, 3)}
        assert held == owned, (
            f"{node.name}: {len(owned - held)} owned keys missing,"
            f" {len(held - owned)} keys held it does not own"
        )


def _add_n4(cluster: EtcdCluster) -> None:
    n4 = cluster.node("n4")
    request = admin_pb2.AddNodeRequest(id="n4", address=n4.address)
    _admin(cluster.routers[0]).AddNode(request, timeout=30)
    _wait("streaming", lambda: _streaming(cluster.routers[0]))


@pytest.mark.timeout(120)
def test_a_paused_driver_is_taken_over_and_can_do_nothing_after(cluster: EtcdCluster) -> None:
    r1, r2 = cluster.routers
    _add_n4(cluster)
    r1.signal(signal.SIGSTOP)
    paused = time.monotonic()
    try:
        taken = _wait("r2 driving", lambda: (m := _stored(cluster).move) and m.driver == "r2")
        done = _wait("the move's end", lambda: _stored(cluster).move is None)
    finally:
        r1.signal(signal.SIGCONT)
    took, ended = taken - paused, done - paused
    print(f"paused driver: taken over {took:.1f} s after the pause, done {ended:.1f} s")
    time.sleep(2.0)  # r1's move task runs again: every step it tries is refused
    moves = _admin(r1).GetMoves(admin_pb2.GetMovesRequest(), timeout=5)
    assert moves.current.state == admin_pb2.MOVE_FAILED, moves  # it stopped, acting on nothing
    print(f"the resumed driver stopped: {moves.current.error}")
    final = _stored(cluster)
    assert final.move is None and [n.id for n in final.nodes] == ["n1", "n2", "n3", "n4"]
    epochs = {
        _admin(r).GetTopology(admin_pb2.GetTopologyRequest(), timeout=5).epoch for r in (r1, r2)
    }
    assert epochs == {final.epoch}, f"routers serve {epochs}, the store {final.epoch}"
    _check_placement(cluster)


@pytest.mark.timeout(120)
def test_a_driver_killed_between_switch_and_drop_is_finished_by_another(
    cluster: EtcdCluster,
) -> None:
    r1 = cluster.routers[0]
    given = [
        k
        for k in KEYS
        if "n1" in BEFORE.preference_list(k, 3) and "n1" not in AFTER.preference_list(k, 3)
    ]
    assert given, "n1 gives nothing away: the test proves nothing"
    _add_n4(cluster)
    with CommitHold(cluster.base / "n1"):  # n1 can neither take the switch's fence nor drop
        _wait("the switch", lambda: (m := _stored(cluster).move) and m.phase == "drop")
        r1.kill()
        killed = time.monotonic()
    assert _held(cluster.node("n1"), given) == set(given), "n1 dropped before r1 died"
    done = _wait("the move's end", lambda: _stored(cluster).move is None)
    print(f"killed driver in its drop phase: move done {done - killed:.1f} s after the kill")
    _check_placement(cluster)
