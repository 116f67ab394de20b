"""A node's weight cannot collapse replication (security issue 14, item 2).

The attack, a careless operator's: `shardctl node add --weight 100000` was accepted. Ketama
gives a node vnodes * n * weight // (sum of weights) groups of points, so beside three
nodes of weight 1 the new node took every point of the ring; the move handed it every key
and the old owners dropped their copies, leaving each key on one node (reads and writes at
quorum UNAVAILABLE). Now weights are bounded (1..MAX_WEIGHT, which guarantees every node
ring points), and every topology is checked before it is used: cluster.toml as a router
reads it, AddNode and RemoveNode before the move starts, and each step of a move before it
is written. The refusal names the node, its weight and the rule broken.

Every process runs for real: three nodes in the ring (N=3, R=W=2), a fourth running and
empty, one router.
"""

from __future__ import annotations

import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from harness import BIN, Cluster, Proc, router_proc, shardd_proc, wait_serving, write_cluster_toml
from shardkv.client import Client
from shardkv.router.membership.topology import load_topology
from shardkv.router.placement.ring import MAX_WEIGHT
from shardkv.v1 import admin_pb2, admin_pb2_grpc, replica_pb2, replica_pb2_grpc

KEYS = {b"w/%04d" % i: b"v%d" % i for i in range(600)}
HUGE = 100_000


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    base = tmp_path_factory.mktemp("weights")
    nodes = [shardd_proc(base, f"n{i}") for i in range(1, 5)]
    config = write_cluster_toml(base / "cluster.toml", nodes[:3])
    config.write_text(
        config.read_text().replace("[timeouts]\n", "[timeouts]\nwatch_interval_ms = 100\n")
        + "\n[rebalance]\nsettle_ms = 300\n\n[repair]\ninterval_s = 0\n"
    )
    running = Cluster(base, nodes, [router_proc(base, config)], config)
    try:
        for node in nodes:
            node.start(wait=False)
        for node in nodes:
            wait_serving(node.address)
        running.router.start()
        with Client(running.router.address) as client:
            client.put_many(KEYS)
        # W=2 answers before the third owner's commit: wait for every copy.
        deadline = time.monotonic() + 10
        while copies(running) != {3: len(KEYS)}:
            assert time.monotonic() < deadline, f"copies after loading: {copies(running)}"
            time.sleep(0.05)
        yield running
    except BaseException:
        print(running.logs())
        raise
    finally:
        running.stop()


def copies(cluster: Cluster) -> Counter[int]:
    """How many nodes hold each key (asked directly): {copies: keys}."""
    held: Counter[bytes] = Counter()
    for node in cluster.nodes:
        with grpc.insecure_channel(node.address) as channel:
            reply = replica_pb2_grpc.ReplicaStub(channel).Read(
                replica_pb2.ReadRequest(keys=list(KEYS)), timeout=10
            )
        held.update(r.key for r in reply.records if r.version)
    return Counter(held[key] for key in KEYS)


def wait_for_no_move(admin: admin_pb2_grpc.AdminStub, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while admin.GetMoves(admin_pb2.GetMovesRequest(), timeout=5).HasField("current"):
        assert time.monotonic() < deadline, "the move did not finish"
        time.sleep(0.1)


def test_a_huge_weight_is_refused_and_every_key_keeps_n_copies(cluster: Cluster) -> None:
    """shardctl node add --weight 100000, then the same through Admin/AddNode: both refused
    (exit 2 / INVALID_ARGUMENT) naming n4, the weight and the maximum; nothing moves, every
    key keeps its three copies and reads and writes go on."""
    n4 = cluster.node("n4")
    command = [str(BIN / "shardctl"), "--addr", cluster.router.address, "node", "add"]
    command += ["--id", "n4", "--addr", n4.address, "--weight", str(HUGE)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    with grpc.insecure_channel(cluster.router.address) as channel:
        admin = admin_pb2_grpc.AdminStub(channel)
        if done.returncode == 0:  # what happened before the fix, measured for the record
            wait_for_no_move(admin)
            pytest.fail(
                f"weight {HUGE} accepted ({done.stdout.strip()}); after the move,"
                f" keys by number of copies: {dict(copies(cluster))}"
            )
        assert done.returncode == 2, (done.returncode, done.stderr)
        for part in ("'n4'", f"weight {HUGE}", f"1..{MAX_WEIGHT}"):
            assert part in done.stderr, done.stderr
        with pytest.raises(grpc.RpcError) as refused:
            admin.AddNode(
                admin_pb2.AddNodeRequest(id="n4", address=n4.address, weight=HUGE), timeout=10
            )
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert f"weight {HUGE}" in (refused.value.details() or "")
        topology = admin.GetTopology(admin_pb2.GetTopologyRequest(), timeout=5)
        assert (topology.epoch, [n.id for n in topology.nodes]) == (1, ["n1", "n2", "n3"])
    assert copies(cluster) == {3: len(KEYS)}
    with Client(cluster.router.address) as client:
        client.put(b"w/after", b"ok")
        assert client.get_many(list(KEYS)) == KEYS


def test_the_largest_weight_allowed_still_leaves_every_node_a_share(cluster: Cluster) -> None:
    """n4 joins with weight MAX_WEIGHT: the move completes, n4 holds most primaries, and the
    three nodes of weight 1 keep ring points, so every key still has N = 3 copies."""
    with Client(cluster.router.address, timeout=60) as client:
        move = client.add_node("n4", cluster.node("n4").address, weight=MAX_WEIGHT)
    with grpc.insecure_channel(cluster.router.address) as channel:
        wait_for_no_move(admin_pb2_grpc.AdminStub(channel))
    topology = load_topology(cluster.config)
    assert topology.move is None and [n.weight for n in topology.nodes] == [1, 1, 1, MAX_WEIGHT]
    assert copies(cluster) == {3: len(KEYS)}, move


def _router_start(tmp_path: Path, weights: list[int]) -> subprocess.CompletedProcess[str]:
    """Starts a router on a cluster.toml of four nodes with weights; returns how it ended
    (it never starts serving with a bad file, so it must exit by itself)."""
    nodes = [shardd_proc(tmp_path, f"n{i}") for i in range(1, 5)]  # never started
    config = write_cluster_toml(tmp_path / "cluster.toml", nodes, weights=weights)
    router: Proc = router_proc(tmp_path, config)
    try:
        return subprocess.run(router.argv, capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the router served a cluster.toml with weights {weights}")


@pytest.mark.parametrize(
    ("weights", "named"),
    [
        ([1, 1, 1, HUGE], ["'n4'", f"weight {HUGE}", f"maximum of {MAX_WEIGHT}"]),
        ([1, 1, 1, MAX_WEIGHT + 1], ["'n4'", f"weight {MAX_WEIGHT + 1}", "maximum"]),
    ],
)
def test_a_cluster_toml_with_a_weight_too_large_is_refused_at_start(
    tmp_path: Path, weights: list[int], named: list[str]
) -> None:
    ended = _router_start(tmp_path, weights)
    assert ended.returncode != 0
    for part in named:
        assert part in ended.stderr, ended.stderr
