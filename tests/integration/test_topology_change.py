"""Adding and removing nodes online, under a continuous write load, on real processes.

One cluster for the module (five shardd, n1..n3 in the ring at first, N=3, R=W=2, two
routers; changes are made through r1, writes go through both). The tests run in order and
each starts from the topology the previous one left: add n4 (through shardctl), restart
r1, remove n2, refuse concurrent and duplicate changes while n5 joins, remove n5 after
killing it.

"Under load" is shown, not assumed: a writer records every put in a History (acknowledged,
or failed with its error, outcome unknown), and each change must see writes acknowledged
inside the move (begun after the AddNode/RemoveNode call, acknowledged before the move was
DONE). Errors are allowed, lost acknowledged writes are not: the history checker
(faults/checker.py) judges every put against the record the key's owners agree on after the
move.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from faults.checker import check
from faults.move_load import Writer, agreed_records, move_window, writes_inside
from faults.verdict import Verdict
from harness import BIN, Cluster, Proc, router_proc, shardd_proc, start_all, write_cluster_toml
from shardkv.client import Client
from shardkv.router.membership.topology import load_topology
from shardkv.router.placement.ring import Ring
from shardkv.v1 import admin_pb2, admin_pb2_grpc, replica_pb2, replica_pb2_grpc

PRELOAD = 6000
# Short settle delays keep the moves quick; they must exceed the routers' watch interval.
EXTRA_TOML = """
[rebalance]
settle_ms = 300

[repair]
interval_s = 0
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    base = tmp_path_factory.mktemp("topology")
    nodes = [shardd_proc(base, f"n{i}") for i in range(1, 6)]
    config = write_cluster_toml(base / "cluster.toml", nodes[:3])
    text = config.read_text().replace("[timeouts]\n", "[timeouts]\nwatch_interval_ms = 100\n")
    config.write_text(text + EXTRA_TOML)
    routers = [router_proc(base, config, "r1"), router_proc(base, config, "r2")]
    running = Cluster(base, nodes, routers, config)
    try:
        start_all(nodes, routers)
        with Client(running.router.address) as client:
            client.put_many({b"pre/%05d" % i: b"v%d" % i for i in range(PRELOAD)})
        yield running
    except BaseException:
        print(running.logs())
        raise
    finally:
        running.stop()


def check_writes(cluster: Cluster, writer: Writer) -> tuple[Verdict, dict[bytes, bytes]]:
    """Runs the history checker over the writer's puts against what the owners hold: an
    acknowledged put that is not there (or not with its version) is LOST, a value no put
    wrote is a PHANTOM. Returns the verdict and every put that landed (the acknowledged
    ones, and those whose outcome was unknown that did)."""
    ops = writer.history.ops
    ring, n = ring_of(cluster.config)
    finals = agreed_records(cluster, ring, n, sorted({op.key for op in ops}))
    verdict = check(ops, finals)
    assert not verdict.problems(), "\n".join(verdict.problems())
    return verdict, {key: final.value for key, final in finals.items() if final.version}


def under_load(label: str, writer: Writer, window: tuple[float, float], verdict: Verdict) -> int:
    """Prints what the writer did during the move; returns the writes acknowledged inside."""
    inside = writes_inside(writer, *window)
    errors = writer.errors()
    print(
        f"{label}: {inside} writes acknowledged inside the move"
        f" ({window[1] - window[0]:.2f} s from the call to MOVE_DONE); writer: {verdict.summary()}"
        f"; errors {len(errors)}{', first: ' + errors[0] if errors else ''}"
    )
    return inside


def routers(cluster: Cluster) -> str:
    """Both routers: the SDK spreads the writer's calls over them round robin."""
    return ",".join(router.address for router in cluster.routers)


def shardctl(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "shardctl"), "--addr", cluster.router.address, *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def admin(cluster: Cluster, router: int = 0) -> admin_pb2_grpc.AdminStub:
    address = cluster.routers[router].address
    return admin_pb2_grpc.AdminStub(grpc.insecure_channel(address))


def ring_of(config: Path) -> tuple[Ring, int]:
    topology = load_topology(config)
    assert topology.move is None, "the topology is still in transition"
    return Ring({n.id: n.weight for n in topology.nodes}), topology.replication


def holdings(node: Proc, keys: list[bytes]) -> dict[bytes, replica_pb2.Record]:
    """What one node holds of keys (asked directly, bypassing the router)."""
    with grpc.insecure_channel(node.address) as channel:
        stub = replica_pb2_grpc.ReplicaStub(channel)
        found: dict[bytes, replica_pb2.Record] = {}
        for offset in range(0, len(keys), 1000):
            reply = stub.Read(
                replica_pb2.ReadRequest(keys=keys[offset : offset + 1000]), timeout=10
            )
            found.update((r.key, r) for r in reply.records if r.version)
        return found


