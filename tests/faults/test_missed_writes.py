"""A node that was down receives every write it missed, in the default cluster shape.

Three nodes with N=3 leave no node outside a key's preference list to park a hint on, so
the live owners keep (key, target) markers beside the records and hand their current
record over when the target returns; a node that comes back from DOWN also gets an
anti-entropy pass of its ranges. Each test checks the returning node directly (Replica
Read), never through the router, so read repair cannot do the work.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from harness import stopped_after
from shardkv.v1 import admin_pb2, admin_pb2_grpc, kv_pb2, kv_pb2_grpc, replica_pb2, replica_pb2_grpc

from faults.cluster import (
    FaultyCluster,
    read_records,
    start_faulty_cluster,
    wait_node_state,
)

KEYS = 500
BATCH = 25
# Generous: hand-off takes about a second; the test only fails when it never happens.
CATCH_UP_TIMEOUT_S = 60.0


@pytest.fixture
def cluster(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[FaultyCluster]:
    with stopped_after(start_faulty_cluster(tmp_path), request) as running:
        yield running


@dataclass
class Writer:
    """Writes batches through the router on a thread; keeps each acknowledged version."""

    router: str
    batches: list[list[kv_pb2.Mutation]]
    acknowledged: dict[bytes, tuple[int, bool]] = field(default_factory=dict)
    # (start, end) of every batch call, in time.monotonic().
    calls: list[tuple[float, float]] = field(default_factory=list)
    unknown: int = 0
    sent: int = 0

    def run(self) -> None:
        with grpc.insecure_channel(self.router) as channel:
            kv = kv_pb2_grpc.KVStub(channel)
            for mutations in self.batches:
                start = time.monotonic()
                try:
                    reply = kv.BatchWrite(kv_pb2.BatchWriteRequest(mutations=mutations), timeout=10)
                except grpc.RpcError:
                    self.unknown += len(mutations)
                    continue
                finally:
                    self.calls.append((start, time.monotonic()))
                    self.sent += 1
                for mutation, result in zip(mutations, reply.results, strict=True):
                    if result.status.code == grpc.StatusCode.OK.value[0]:
                        self.acknowledged[mutation.key] = (result.version, mutation.delete)
                    else:
                        self.unknown += 1


def missing_on(address: str, acknowledged: dict[bytes, tuple[int, bool]]) -> list[bytes]:
    """Keys whose acknowledged write (or a newer one) the node does not hold."""
    keys = sorted(acknowledged)
    return [
        key
        for key, record in zip(keys, read_records(address, keys), strict=True)
        if record.version < acknowledged[key][0]
        or (record.version == acknowledged[key][0] and record.tombstone != acknowledged[key][1])
    ]


@dataclass
class CatchUp:
    """When a restarted node first answered a Read, and when it held every write (seconds
    after its process was started)."""

    serving_s: float
    holds_s: float


def wait_holds(
    address: str, acknowledged: dict[bytes, tuple[int, bool]], started: float | None = None
) -> CatchUp:
    """Polls the node (which may still be starting) until it holds every acknowledged write;
    fails after the timeout. Times count from started (default: now)."""
    started = time.monotonic() if started is None else started
    serving_s: float | None = None
    missing: list[bytes] = []
    while time.monotonic() - started < CATCH_UP_TIMEOUT_S:
        try:
            missing = missing_on(address, acknowledged)
        except grpc.RpcError:
            time.sleep(0.02)
            continue
        if serving_s is None:
            serving_s = time.monotonic() - started
        if not missing:
            return CatchUp(serving_s, time.monotonic() - started)
        time.sleep(0.02)
    raise AssertionError(
        f"{len(missing) if serving_s is not None else 'all'} of {len(acknowledged)} acknowledged"
        f" writes still missing on {address} after {CATCH_UP_TIMEOUT_S:g}s, e.g. {missing[:5]}"
    )


def held_hints(address: str) -> int:
    with grpc.insecure_channel(address) as channel:
        stats = replica_pb2_grpc.ReplicaStub(channel).Stats(replica_pb2.StatsRequest(), timeout=5)
        return int(stats.hints)


@pytest.mark.timeout(180)
def test_returning_node_receives_every_write_it_missed(cluster: FaultyCluster) -> None:
    """n3 is SIGKILLed in the middle of 500 keys written in batches (plus overwrites and
    deletes while it is down) and restarted: it must come to hold every acknowledged write."""
    keys = [b"missed/%03d" % i for i in range(KEYS)]
    batches = [
        [kv_pb2.Mutation(key=key, value=b"v1-" + key) for key in keys[i : i + BATCH]]
        for i in range(0, KEYS, BATCH)
    ]
    # While n3 is down: overwrite the first 50 keys and delete the next 25.
    batches += [[kv_pb2.Mutation(key=key, value=b"v2-" + key) for key in keys[:50]]]
    batches += [[kv_pb2.Mutation(key=key, delete=True) for key in keys[50:75]]]
    writer = Writer(cluster.router.address, batches)
    thread = threading.Thread(target=writer.run, daemon=True)
    thread.start()
    while writer.sent < 6 and thread.is_alive():
        time.sleep(0.001)
    # The writer sends batch after batch without pause: the kill lands inside one.
    killed_at = time.monotonic()
    cluster.node("n3").kill()
    thread.join(120)
    assert not thread.is_alive(), "the writer hung"
    in_batch = any(start <= killed_at <= end for start, end in writer.calls)
    wait_node_state(cluster.router.address, "n3", admin_pb2.DOWN)
    survivors_hints = [held_hints(cluster.node(n).address) for n in ("n1", "n2")]

    restarted = time.monotonic()
    cluster.node("n3").start(wait=False)
    catch_up = wait_holds(cluster.node("n3").address, writer.acknowledged, restarted)
    print(
        f"\nmissed writes: {len(writer.acknowledged)} keys acknowledged ({writer.unknown}"
        f" unknown), n3 killed {'inside' if in_batch else 'between'} batches; survivors held"
        f" {survivors_hints} hints; after its restart n3 answered reads at"
        f" {catch_up.serving_s:.2f}s and held every acknowledged write at"
        f" {catch_up.holds_s:.2f}s ({catch_up.holds_s - catch_up.serving_s:.2f}s later)"
    )
    assert len(writer.acknowledged) == KEYS, "writes with one node of three down must succeed"
    # The survivors parked what n3 missed (owner-held markers), not only a later repair.
    assert all(count > 0 for count in survivors_hints), survivors_hints


@pytest.mark.timeout(120)
def test_two_nodes_down_the_survivor_alone_never_makes_w2(cluster: FaultyCluster) -> None:
    """With n2 and n3 down, a W=2 write is UNAVAILABLE (n1's own copy and the markers it
    keeps for n2 and n3 count once); a W=1 write succeeds; both reach n2 and n3 after they
    return."""
    for node_id in ("n2", "n3"):
        cluster.node(node_id).kill()
    for node_id in ("n2", "n3"):
        wait_node_state(cluster.router.address, node_id, admin_pb2.DOWN)
    with grpc.insecure_channel(cluster.router.address) as channel:
        kv = kv_pb2_grpc.KVStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            kv.Put(kv_pb2.PutRequest(key=b"two-down/w2", value=b"x"), timeout=5)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "1 of 2 required replicas acknowledged" in caught.value.details()
        reply = kv.BatchWrite(
            kv_pb2.BatchWriteRequest(
                mutations=[kv_pb2.Mutation(key=b"two-down/b%d" % i, value=b"y") for i in range(20)]
            ),
            timeout=5,
        )
        assert all(r.status.code == grpc.StatusCode.UNAVAILABLE.value[0] for r in reply.results), [
            r.status for r in reply.results
        ]
        one = kv.Put(
            kv_pb2.PutRequest(key=b"two-down/w1", value=b"z", consistency=kv_pb2.ONE), timeout=5
        ).version
    for node_id in ("n2", "n3"):
        cluster.node(node_id).start(wait=False)
    # The unknown-outcome W=2 write sits on n1 and spreads from there, like the W=1 one.
    expected = {b"two-down/w1": (one, False)}
    for node_id in ("n2", "n3"):
        wait_holds(cluster.node(node_id).address, expected)
        held = read_records(cluster.node(node_id).address, [b"two-down/w2"])[0]
        assert held.value == b"x", f"{node_id} never got the unknown write parked on n1"


@pytest.mark.timeout(120)
def test_returning_node_gets_an_anti_entropy_pass(cluster: FaultyCluster) -> None:
    """Records written to n1 and n2 behind the router's back (so nobody keeps a hint) while
    n3 is down reach n3 soon after it is UP again: the router repairs its ranges."""
    cluster.node("n3").kill()
    wait_node_state(cluster.router.address, "n3", admin_pb2.DOWN)
    version = (int(time.time() * 1000) << 16) + 1
    records = [
        replica_pb2.Record(key=b"behind/%02d" % i, value=b"v", version=version, writer=7)
        for i in range(40)
    ]
    for node_id in ("n1", "n2"):
        with grpc.insecure_channel(cluster.node(node_id).address) as channel:
            replica_pb2_grpc.ReplicaStub(channel).Apply(
                replica_pb2.ApplyRequest(records=records), timeout=5
            )
    restarted = time.monotonic()
    cluster.node("n3").start(wait=False)
    took = wait_holds(
        cluster.node("n3").address, {record.key: (version, False) for record in records}, restarted
    )
    with grpc.insecure_channel(cluster.router.address) as channel:
        status = admin_pb2_grpc.AdminStub(channel).GetRepair(
            admin_pb2.GetRepairRequest(), timeout=5
        )
    print(
        f"\nanti-entropy on return: after its restart n3 answered reads at {took.serving_s:.2f}s"
        f" and held all 40 records at {took.holds_s:.2f}s"
    )
    assert "n3" in status.trigger, status
