"""Read repair and hinted hand-off, checked on the nodes themselves (5 nodes, N=3, R=W=2).
A read asks R owners, so read repair reaches the stale owners a read asked."""

from __future__ import annotations

import re
import time
import urllib.request
from collections.abc import Iterator

import grpc
import pytest
from harness import Cluster, start_cluster
from prometheus_client.parser import text_string_to_metric_families
from shardkv.router.membership.topology import load_topology
from shardkv.router.placement.ring import Ring
from shardkv.v1 import admin_pb2, admin_pb2_grpc, kv_pb2, kv_pb2_grpc, replica_pb2, replica_pb2_grpc


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    running = start_cluster(
        tmp_path_factory.mktemp("repair"),
        nodes=5,
        router_extra=["--metrics-listen", "127.0.0.1:0"],
    )
    try:
        yield running
    finally:
        running.stop()


def load_ring(cluster: Cluster) -> Ring:
    """The same placement the router computes from the same file."""
    topology = load_topology(cluster.config)
    return Ring({node.id: node.weight for node in topology.nodes})


@pytest.fixture(scope="module")
def ring(cluster: Cluster) -> Ring:
    return load_ring(cluster)


def kv_stub(cluster: Cluster) -> kv_pb2_grpc.KVStub:
    return kv_pb2_grpc.KVStub(grpc.insecure_channel(cluster.router.address))


def read_on_node(cluster: Cluster, node_id: str, keys: list[bytes]) -> list[replica_pb2.Record]:
    """Asks one node directly, bypassing the router."""
    with grpc.insecure_channel(cluster.node(node_id).address) as channel:
        stub = replica_pb2_grpc.ReplicaStub(channel)
        return list(stub.Read(replica_pb2.ReadRequest(keys=keys), timeout=5).records)


def wait_state(cluster: Cluster, node_id: str, state: int, timeout_s: float = 10.0) -> None:
    with grpc.insecure_channel(cluster.router.address) as channel:
        admin = admin_pb2_grpc.AdminStub(channel)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            nodes = admin.GetHealth(admin_pb2.GetHealthRequest(), timeout=2).nodes
            if next(n.state for n in nodes if n.id == node_id) == state:
                return
            time.sleep(0.05)
    raise TimeoutError(f"{node_id} never reached {admin_pb2.NodeState.Name(state)}")


def keys_owned_by(ring: Ring, node_id: str, prefix: str, count: int) -> list[bytes]:
    keys = (f"{prefix}/{i}".encode() for i in range(100_000))
    return [k for k in keys if node_id in ring.preference_list(k, 3)][:count]


def read_repairs(cluster: Cluster) -> float:
    """The router's read-repair counter, scraped from its metrics endpoint."""
    url = re.findall(r"metrics_serving url=(\S+)", cluster.router.log())[-1]
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    samples = (s for f in text_string_to_metric_families(text) for s in f.samples)
    return next(s.value for s in samples if s.name == "shardkv_router_read_repairs_total")


def keys_read(cluster: Cluster, node_id: str) -> int:
    """Keys node_id has read since it started (Replica.Stats): whether a read asked it."""
    with grpc.insecure_channel(cluster.node(node_id).address) as channel:
        stub = replica_pb2_grpc.ReplicaStub(channel)
        return stub.Stats(replica_pb2.StatsRequest(), timeout=5).keys_read


def stale_on(cluster: Cluster, kv: kv_pb2_grpc.KVStub, key: bytes, stale: str) -> None:
    """Writes key through the router, then a newer record straight to its owners but
    stale (its value b"new"). Nothing but a read can tell: no node went
    DOWN (so no hint, no marker, no return anti-entropy pass) and the background pass is
    an hour away. This is what a router that dies between the owners' writes leaves
    behind. (Making the replica stale by killing it, as this test once did, raced the
    repair it meant to leave to the read: the owners that acknowledged keep markers for
    it, handed back the moment it is UP again.)"""
    owners = load_ring(cluster).preference_list(key, 3)
    old_version = kv.Put(kv_pb2.PutRequest(key=key, value=b"old"), timeout=5).version
    deadline = time.monotonic() + 30
    while any(read_on_node(cluster, n, [key])[0].version != old_version for n in owners):
        assert time.monotonic() < deadline, "the put never reached all three owners"
        time.sleep(0.05)
    old = read_on_node(cluster, stale, [key])[0]
    newer = replica_pb2.Record(key=key, value=b"new", version=old.version + 1, writer=old.writer)
    for node_id in owners:
        if node_id == stale:
            continue
        with grpc.insecure_channel(cluster.node(node_id).address) as channel:
            reply = replica_pb2_grpc.ReplicaStub(channel).Apply(
                replica_pb2.ApplyRequest(records=[newer]), timeout=5
            )
        assert list(reply.applied) == [True]
    assert read_on_node(cluster, stale, [key])[0].value == b"old"