def check_placement(cluster: Cluster, expected: dict[bytes, bytes]) -> Ring:
    """Every key is readable and held by every node of its preference list."""
    with Client(cluster.router.address, timeout=10) as client:
        got = client.get_many(list(expected))
    missing = [k for k, v in expected.items() if got.get(k) != v]
    assert not missing, f"{len(missing)} acknowledged keys unreadable, e.g. {missing[:3]}"
    ring, n = ring_of(cluster.config)
    keys = list(expected)
    for node_id in ring.nodes:
        held = holdings(cluster.node(node_id), keys)
        owned = [k for k in keys if node_id in ring.preference_list(k, n)]
        lacking = [k for k in owned if held.get(k) is None or held[k].value != expected[k]]
        assert not lacking, f"{node_id} lacks {len(lacking)} of its {len(owned)} keys"
    return ring


def last_move(cluster: Cluster) -> admin_pb2.Move:
    return admin(cluster).GetMoves(admin_pb2.GetMovesRequest(), timeout=5).history[-1]


# Every key acknowledged so far, by any test of the module (the store holds them all).
WRITTEN: dict[bytes, bytes] = {b"pre/%05d" % i: b"v%d" % i for i in range(PRELOAD)}


def preload() -> dict[bytes, bytes]:
    return {b"pre/%05d" % i: b"v%d" % i for i in range(PRELOAD)}


def moved_keys(old: Ring, new: Ring, n: int) -> int:
    """How many stored keys changed preference list: the ideal number of records to move."""
    return sum(1 for k in WRITTEN if old.preference_list(k, n) != new.preference_list(k, n))


@pytest.mark.timeout(90)
def test_add_node_under_load(cluster: Cluster) -> None:
    old_ring, n = ring_of(cluster.config)
    writer = Writer(routers(cluster), "add")
    writer.start()
    time.sleep(0.5)
    called = time.monotonic()
    done = shardctl(cluster, "node", "add", "--id", "n4", "--addr", cluster.node("n4").address)
    returned = time.monotonic()
    time.sleep(0.5)
    acked = writer.finish()
    assert done.returncode == 0, done.stderr
    assert "add-n4@1: MOVE_DONE epoch 4" in done.stdout
    assert "MOVE_DONE [####" in done.stderr  # the progress shown while waiting
    listed = shardctl(cluster, "moves")
    assert listed.returncode == 0 and "add-n4@1: MOVE_DONE epoch 4;" in listed.stdout
    move = last_move(cluster)
    verdict, landed = check_writes(cluster, writer)
    inside = under_load("add n4", writer, move_window(move, called, returned), verdict)
    assert inside > 0, "no write was acknowledged while n4 was being added"
    assert len(acked) > 100

    attempted = len(writer.history.ops)
    new_ring = check_placement(cluster, WRITTEN | acked)
    ideal = moved_keys(old_ring, new_ring, n)
    WRITTEN.update(landed)
    # Only keys whose preference list changed move, once each (plus keys written meanwhile,
    # acknowledged or not: a put whose outcome is unknown may have been stored and moved).
    assert ideal <= move.keys_moved <= ideal + attempted
    print(
        f"add n4: {move.keys_moved} records moved of {PRELOAD * n} stored"
        f" ({move.keys_moved / (PRELOAD * n):.3f} of them; 1/n = 0.25), ideal {ideal}"
        f" (keys whose preference list changed), {len(acked)} writes acknowledged while the"
        f" writer ran, {inside} of them inside the move"
    )
    # The node pushed out of each changed preference list dropped its copy.
    for node_id in old_ring.nodes:
        held = holdings(cluster.node(node_id), list(preload()))
        stray = [k for k in held if node_id not in new_ring.preference_list(k, n)]
        assert not stray, f"{node_id} still holds {len(stray)} keys it gave away"


@pytest.mark.timeout(60)
def test_restarted_router_serves_the_new_topology(cluster: Cluster) -> None:
    before = admin(cluster).GetTopology(admin_pb2.GetTopologyRequest(), timeout=5)
    cluster.router.restart()
    after = admin(cluster).GetTopology(admin_pb2.GetTopologyRequest(), timeout=5)
    assert after.epoch == before.epoch == 4
    assert [node.id for node in after.nodes] == ["n1", "n2", "n3", "n4"]
    # The second router picked the change up from cluster.toml (it watches the epoch).
    other = admin(cluster, 1).GetTopology(admin_pb2.GetTopologyRequest(), timeout=5)
    assert (other.epoch, [n.id for n in other.nodes]) == (4, ["n1", "n2", "n3", "n4"])
    with Client(cluster.router.address) as client:
        assert client.get(b"pre/00042") == b"v42"


