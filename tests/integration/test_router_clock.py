"""Versions and clocks on real processes: a router's versions never go back across a
restart, a version too far ahead of the wall clock is refused where it enters and never
adopted by a clock, and equal (version, writer) pairs with different contents converge.

Every cluster here runs with a max clock offset of 60 s (``[clock] max_offset_ms`` for the
routers, ``shardd --max-clock-offset-ms`` for the nodes) so that a version 20 s ahead is
legal, and a router restart (about a second) is far shorter than the lead it must keep.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from faults.cluster import wait_node_state
from harness import (
    BIN,
    Cluster,
    Proc,
    router_proc,
    start_cluster,
)
from shardkv.common.hlc import LOGICAL_BITS
from shardkv.shardd.records import Record
from shardkv.shardd.store import Store
from shardkv.v1 import admin_pb2, admin_pb2_grpc, kv_pb2, kv_pb2_grpc, replica_pb2, replica_pb2_grpc

MAX_OFFSET_MS = 60_000
WILD = (1 << 64) - 1
EXTRA_TOML = f"""
[repair]
interval_s = 0

[clock]
max_offset_ms = {MAX_OFFSET_MS}
"""


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    running = start_cluster(
        tmp_path, node_extra=["--max-clock-offset-ms", str(MAX_OFFSET_MS)], extra_toml=EXTRA_TOML
    )
    try:
        yield running
    except BaseException:
        print(running.logs())
        raise
    finally:
        running.stop()


def kv(proc: Proc) -> kv_pb2_grpc.KVStub:
    return kv_pb2_grpc.KVStub(grpc.insecure_channel(proc.address))


def replica(proc: Proc) -> replica_pb2_grpc.ReplicaStub:
    return replica_pb2_grpc.ReplicaStub(grpc.insecure_channel(proc.address))


def held(node: Proc, key: bytes) -> tuple[int, int, bool, bytes]:
    [record] = replica(node).Read(replica_pb2.ReadRequest(keys=[key]), timeout=10).records
    return (record.version, record.writer, record.tombstone, record.value)


def wall_version(ahead_ms: int = 0) -> int:
    return int(time.time() * 1000 + ahead_ms) << LOGICAL_BITS


@pytest.mark.timeout(90)
def test_a_router_restarted_after_moving_ahead_never_hands_out_lower_versions(
    cluster: Cluster,
) -> None:
    """The router observes a version 20 s ahead (a peer with a fast clock), writes, is
    SIGKILLed and restarted at once, and writes the same key again: the second write must
    get a higher version and win. Before the fix the restarted clock began from the wall
    clock, so the second write was acknowledged and silently lost to the first."""
    ahead = replica_pb2.Record(
        key=b"clock/peer", value=b"from a fast clock", version=wall_version(20_000), writer=7
    )
    for node in cluster.nodes:
        reply = replica(node).Apply(replica_pb2.ApplyRequest(records=[ahead]), timeout=10)
        assert list(reply.applied) == [True]
    router = cluster.router
    got = kv(router).Get(kv_pb2.GetRequest(key=b"clock/peer"), timeout=10)
    assert got.version == ahead.version
    first = kv(router).Put(kv_pb2.PutRequest(key=b"clock/k", value=b"before"), timeout=10)
    assert first.version > ahead.version

    router.kill()
    router.start()
    second = kv(router).Put(kv_pb2.PutRequest(key=b"clock/k", value=b"after"), timeout=10)
    assert second.version > first.version, "the restarted router handed out a lower version"
    got = kv(router).Get(kv_pb2.GetRequest(key=b"clock/k"), timeout=10)
    assert got.value == b"after"


@pytest.mark.timeout(90)
def test_a_version_too_far_ahead_is_refused_and_never_adopted(cluster: Cluster) -> None:
    """A version of 2^64-1 is refused by Replica/Apply and by Admin/Restore with
    INVALID_ARGUMENT naming the version, the wall clock and the limit. One that got into a
    store anyway (written before the upgrade) is read, but the router's clock does not
    adopt it and read repair does not spread it: writes through the router keep working.
    Before the fix both calls took it, and every write after a read of it failed INTERNAL."""
    wild = replica_pb2.Record(key=b"clock/wild", value=b"wild", version=WILD, writer=7)
    n1, n2, n3 = cluster.nodes
    with pytest.raises(grpc.RpcError) as refused:
        replica(n2).Apply(replica_pb2.ApplyRequest(records=[wild]), timeout=10)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert str(WILD) in (refused.value.details() or "")
    assert "max clock offset" in (refused.value.details() or "")
    with pytest.raises(grpc.RpcError) as refused:
        hint = replica_pb2.Hint(target="n3", record=wild)
        replica(n2).Apply(replica_pb2.ApplyRequest(hints=[hint]), timeout=10)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    admin = admin_pb2_grpc.AdminStub(grpc.insecure_channel(cluster.router.address))
    with pytest.raises(grpc.RpcError) as refused:
        admin.Restore(admin_pb2.RestoreRequest(records=[wild]), timeout=10)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "max clock offset" in (refused.value.details() or "")
    assert held(n2, b"clock/wild")[0] == 0

    # A record written before the upgrade, straight into n1's store.
    n1.stop()
    store = Store(cluster.base / "n1")
    store.apply([Record(b"clock/wild", b"wild", WILD, 7)])
    store.close()
    n1.start()
    # Counted again: until its data directory is checked, a read at ALL needs one reply
    # more than there are owners.
    wait_node_state(cluster.router.address, "n1", admin_pb2.UP, 20, counted=True)
    router = kv(cluster.router)
    got = router.Get(kv_pb2.GetRequest(key=b"clock/wild", consistency=kv_pb2.ALL), timeout=10)
    assert got.version == WILD
    for i in range(20):
        put = router.Put(kv_pb2.PutRequest(key=b"clock/after/%d" % i, value=b"v"), timeout=10)
        assert put.version < WILD >> 1
    time.sleep(0.5)  # read repair runs after the answer
    assert held(n2, b"clock/wild")[0] == 0
    assert held(n3, b"clock/wild")[0] == 0


@pytest.mark.timeout(90)
def test_a_router_whose_clock_runs_too_far_ahead_cannot_write(cluster: Cluster) -> None:
    """A router whose wall clock is an hour fast: the nodes refuse its versions, so its
    writes fail with a message naming the offset, and nothing of them is stored."""
    fast = router_proc(cluster.base, cluster.config, "r2", extra=["--clock-offset-ms", "3600000"])
    cluster.routers.append(fast.start())
    with pytest.raises(grpc.RpcError) as refused:
        kv(fast).Put(kv_pb2.PutRequest(key=b"clock/fast", value=b"v"), timeout=10)
    assert "max clock offset" in (refused.value.details() or "")
    for node in cluster.nodes:
        assert held(node, b"clock/fast")[0] == 0
    kv(cluster.router).Put(kv_pb2.PutRequest(key=b"clock/fast", value=b"v"), timeout=10)


@pytest.mark.timeout(60)
def test_two_routers_never_run_with_the_same_writer_id(cluster: Cluster) -> None:
    """A second router started with the id of a running one refuses to start, saying why."""
    twin = router_proc(cluster.base, cluster.config, "r1")
    cluster.routers.append(twin)  # stopped with the cluster, whatever happens
    twin.start(wait=False)
    assert twin.popen is not None
    assert twin.popen.wait(20) != 0
    assert "already running" in twin.log(), twin.log()
    # The first router is untouched, and once it is gone the id is free again.
    kv(cluster.router).Put(kv_pb2.PutRequest(key=b"clock/one", value=b"v"), timeout=10)
    cluster.router.signal(signal.SIGKILL)
    assert cluster.router.popen is not None
    cluster.router.popen.wait(10)
    twin.start()
    kv(twin).Put(kv_pb2.PutRequest(key=b"clock/one", value=b"w"), timeout=10)


def same_stamp(key: bytes, value: bytes, *, tombstone: bool = False) -> replica_pb2.Record:
    return replica_pb2.Record(
        key=key, value=value, version=wall_version(), writer=9, tombstone=tombstone
    )


@pytest.mark.timeout(90)
def test_equal_stamps_with_different_contents_converge(cluster: Cluster) -> None:
    """Two records of one key with the same (version, writer) but different contents reach
    the nodes in different orders: every replica ends with the same one (a tombstone beats
    a value, a greater value a smaller one), through apply, read repair and anti-entropy.
    Before the fix each node kept whichever came first, forever."""
    n1, n2, n3 = cluster.nodes
    pairs = {}
    for key, tombstone in ((b"tie/value", False), (b"tie/delete", True), (b"tie/repair", False)):
        apple = same_stamp(key, b"apple")
        other = same_stamp(key, b"" if tombstone else b"banana", tombstone=tombstone)
        other.version = apple.version
        pairs[key] = (apple, other)
    for apple, other in pairs.values():
        replica(n1).Apply(replica_pb2.ApplyRequest(records=[apple]), timeout=10)
        replica(n1).Apply(replica_pb2.ApplyRequest(records=[other]), timeout=10)
        replica(n2).Apply(replica_pb2.ApplyRequest(records=[other]), timeout=10)
        replica(n2).Apply(replica_pb2.ApplyRequest(records=[apple]), timeout=10)
        replica(n3).Apply(replica_pb2.ApplyRequest(records=[apple]), timeout=10)
    for key in pairs:
        assert held(n1, key) == held(n2, key), key
    assert held(n1, b"tie/value")[3] == b"banana"
    assert held(n1, b"tie/delete")[2] is True

    # n3 holds the loser: a read at ALL repairs it ...
    router = kv(cluster.router)
    for key in (b"tie/value", b"tie/delete"):
        router.Get(kv_pb2.GetRequest(key=key, consistency=kv_pb2.ALL), timeout=10)
    # ... and a repair pass repairs what nobody reads.
    done = subprocess.run(
        [str(BIN / "shardctl"), "--addr", cluster.router.address, "repair"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    deadline = time.monotonic() + 10
    while any(held(n3, key) != held(n1, key) for key in pairs) and time.monotonic() < deadline:
        time.sleep(0.1)
    for key in pairs:
        assert held(n3, key) == held(n1, key), key
