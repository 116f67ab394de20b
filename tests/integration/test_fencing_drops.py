"""A move's drops survive its driver, and an aborted move takes back what it sent.

One cluster for the module: three nodes in the ring (N=2, R=1, W=2), n4 and n5 to add,
two routers, a store of 3000 keys and moves paced at 2000 records a second, so a test can
act while a move streams. The tests run in order:

- The driver is SIGKILLed between the switch and the drop (a giver's commits are held,
  so the drop cannot run before): the stored topology keeps the move in its drop phase, the
  giver still holds what it gave away, and the restarted driver finishes the move, drops
  included.
- The driver is SIGKILLed while it streams to the joining n5, and the join is aborted
  through the other router: n5 ends empty (before, it kept what it had received).
- n5 joins while n2 is stopped (DOWN, so no fence reaches it); once n2 is back, the router
  fences it at the epoch in force (when it checks n2's directory, and before the repair
  pass n2's return starts purges there), and a write routed under the epoch before the
  move is refused there.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator

import grpc
import pytest
from faults.cluster import wait_node_state
from faults.test_overload import CommitHold
from harness import (
    Cluster,
    Proc,
    router_proc,
    shardd_proc,
    start_all,
    write_cluster_toml,
)
from shardkv.client import Client
from shardkv.router.membership.topology import load_topology
from shardkv.router.placement.ring import Ring
from shardkv.v1 import admin_pb2, admin_pb2_grpc, replica_pb2, replica_pb2_grpc

KEYS = [b"k/%05d" % i for i in range(3000)]
WHOLE = [replica_pb2.TokenRange(start=0, end=1 << 32)]


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Cluster]:
    tmp_path = tmp_path_factory.mktemp("drops")
    nodes = [shardd_proc(tmp_path, f"n{i}") for i in range(1, 6)]
    config = write_cluster_toml(
        tmp_path / "cluster.toml", nodes[:3], replication=2, read_quorum=1, write_quorum=2
    )
    config.write_text(
        config.read_text() + "\n[rebalance]\nmax_records_per_s = 2000\n\n[repair]\ninterval_s = 0\n"
    )
    routers = [router_proc(tmp_path, config, "r1"), router_proc(tmp_path, config, "r2")]
    running = Cluster(tmp_path, nodes, routers, config)
    failures = request.session.testsfailed
    try:
        start_all(nodes, routers)
        with Client(running.router.address) as client:
            client.put_many({key: b"v" for key in KEYS})
        yield running
    finally:
        running.stop()
        if request.session.testsfailed != failures:
            print(running.logs())


def _admin(router: Proc) -> admin_pb2_grpc.AdminStub:
    return admin_pb2_grpc.AdminStub(grpc.insecure_channel(router.address))  # type: ignore[no-untyped-call]


def _wait(what: str, ready: object, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"{what} not within {timeout_s} s"
        time.sleep(0.02)


def _streaming(router: Proc) -> bool:
    moves = _admin(router).GetMoves(admin_pb2.GetMovesRequest(), timeout=5)
    return moves.HasField("current") and moves.current.state == admin_pb2.MOVE_STREAMING


def _held(node: Proc, keys: list[bytes]) -> list[bytes]:
    with grpc.insecure_channel(node.address) as channel:
        stub = replica_pb2_grpc.ReplicaStub(channel)  # type: ignore[no-untyped-call]
        held = []
        for i in range(0, len(keys), 1000):
            reply = stub.Read(replica_pb2.ReadRequest(keys=keys[i : i + 1000]), timeout=10)
            held += [r.key for r in reply.records if r.version]
    return held


def _count(node: Proc) -> int:
    with grpc.insecure_channel(node.address) as channel:
        stub = replica_pb2_grpc.ReplicaStub(channel)  # type: ignore[no-untyped-call]
        request = replica_pb2.TokenDigestsRequest(ranges=WHOLE, count_only=True)
        return int(stub.TokenDigests(request, timeout=30).digests[0].count)


@pytest.mark.timeout(120)
def test_a_restarted_driver_finishes_the_drops_of_its_switched_move(cluster: Cluster) -> None:
    r1, n1, n4 = cluster.routers[0], cluster.node("n1"), cluster.node("n4")
    before = Ring({"n1": 1, "n2": 1, "n3": 1})
    after = Ring({"n1": 1, "n2": 1, "n3": 1, "n4": 1})
    given = [k for k in KEYS if "n1" in before.preference_list(k, 2)]
    given = [k for k in given if "n1" not in after.preference_list(k, 2)][:1000]
    assert given, "n1 gives nothing away: the test proves nothing"
    _admin(r1).AddNode(admin_pb2.AddNodeRequest(id="n4", address=n4.address), timeout=30)
    _wait("streaming", lambda: _streaming(r1))
    with CommitHold(cluster.base / "n1"):  # n1 can neither take the switch's fence nor drop
        _wait("the switch", lambda: 'phase = "drop"' in cluster.config.read_text())
        r1.kill()
    topology = load_topology(cluster.config)
    assert topology.move is not None and topology.move.phase == "drop", topology
    assert _held(n1, given) == given, "n1 dropped before the driver died: proves nothing"

    r1.start()
    _wait("the move's end", lambda: load_topology(cluster.config).move is None, 60)
    assert not _held(n1, given), "n1 still holds ranges it gave away"
    with Client(r1.address, timeout=10) as client:
        got = client.get_many(KEYS)
    assert len(got) == len(KEYS), f"{len(KEYS) - len(got)} keys unreadable after the move"
    for node in cluster.nodes:
        owned = [k for k in KEYS if node.name in after.preference_list(k, 2)]
        assert len(_held(node, owned)) == len(owned), f"{node.name} lacks keys it owns"


@pytest.mark.timeout(120)
def test_an_aborted_join_purges_what_the_joining_node_received(cluster: Cluster) -> None:
    r1, r2, n5 = cluster.routers[0], cluster.routers[1], cluster.node("n5")
    _admin(r1).AddNode(admin_pb2.AddNodeRequest(id="n5", address=n5.address), timeout=30)
    _wait("streaming", lambda: _streaming(r1))
    _wait("n5 receiving", lambda: _count(n5) > 200)
    r1.kill()  # the move stops mid-stream, driven by nobody
    received = _count(n5)
    abort = _admin(r2).RemoveNode(admin_pb2.RemoveNodeRequest(id="n5"), timeout=60)
    assert abort.state == admin_pb2.MOVE_DONE and abort.id.startswith("abort-"), abort
    assert load_topology(cluster.config).move is None
    assert _count(n5) == 0, f"n5 kept {_count(n5)} of the {received} records it received"
    with Client(r2.address, timeout=10) as client:
        got = client.get_many(KEYS)
    assert len(got) == len(KEYS), f"{len(KEYS) - len(got)} keys unreadable after the abort"


@pytest.mark.timeout(120)
def test_a_node_down_while_a_move_fenced_is_fenced_when_it_returns(cluster: Cluster) -> None:
    r2, n2, n5 = cluster.routers[1], cluster.node("n2"), cluster.node("n5")
    before = load_topology(cluster.config).epoch
    n2.signal(signal.SIGSTOP)
    try:
        wait_node_state(r2.address, "n2", admin_pb2.DOWN)
        _admin(r2).AddNode(admin_pb2.AddNodeRequest(id="n5", address=n5.address), timeout=30)
        _wait("the move's end", lambda: load_topology(cluster.config).move is None, 60)
    finally:
        n2.signal(signal.SIGCONT)
    epoch = load_topology(cluster.config).epoch
    _wait(f"n2 fenced at epoch {epoch}", lambda: _fence_of(n2) >= epoch)
    with grpc.insecure_channel(n2.address) as channel:
        stub = replica_pb2_grpc.ReplicaStub(channel)  # type: ignore[no-untyped-call]
        record = replica_pb2.Record(key=b"late", value=b"v", version=1 << 40, writer=9)
        with pytest.raises(grpc.RpcError) as refused:
            stub.Apply(
                replica_pb2.ApplyRequest(records=[record]),
                metadata=[("shardkv-epoch", str(before))],
                timeout=10,
            )
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def _fence_of(node: Proc) -> int:
    with grpc.insecure_channel(node.address) as channel:
        stub = replica_pb2_grpc.ReplicaStub(channel)  # type: ignore[no-untyped-call]
        return int(stub.Identity(replica_pb2.IdentityRequest(), timeout=10).fence_epoch)
