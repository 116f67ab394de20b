"""A move survives its router's restart, a move stopped by a dead target is aborted cleanly,
and a giver that hangs mid-stream is replaced by the surviving owners (real processes: 3
nodes + 2 spares, N=3, one router)."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from harness import Cluster, router_proc, shardd_proc, wait_serving, write_cluster_toml
from shardkv.client import Client
from shardkv.client.errors import FailedPrecondition
from shardkv.router.membership.topology import JOINING, load_topology
from shardkv.v1 import admin_pb2, admin_pb2_grpc

KEYS = {b"resume/%04d" % i: b"r%d" % i for i in range(3000)}
# Enough that a giver's part outlasts what the router reads ahead of its applies.
MANY = {b"paced/%05d" % i: b"p" * 4096 for i in range(20_000)}


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    yield from started(tmp_path, "settle_ms = 1500", KEYS)


@pytest.fixture
def paced(tmp_path: Path) -> Iterator[Cluster]:
    """Moves stream 2,000 records a second: a move of these keys takes seconds."""
    yield from started(tmp_path, "max_records_per_s = 2000", MANY)


def started(tmp_path: Path, rebalance: str, keys: dict[bytes, bytes]) -> Iterator[Cluster]:
    nodes = [shardd_proc(tmp_path, f"n{i}") for i in range(1, 6)]
    config = write_cluster_toml(tmp_path / "cluster.toml", nodes[:3])
    with config.open("a") as out:
        out.write(f"\n[rebalance]\n{rebalance}\n\n[repair]\ninterval_s = 0\n")
    running = Cluster(tmp_path, nodes, [router_proc(tmp_path, config)], config)
    try:
        for node in nodes:
            node.start(wait=False)
        for node in nodes:
            wait_serving(node.address)
        running.router.start()
        with Client(running.router.address) as client:
            client.put_many(keys)
        yield running
    except BaseException:
        print(running.logs())
        raise
    finally:
        running.stop()


def admin(cluster: Cluster) -> admin_pb2_grpc.AdminStub:
    return admin_pb2_grpc.AdminStub(grpc.insecure_channel(cluster.router.address))


def wait_move(cluster: Cluster, move_id: str, state: int, timeout_s: float = 30) -> admin_pb2.Move:
    deadline = time.monotonic() + timeout_s
    while True:
        moves = admin(cluster).GetMoves(admin_pb2.GetMovesRequest(), timeout=5)
        found = [*moves.history, *([moves.current] if moves.HasField("current") else [])]
        match = [m for m in found if m.id == move_id and m.state == state]
        if match:
            return match[0]
        assert time.monotonic() < deadline, f"{move_id} never reached {state}: {found}"
        time.sleep(0.1)


@pytest.mark.timeout(90)
def test_a_move_resumes_after_its_router_restarts(cluster: Cluster) -> None:
    n4 = cluster.node("n4").address
    started = admin(cluster).AddNode(admin_pb2.AddNodeRequest(id="n4", address=n4), timeout=10)
    cluster.router.stop()  # before the move is done
    topology = load_topology(cluster.config)
    assert topology.epoch == 2 and topology.move is not None
    assert topology.node("n4").state == JOINING
    cluster.router.start()
    wait_move(cluster, started.id, admin_pb2.MOVE_DONE)
    topology = load_topology(cluster.config)
    assert topology.epoch == 4 and topology.move is None  # transition, switch, done
    with Client(cluster.router.address) as client:
        assert client.get_many(list(KEYS)) == KEYS


@pytest.mark.timeout(90)
def test_a_failed_move_keeps_the_data_and_can_be_aborted(cluster: Cluster) -> None:
    n5 = cluster.node("n5").address
    started = admin(cluster).AddNode(admin_pb2.AddNodeRequest(id="n5", address=n5), timeout=10)
    cluster.node("n5").kill()  # the target dies before the stream starts
    failed = wait_move(cluster, started.id, admin_pb2.MOVE_FAILED)
    assert "n5" in failed.error
    # The transition is still in force: everything reads, through the old owners.
    with Client(cluster.router.address) as client:
        assert client.get_many(list(KEYS)) == KEYS
        with pytest.raises(FailedPrecondition, match="being added or removed"):
            client.repair()
    aborted = admin(cluster).RemoveNode(admin_pb2.RemoveNodeRequest(id="n5"), timeout=10)
    assert aborted.state == admin_pb2.MOVE_DONE and aborted.id == f"abort-{started.id}"
    topology = load_topology(cluster.config)
    assert topology.move is None and [n.id for n in topology.nodes] == ["n1", "n2", "n3"]
    with Client(cluster.router.address) as client:
        assert client.get_many(list(KEYS)) == KEYS


@pytest.mark.timeout(120)
def test_a_giver_that_hangs_mid_stream_is_replaced_by_the_surviving_owners(
    paced: Cluster,
) -> None:
    n4 = paced.node("n4").address
    started = admin(paced).AddNode(admin_pb2.AddNodeRequest(id="n4", address=n4), timeout=10)
    time.sleep(1.0)  # streaming: about 15,000 records at 2,000 a second
    hung = paced.node("n1")
    hung.signal(signal.SIGSTOP)
    try:
        done = wait_move(paced, started.id, admin_pb2.MOVE_DONE, timeout_s=60)
    finally:
        hung.signal(signal.SIGCONT)
    print(f"move done with n1 stopped mid-stream: {done.keys_moved} records moved")
    with Client(paced.router.address) as client:
        assert client.get_many(list(MANY)) == MANY
