"""Every hint reaches a current owner of its key, whatever the topology did since it was parked.

Five shardd, N=3, R=W=2, short settle delays. Three changes that used to strand hints:

- A node is added while an owner is down: the hints parked for the down node include keys
  whose range it gave to the new node. They used to go to it when it came back (a copy on a
  node that owns nothing of the key); they go to the keys' current owners.
- A node holding hints for a down owner is removed: the hints left the cluster with it,
  so the owner got those writes only from repair. The leaving node hands them to a node
  that stays before it leaves.
- A join is aborted after hints were parked for the joining node: nothing re-homed them,
  so they stayed for an id no longer in the topology, tombstone GC purged deletes of their
  keys, and when the same id was added again they were replayed to it: the deleted values
  came back. They are re-homed at the next hand-off round, retried while an owner is down
  until every owner took them, so a delete stays deleted through the re-add.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from faults.cluster import read_records, wait_node_state
from harness import Cluster, Proc, shardd_proc, start_cluster, stopped_after
from shardkv.client import Client, Consistency
from shardkv.router.membership.topology import load_topology
from shardkv.router.placement.ring import Ring
from shardkv.v1 import admin_pb2, replica_pb2, replica_pb2_grpc

GRACE_S = 1
EXTRA_TOML = f"""
[rebalance]
settle_ms = 300

[repair]
interval_s = 0
tombstone_grace_s = {GRACE_S}
"""


@pytest.fixture
def cluster(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """n1..n4 in the ring, n5 started but not in it."""
    running = start_cluster(tmp_path, nodes=4, extra_toml=EXTRA_TOML)
    spare = shardd_proc(tmp_path, "n5")
    running.nodes.append(spare)
    with stopped_after(running, request):
        spare.start()
        yield running


def hints_for(cluster: Cluster, target: str, *, skip: frozenset[str] = frozenset()) -> int:
    """Hints and markers for target on every running node but those in skip."""
    total = 0
    for node in cluster.nodes:
        if not node.alive() or node.name in skip:
            continue
        with grpc.insecure_channel(node.address) as channel:
            summary = replica_pb2_grpc.ReplicaStub(channel).HintSummary(
                replica_pb2.HintSummaryRequest(), timeout=5
            )
        total += sum(t.count for t in summary.targets if t.target == target)
    return total


def wait_hints_gone(cluster: Cluster, target: str, timeout_s: float = 20.0) -> None:
    """Waits until no node holds hints for target; prints how long that took."""
    start = time.monotonic()
    deadline = start + timeout_s
    while (left := hints_for(cluster, target)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not left, f"{left} hints for {target} still parked after {timeout_s} s"
    print(f"hints for {target} all delivered {time.monotonic() - start:.1f} s later")


def wait_move(client: Client, move: admin_pb2.Move, state: int, timeout_s: float = 60.0) -> None:
    """Waits until the move (by id) reaches state."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        moves = client.moves()
        if any(m.id == move.id and m.state == state for m in (moves.current, *moves.history)):
            return
        time.sleep(0.05)
    raise TimeoutError(f"move {move.id} never reached {admin_pb2.MoveState.Name(state)}")


def ring_now(cluster: Cluster) -> tuple[Ring, int]:
    topology = load_topology(cluster.config)
    assert topology.move is None, "the topology is still in transition"
    return Ring({n.id: n.weight for n in topology.nodes}), topology.replication


def held(node: Proc, keys: list[bytes]) -> dict[bytes, replica_pb2.Record]:
    return {r.key: r for r in read_records(node.address, keys) if r.version}


@pytest.mark.timeout(120)
def test_hints_for_a_node_that_gave_a_range_away_go_to_the_new_owner(cluster: Cluster) -> None:
    down = cluster.node("n1")
    down.kill()
    wait_node_state(cluster.router.address, "n1", admin_pb2.DOWN)
    keys = [b"given/%03d" % i for i in range(200)]
    with Client(cluster.router.address, timeout=10) as client:
        client.put_many({key: b"while-n1-down" for key in keys})
        assert hints_for(cluster, "n1") > 0, "no hint parked for n1"
        move = client.add_node("n5", cluster.node("n5").address)
        wait_move(client, move, admin_pb2.MOVE_DONE)
    ring, n = ring_now(cluster)
    not_owned = [k for k in keys if "n1" not in ring.preference_list(k, n)]
    assert not_owned, "n1 gave no range holding these keys away: the test proves nothing"
    down.start()
    wait_node_state(cluster.router.address, "n1", admin_pb2.UP)
    wait_hints_gone(cluster, "n1")
    strays = held(down, not_owned)
    assert not strays, (
        f"n1 got {len(strays)} of the {len(not_owned)} hinted keys it no longer owns,"
        f" e.g. {sorted(strays)[:3]}"
    )
    for node_id in ring.nodes:
        owned = [k for k in keys if node_id in ring.preference_list(k, n)]
        lacking = set(owned) - set(held(cluster.node(node_id), owned))
        assert not lacking, f"{node_id} lacks {len(lacking)} of its {len(owned)} hinted keys"