def wait_repaired(cluster: Cluster, node_id: str, key: bytes) -> None:
    deadline = time.monotonic() + 30
    while read_on_node(cluster, node_id, [key])[0].value != b"new":
        assert time.monotonic() < deadline, f"{node_id} was not repaired"
        time.sleep(0.05)


@pytest.mark.timeout(120)
def test_read_repair_updates_a_stale_replica_the_read_asked(cluster: Cluster, ring: Ring) -> None:
    """The first owner in ring order holds an older record than the other two. A QUORUM
    read asks two owners, in an order of the nodes drawn per read (a node measured clearly
    slower last): with three nodes two reads in three ask the stale owner; one that does
    answers the newer record and repairs it."""
    kv = kv_stub(cluster)
    key = keys_owned_by(ring, "n1", "repair", 1)[0]
    stale = ring.preference_list(key, 3)[0]
    stale_on(cluster, kv, key, stale)
    repairs_before = read_repairs(cluster)
    for _ in range(12):  # all twelve leave it out once in half a million
        asked_before = keys_read(cluster, stale)
        got = kv.Get(kv_pb2.GetRequest(key=key, consistency=kv_pb2.QUORUM), timeout=5)
        assert got.value == b"new"
        if keys_read(cluster, stale) > asked_before:
            break
    else:
        raise AssertionError(f"twelve quorum reads never asked {stale}")
    wait_repaired(cluster, stale, key)
    record = read_on_node(cluster, stale, [key])[0]
    assert (record.tombstone, record.version) == (False, got.version)
    assert read_repairs(cluster) >= repairs_before + 1


@pytest.mark.timeout(120)
def test_a_stale_replica_no_read_asks_waits_for_a_read_at_all(cluster: Cluster, ring: Ring) -> None:
    """A stale owner that a QUORUM read does not ask (the order of the nodes is drawn per
    read: with three nodes one read in three leaves a given owner out) keeps its old record:
    the read answers the newer one from the two it asked, and repairs nobody (anti-entropy
    would bring the record, as in Cassandra); a read at ALL asks it and repairs it."""
    kv = kv_stub(cluster)
    for key in keys_owned_by(ring, "n2", "unasked", 24):  # 24 reads all ask it: 6e-5
        stale = ring.preference_list(key, 3)[-1]
        stale_on(cluster, kv, key, stale)
        asked_before = keys_read(cluster, stale)
        got = kv.Get(kv_pb2.GetRequest(key=key, consistency=kv_pb2.QUORUM), timeout=5)
        assert got.value == b"new"
        time.sleep(0.3)
        if keys_read(cluster, stale) == asked_before:  # this read left the stale owner out
            break
    else:
        raise AssertionError(f"24 quorum reads in a row asked {stale}")
    assert read_on_node(cluster, stale, [key])[0].value == b"old"
    got = kv.Get(kv_pb2.GetRequest(key=key, consistency=kv_pb2.ALL), timeout=5)
    assert got.value == b"new"
    wait_repaired(cluster, stale, key)


@pytest.mark.timeout(90)
def test_hinted_handoff_without_reads(cluster: Cluster, ring: Ring) -> None:
    kv = kv_stub(cluster)
    target = "n2"
    keys = keys_owned_by(ring, target, "hint", 30)
    cluster.node(target).kill()
    wait_state(cluster, target, admin_pb2.DOWN)
    versions = {}
    for i, key in enumerate(keys[:20]):
        versions[key] = kv.Put(kv_pb2.PutRequest(key=key, value=b"h%d" % i), timeout=5).version
    batch = kv.BatchWrite(
        kv_pb2.BatchWriteRequest(
            mutations=[kv_pb2.Mutation(key=k, value=b"batch") for k in keys[20:25]]
            + [kv_pb2.Mutation(key=k, delete=True) for k in keys[25:]]
        ),
        timeout=5,
    )
    assert all(r.status.code == 0 for r in batch.results)
    versions.update(zip(keys[20:], (r.version for r in batch.results), strict=True))

    with grpc.insecure_channel(cluster.router.address) as channel:
        topology = admin_pb2_grpc.AdminStub(channel).GetTopology(admin_pb2.GetTopologyRequest())
    deadline = time.monotonic() + 10
    while next(n.hints_pending for n in topology.nodes if n.id == target) < len(keys):
        assert time.monotonic() < deadline, "the router never counted the hints"
        time.sleep(0.1)
        with grpc.insecure_channel(cluster.router.address) as channel:
            admin = admin_pb2_grpc.AdminStub(channel)
            topology = admin.GetTopology(admin_pb2.GetTopologyRequest())

    cluster.node(target).start()
    deadline = time.monotonic() + 15
    while True:
        records = read_on_node(cluster, target, keys)
        if [r.version for r in records] == [versions[k] for k in keys]:
            break
        assert time.monotonic() < deadline, "hints were not handed back"
        time.sleep(0.1)
    assert [r.value for r in records[:20]] == [b"h%d" % i for i in range(20)]
    assert all(r.tombstone for r in records[25:])
