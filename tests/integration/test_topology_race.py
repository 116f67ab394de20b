"""Two routers asked at the same instant to add two different nodes: exactly one change goes
ahead, the other is FAILED_PRECONDITION naming the winning move, and both routers end on
the same epoch and ring, as stored (real processes: 5 nodes, n1..n3 in the ring, two
routers; on one cluster.toml, and on one etcd; issue 15 item 2).

Before the compare-and-swap both calls were answered OK at epoch 2 (add-n4@1 through r1,
add-n5@1 through r2): the file was written without a check, r1 ignored the file at its own
epoch with other content, the two routers served different rings, and r2's accepted move
failed later when r1's switch overwrote it."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
from etcd_harness import etcd_members, etcdctl, start_etcd
from harness import Cluster, Proc, router_proc, shardd_proc, start_all, write_cluster_toml
from shardkv.router.membership.topology import (
    NodeConfig,
    Topology,
    load_topology,
    parse_topology,
)
from shardkv.router.membership.topology_store import dump_topology
from shardkv.v1 import admin_pb2, admin_pb2_grpc

EXTRA_TOML = "\n[rebalance]\nsettle_ms = 300\n\n[repair]\ninterval_s = 0\n"
PREFIX = "/shardkv/race"
# Where the topology is stored, per test parameter: the etcd members (none for the file).
ETCD: dict[Path, list[Proc]] = {}


@pytest.fixture(params=["file", "etcd"])
def cluster(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    nodes = [shardd_proc(tmp_path, f"n{i}") for i in range(1, 6)]
    config = write_cluster_toml(tmp_path / "cluster.toml", nodes[:3])
    text = config.read_text().replace("[timeouts]\n", "[timeouts]\nwatch_interval_ms = 100\n")
    config.write_text(text + EXTRA_TOML)
    members = etcd_members(tmp_path) if request.param == "etcd" else []
    extra = [f"--topology=etcd://{members[0].address}{PREFIX}"] if members else []
    routers = [router_proc(tmp_path, config, f"r{i}", extra=extra) for i in (1, 2)]
    running = Cluster(tmp_path, nodes, routers, config)
    ETCD[tmp_path] = members
    try:
        start_etcd(members)
        start_all(nodes, routers)
        yield running
    except BaseException:
        print(running.logs(), *(m.log()[-5000:] for m in members))
        raise
    finally:
        running.stop()
        for member in members:
            member.stop()
        del ETCD[tmp_path]


def stored(cluster: Cluster) -> Topology:
    """The topology as its store holds it (cluster.toml, or the etcd key read by etcdctl)."""
    members = ETCD[cluster.base]
    if not members:
        return load_topology(cluster.config)
    text = etcdctl(members, "get", f"{PREFIX}/topology", "--print-value-only")
    return parse_topology(text, source="etcd")


def race_add(cluster: Cluster) -> dict[str, admin_pb2.Move | grpc.RpcError]:
    """AddNode n4 through r1 and n5 through r2, released together by a barrier."""
    asks = {"n4": cluster.routers[0], "n5": cluster.routers[1]}
    barrier = threading.Barrier(len(asks))
    outcome: dict[str, admin_pb2.Move | grpc.RpcError] = {}

    def ask(node_id: str) -> None:
        with grpc.insecure_channel(asks[node_id].address) as channel:
            stub = admin_pb2_grpc.AdminStub(channel)
            request = admin_pb2.AddNodeRequest(id=node_id, address=cluster.node(node_id).address)
            stub.GetTopology(admin_pb2.GetTopologyRequest(), timeout=5)  # channel ready
            barrier.wait(10)
            try:
                outcome[node_id] = stub.AddNode(request, timeout=20)
            except grpc.RpcError as err:
                outcome[node_id] = err

    threads = [threading.Thread(target=ask, args=(node_id,)) for node_id in asks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return outcome


def topologies(cluster: Cluster) -> list[tuple[int, list[tuple[str, str]]]]:
    """(epoch, [(id, membership)]) as each router serves it."""
    seen = []
    for router in cluster.routers:
        with grpc.insecure_channel(router.address) as channel:
            reply = admin_pb2_grpc.AdminStub(channel).GetTopology(
                admin_pb2.GetTopologyRequest(), timeout=5
            )
        seen.append((reply.epoch, sorted((n.id, n.membership) for n in reply.nodes)))
    return seen


@pytest.mark.timeout(90)
def test_two_routers_racing_add_node_exactly_one_wins(cluster: Cluster) -> None:
    outcome = race_add(cluster)
    won = {k: v for k, v in outcome.items() if isinstance(v, admin_pb2.Move)}
    lost = {k: v for k, v in outcome.items() if isinstance(v, grpc.RpcError)}
    assert len(won) == 1, f"both or neither went ahead: {outcome}"
    ((winner, move),) = won.items()
    ((loser, error),) = lost.items()
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, error
    assert move.id in (error.details() or ""), (move.id, error.details())
    print(f"{winner} won ({move.id}); {loser}: {error.code().name}: {error.details()}")

    # The winning move finishes; both routers serve its final ring, as the file has it.
    deadline = time.monotonic() + 40
    while True:
        now = stored(cluster)
        served = topologies(cluster)
        expected = (now.epoch, sorted((n.id, n.state) for n in now.nodes))
        if now.move is None and all(s == expected for s in served):
            break
        assert time.monotonic() < deadline, f"routers never agreed: stored {expected}, {served}"
        time.sleep(0.2)
    assert {n.id for n in now.nodes} == {"n1", "n2", "n3", winner}


@pytest.mark.timeout(90)
def test_a_topology_at_the_served_epoch_with_other_content_is_refused(cluster: Cluster) -> None:
    # Written outside shardkv (by hand) at the epoch the routers serve, with n4 instead of n3.
    now = stored(cluster)
    n4 = NodeConfig("n4", cluster.node("n4").address)
    edited = replace(now, nodes=(*now.nodes[:2], n4))
    members = ETCD[cluster.base]
    if members:
        etcdctl(members, "put", f"{PREFIX}/topology", dump_topology(edited))
    else:
        cluster.config.write_text(dump_topology(edited))
    deadline = time.monotonic() + 10
    while not all("with other content than this router serves" in r.log() for r in cluster.routers):
        assert time.monotonic() < deadline, "a router did not complain"
        time.sleep(0.1)
    assert topologies(cluster) == [(1, [("n1", "member"), ("n2", "member"), ("n3", "member")])] * 2
    with grpc.insecure_channel(cluster.routers[0].address) as channel:
        request = admin_pb2.AddNodeRequest(id="n5", address=cluster.node("n5").address)
        with pytest.raises(grpc.RpcError) as refused:
            admin_pb2_grpc.AdminStub(channel).AddNode(request, timeout=20)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "written outside shardkv" in (refused.value.details() or "")
    assert stored(cluster) == edited


@pytest.mark.timeout(90)
def test_a_change_the_store_refused_leaves_other_routers_free_to_move(cluster: Cluster) -> None:
    # r1's AddNode loses its compare-and-swap: the store holds a hand-edited topology.
    now = stored(cluster)
    n4 = NodeConfig("n4", cluster.node("n4").address)
    members = ETCD[cluster.base]

    def store(topology: Topology) -> None:
        if members:
            etcdctl(members, "put", f"{PREFIX}/topology", dump_topology(topology))
        else:
            cluster.config.write_text(dump_topology(topology))

    store(replace(now, nodes=(*now.nodes[:2], n4)))
    deadline = time.monotonic() + 10
    while "with other content than this router serves" not in cluster.routers[0].log():
        assert time.monotonic() < deadline, "r1 did not complain"
        time.sleep(0.1)
    request = admin_pb2.AddNodeRequest(id="n5", address=cluster.node("n5").address)
    with grpc.insecure_channel(cluster.routers[0].address) as channel:
        with pytest.raises(grpc.RpcError) as refused:
            admin_pb2_grpc.AdminStub(channel).AddNode(request, timeout=20)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    # The operator puts the topology back; the change goes ahead through another router.
    store(now)
    with grpc.insecure_channel(cluster.routers[1].address) as channel:
        try:
            move = admin_pb2_grpc.AdminStub(channel).AddNode(request, timeout=20)
        except grpc.RpcError as err:
            pytest.fail(f"r2 refused the change r1 gave up: {err.code().name}: {err.details()}")
    print(f"r1: {refused.value.details()}; then r2 began {move.id}")