@pytest.mark.timeout(120)
def test_hints_of_an_aborted_join_never_bring_a_delete_back(
    cluster: Cluster, tmp_path: Path
) -> None:
    joining = cluster.node("n5")
    keys = [b"aborted/%03d" % i for i in range(200)]
    with Client(cluster.router.address, timeout=10) as client:
        move = client.add_node("n5", joining.address)
        joining.kill()  # the transition is in force: n5 is a pending owner that misses writes
        client.put_many({key: b"before-delete" for key in keys})
        assert hints_for(cluster, "n5") > 0, "no hint parked for n5"
        wait_move(client, move, admin_pb2.MOVE_FAILED)
        # While an owner of some of the keys is down, their hints cannot all be re-homed.
        paused = cluster.node("n4")
        paused.signal(signal.SIGSTOP)
        try:
            wait_node_state(cluster.router.address, "n4", admin_pb2.DOWN)
            client.remove_node("n5")  # aborts the join: n5 leaves the topology
            time.sleep(1.5)  # three hand-off rounds
            left = hints_for(cluster, "n5", skip=frozenset({"n4"}))
            assert left > 0, "hints re-homed although an owner was down"
        finally:
            paused.signal(signal.SIGCONT)
        # Retried until every owner took them, then deleted on every holder.
        wait_hints_gone(cluster, "n5")
        for key in keys:
            client.delete(key)
        time.sleep(GRACE_S + 0.1)
        client.repair()
        deadline = time.monotonic() + 30
        while (status := client.repair_status()).running and time.monotonic() < deadline:
            time.sleep(0.05)
        assert status.tombstones_purged > 0, status
        # The same id again, on an empty directory.
        (tmp_path / "again").mkdir()
        again = shardd_proc(tmp_path / "again", "n5")
        cluster.nodes.append(again)
        again.start()
        move = client.add_node("n5", again.address)
        wait_move(client, move, admin_pb2.MOVE_DONE)
        time.sleep(1.0)  # a hand-off round or two
        back = client.get_many(keys, consistency=Consistency.ALL)
        assert not back, f"{len(back)} deleted keys came back after n5 was added again"
        found = [r.key for r in client.scan(prefix=b"aborted/", consistency=Consistency.ALL)]
        assert not found, f"{len(found)} deleted keys came back in a scan"


@pytest.mark.timeout(120)
def test_hints_held_by_a_removed_node_still_reach_their_target(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    five = Ring({f"n{i}": 1 for i in range(1, 6)})
    candidates = (b"held/%04d" % i for i in range(3000))
    # Keys n1 owns whose hints, with n1 down, are parked on n5 (their first fallback).
    keys = [
        k
        for k in candidates
        if "n1" in five.preference_list(k, 3) and next(five.fallbacks(k, 3)) == "n5"
    ][:100]
    with stopped_after(start_cluster(tmp_path, nodes=5, extra_toml=EXTRA_TOML), request) as c:
        down = c.node("n1")
        down.kill()
        wait_node_state(c.router.address, "n1", admin_pb2.DOWN)
        with Client(c.router.address, timeout=10) as client:
            client.put_many({key: b"while-n1-down" for key in keys})
            parked = hints_for(c, "n1")
            assert parked >= len(keys), f"only {parked} hints parked for n1"
            move = client.remove_node("n5")
            wait_move(client, move, admin_pb2.MOVE_DONE)
        kept = hints_for(c, "n1", skip=frozenset({"n5"}))
        assert kept >= len(keys), (
            f"{parked} hints for n1 were parked on n5; after n5 left, the nodes that stay"
            f" hold {kept}"
        )
        down.start()
        wait_node_state(c.router.address, "n1", admin_pb2.UP)
        wait_hints_gone(c, "n1")
        ring, n = ring_now(c)
        owned = [k for k in keys if "n1" in ring.preference_list(k, n)]
        lacking = set(owned) - set(held(down, owned))
        assert not lacking, f"n1 lacks {len(lacking)} of its {len(owned)} hinted keys"