@pytest.mark.timeout(90)
def test_remove_node_under_load(cluster: Cluster) -> None:
    old_ring, n = ring_of(cluster.config)
    writer = Writer(routers(cluster), "remove")
    writer.start()
    time.sleep(0.5)
    called = time.monotonic()
    done = shardctl(cluster, "node", "remove", "--id", "n2")
    returned = time.monotonic()
    time.sleep(0.5)
    acked = writer.finish()
    assert done.returncode == 0, done.stderr
    assert "remove-n2@4: MOVE_DONE epoch 7" in done.stdout
    move = last_move(cluster)
    verdict, landed = check_writes(cluster, writer)
    inside = under_load("remove n2", writer, move_window(move, called, returned), verdict)
    assert inside > 0, "no write was acknowledged while n2 was being removed"

    new_ring = check_placement(cluster, WRITTEN | acked)
    assert "n2" not in new_ring.nodes
    ideal = moved_keys(old_ring, new_ring, n)
    WRITTEN.update(landed)
    expected = dict(WRITTEN)
    assert ideal <= move.keys_moved <= ideal + len(writer.history.ops)
    # n2 holds nothing anyone needs: with it stopped, every key still reads at ALL.
    cluster.node("n2").stop()
    with Client(cluster.router.address, timeout=10) as client:
        from shardkv.client import Consistency

        got = client.get_many(list(expected), consistency=Consistency.ALL)
    assert got == expected


@pytest.mark.timeout(60)
def test_concurrent_and_duplicate_changes_are_refused(cluster: Cluster) -> None:
    stub = admin(cluster)
    n5 = cluster.node("n5").address
    started = stub.AddNode(admin_pb2.AddNodeRequest(id="n5", address=n5), timeout=10)
    assert started.id == "add-n5@7" and started.state != admin_pb2.MOVE_DONE
    with pytest.raises(grpc.RpcError) as refused:
        stub.RemoveNode(admin_pb2.RemoveNodeRequest(id="n3"), timeout=5)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "add-n5@7" in (refused.value.details() or "")
    with pytest.raises(grpc.RpcError) as again:
        stub.AddNode(admin_pb2.AddNodeRequest(id="n5", address=n5), timeout=5)
    assert again.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    deadline = time.monotonic() + 30
    while stub.GetMoves(admin_pb2.GetMovesRequest(), timeout=5).HasField("current"):
        assert time.monotonic() < deadline, "adding n5 did not finish"
        time.sleep(0.1)
    assert last_move(cluster).state == admin_pb2.MOVE_DONE
    for request, code in (
        (admin_pb2.AddNodeRequest(id="n5", address=n5), grpc.StatusCode.ALREADY_EXISTS),
        (
            admin_pb2.AddNodeRequest(id="n9", address=cluster.node("n1").address),
            grpc.StatusCode.ALREADY_EXISTS,
        ),
        (admin_pb2.AddNodeRequest(id="n9", address="nowhere"), grpc.StatusCode.INVALID_ARGUMENT),
    ):
        with pytest.raises(grpc.RpcError) as err:
            stub.AddNode(request, timeout=5)
        assert err.value.code() == code, err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        stub.RemoveNode(admin_pb2.RemoveNodeRequest(id="n9"), timeout=5)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.timeout(60)
def test_remove_a_dead_node_re_replicates_from_survivors(cluster: Cluster) -> None:
    old_ring, _ = ring_of(cluster.config)
    assert "n5" in old_ring.nodes
    cluster.node("n5").kill()
    stub = admin(cluster)
    deadline = time.monotonic() + 10
    while (
        next(n.state for n in stub.GetHealth(admin_pb2.GetHealthRequest()).nodes if n.id == "n5")
        != admin_pb2.DOWN
    ):
        assert time.monotonic() < deadline, "n5 never seen DOWN"
        time.sleep(0.05)
    # Writes while n5 is down park hints for it on the fallback node.
    hinted = {b"hinted/%03d" % i: b"h" for i in range(200)}
    with Client(cluster.router.address) as client:
        client.put_many(hinted)
    WRITTEN.update(hinted)
    assert sum(hints_for(cluster, node_id, "n5") for node_id in ("n1", "n3", "n4")) > 0

    done = shardctl(cluster, "node", "remove", "--id", "n5")
    assert done.returncode == 0, done.stderr
    new_ring = check_placement(cluster, WRITTEN)
    assert set(new_ring.nodes) == {"n1", "n3", "n4"}
    # The hints parked for n5 were handed to the keys' current owners, then deleted.
    assert all(hints_for(cluster, node_id, "n5") == 0 for node_id in new_ring.nodes)


def hints_for(cluster: Cluster, holder: str, target: str) -> int:
    with grpc.insecure_channel(cluster.node(holder).address) as channel:
        summary = replica_pb2_grpc.ReplicaStub(channel).HintSummary(
            replica_pb2.HintSummaryRequest(), timeout=5
        )
    return sum(t.count for t in summary.targets if t.target == target)
