"""Quorum reads and writes through a router over three real nodes (N=3, R=W=2)."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from faults.cluster import wait_node_state
from harness import Cluster, start_cluster
from shardkv.v1 import admin_pb2, kv_pb2, kv_pb2_grpc

ONE, QUORUM, ALL = kv_pb2.ONE, kv_pb2.QUORUM, kv_pb2.ALL


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    running = start_cluster(tmp_path_factory.mktemp("quorum"))
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def kv(cluster: Cluster) -> Iterator[kv_pb2_grpc.KVStub]:
    with grpc.insecure_channel(cluster.router.address) as channel:
        yield kv_pb2_grpc.KVStub(channel)


def wait_state(cluster: Cluster, node_id: str, state: int) -> None:
    """Until node_id reaches state in the router's view; UP also waits until it counts
    toward quorums again (its data directory checked)."""
    wait_node_state(cluster.router.address, node_id, state, counted=state == admin_pb2.UP)


@pytest.mark.timeout(60)
def test_acknowledged_writes_read_back(kv: kv_pb2_grpc.KVStub) -> None:
    versions = {}
    for i in range(100):
        key = f"ack/{i:03}".encode()
        versions[key] = kv.Put(kv_pb2.PutRequest(key=key, value=b"v%d" % i), timeout=5).version
    batch = kv.BatchWrite(
        kv_pb2.BatchWriteRequest(
            mutations=[kv_pb2.Mutation(key=b"ack/%03d" % i, value=b"b%d" % i) for i in range(50)]
            + [kv_pb2.Mutation(key=b"ack/099", delete=True)]
        ),
        timeout=5,
    )
    assert all(r.status.code == 0 for r in batch.results)
    assert all(r.version > versions[b"ack/%03d" % i] for i, r in enumerate(batch.results[:50]))
    for i in range(100):
        got = kv.Get(kv_pb2.GetRequest(key=b"ack/%03d" % i), timeout=5)
        if i == 99:
            assert (got.found, got.version) == (False, 0)
        else:
            assert got.found and got.value == (b"b%d" % i if i < 50 else b"v%d" % i)
    results = kv.BatchGet(
        kv_pb2.BatchGetRequest(keys=[b"ack/000", b"ack/099", b"absent"]), timeout=5
    ).results
    assert [(r.key, r.found, r.value) for r in results] == [
        (b"ack/000", True, b"b0"),
        (b"ack/099", False, b""),
        (b"absent", False, b""),
    ]


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("write", "read"), [(ONE, ALL), (QUORUM, QUORUM), (ALL, ONE)])
def test_every_level_with_all_nodes_up(kv: kv_pb2_grpc.KVStub, write: int, read: int) -> None:
    """Per-request levels whose R + W > N always read the write back."""
    key = b"level/%d" % write
    version = kv.Put(kv_pb2.PutRequest(key=key, value=b"x", consistency=write), timeout=5).version
    got = kv.Get(kv_pb2.GetRequest(key=key, consistency=read), timeout=5)
    assert (got.found, got.value, got.version) == (True, b"x", version)


@pytest.mark.timeout(60)
def test_bad_requests_are_invalid_argument(kv: kv_pb2_grpc.KVStub) -> None:
    for call in (
        lambda: kv.Get(kv_pb2.GetRequest(key=b""), timeout=5),
        lambda: kv.Put(kv_pb2.PutRequest(key=b"k" * 600, value=b"x"), timeout=5),
        lambda: kv.Scan(kv_pb2.ScanRequest(prefix=b"a", start=b"b"), timeout=5),
        lambda: kv.Get(kv_pb2.GetRequest(key=b"k", consistency=9), timeout=5),  # type: ignore[arg-type]
    ):
        with pytest.raises(grpc.RpcError) as caught:
            call()
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.timeout(90)
def test_node_failures(cluster: Cluster, kv: kv_pb2_grpc.KVStub) -> None:
    """One node killed: default reads and writes go on. Two: QUORUM fails, ONE works."""
    for i in range(20):
        kv.Put(kv_pb2.PutRequest(key=b"fail/%d" % i, value=b"before"), timeout=5)
    cluster.node("n3").kill()
    # Right after the kill (the router may not know yet) and after it noticed.
    for round_ in range(2):
        for i in range(20):
            key = b"fail/%d" % i
            kv.Put(kv_pb2.PutRequest(key=key, value=b"one-down-%d" % round_), timeout=5)
            assert kv.Get(kv_pb2.GetRequest(key=key), timeout=5).value == b"one-down-%d" % round_
        wait_state(cluster, "n3", admin_pb2.DOWN)
    with pytest.raises(grpc.RpcError) as caught:
        kv.Put(kv_pb2.PutRequest(key=b"fail/0", value=b"all", consistency=ALL), timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "2 of 3 required replicas acknowledged" in caught.value.details()

    cluster.node("n2").kill()
    wait_state(cluster, "n2", admin_pb2.DOWN)
    with pytest.raises(grpc.RpcError) as caught:
        kv.Put(kv_pb2.PutRequest(key=b"fail/1", value=b"q", consistency=QUORUM), timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    message = caught.value.details()
    assert "1 of 2 required replicas acknowledged" in message
    assert "n2" in message and "n3" in message
    version = kv.Put(
        kv_pb2.PutRequest(key=b"fail/1", value=b"one", consistency=ONE), timeout=5
    ).version
    got = kv.Get(kv_pb2.GetRequest(key=b"fail/1", consistency=ONE), timeout=5)
    assert (got.value, got.version) == (b"one", version)
    with pytest.raises(grpc.RpcError) as caught:
        kv.Get(kv_pb2.GetRequest(key=b"fail/1"), timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "1 of 2 required replicas answered" in caught.value.details()
    results = kv.BatchWrite(
        kv_pb2.BatchWriteRequest(mutations=[kv_pb2.Mutation(key=b"fail/2", value=b"b")]),
        timeout=5,
    ).results
    assert results[0].status.code == grpc.StatusCode.UNAVAILABLE.value[0]

    for node_id in ("n2", "n3"):
        cluster.node(node_id).start()
        wait_state(cluster, node_id, admin_pb2.UP)
    assert kv.Get(kv_pb2.GetRequest(key=b"fail/1", consistency=ALL), timeout=5).value == b"one"
