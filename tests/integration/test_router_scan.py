"""Scan through the router over five nodes (each holding a subset) equals one sorted store."""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc
import pytest
from harness import Cluster, start_cluster
from shardkv.v1 import admin_pb2, admin_pb2_grpc, kv_pb2, kv_pb2_grpc


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    running = start_cluster(tmp_path_factory.mktemp("scan"), nodes=5)
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def data(cluster: Cluster) -> dict[bytes, bytes]:
    """Writes 600 keys under three prefixes, deletes every fifth; returns the live ones."""
    live: dict[bytes, bytes] = {}
    with grpc.insecure_channel(cluster.router.address) as channel:
        kv = kv_pb2_grpc.KVStub(channel)
        keys = [b"%s/%04d" % (p, i) for p in (b"a", b"b", b"c") for i in range(200)]
        for chunk in range(0, len(keys), 200):
            mutations = [kv_pb2.Mutation(key=k, value=b"v-" + k) for k in keys[chunk : chunk + 200]]
            results = kv.BatchWrite(kv_pb2.BatchWriteRequest(mutations=mutations), timeout=10)
            assert all(r.status.code == 0 for r in results.results)
        doomed = keys[::5]
        results = kv.BatchWrite(
            kv_pb2.BatchWriteRequest(
                mutations=[kv_pb2.Mutation(key=k, delete=True) for k in doomed]
            ),
            timeout=10,
        )
        assert all(r.status.code == 0 for r in results.results)
        live = {k: b"v-" + k for k in keys if k not in set(doomed)}
    return live


def scan_all(address: str, limit: int, **form: bytes) -> tuple[list[tuple[bytes, bytes]], int]:
    """Follows page tokens to the end; returns the records and the number of pages."""
    records: list[tuple[bytes, bytes]] = []
    token, pages = b"", 0
    with grpc.insecure_channel(address) as channel:
        kv = kv_pb2_grpc.KVStub(channel)
        while True:
            page = kv.Scan(kv_pb2.ScanRequest(limit=limit, page_token=token, **form), timeout=10)
            pages += 1
            assert len(page.records) <= (limit or 1000)
            records += [(r.key, r.value) for r in page.records]
            token = page.next_page_token
            if not token:
                return records, pages
            assert pages < 10_000


@pytest.mark.timeout(60)
def test_scan_pages_equal_sorted_live_keys(cluster: Cluster, data: dict[bytes, bytes]) -> None:
    expected = sorted(data.items())
    records, pages = scan_all(cluster.router.address, 7)
    assert records == expected
    assert pages >= len(expected) // 7
    assert scan_all(cluster.router.address, 0)[0] == expected  # default page size


@pytest.mark.timeout(60)
def test_scan_prefix_and_range(cluster: Cluster, data: dict[bytes, bytes]) -> None:
    address = cluster.router.address
    prefix = sorted((k, v) for k, v in data.items() if k.startswith(b"b/"))
    assert scan_all(address, 13, prefix=b"b/")[0] == prefix
    ranged = sorted((k, v) for k, v in data.items() if b"a/0150" <= k < b"c/0020")
    assert scan_all(address, 50, start=b"a/0150", end=b"c/0020")[0] == ranged
    assert scan_all(address, 5, start=b"c/")[0] == sorted(
        (k, v) for k, v in data.items() if k >= b"c/"
    )
    assert scan_all(address, 5, prefix=b"zzz")[0] == []


@pytest.mark.timeout(60)
def test_scan_with_a_node_down(cluster: Cluster, data: dict[bytes, bytes]) -> None:
    """N - R nodes may be down: every key still has R live owners to answer for it."""
    cluster.node("n4").kill()
    try:
        with grpc.insecure_channel(cluster.router.address) as channel:
            admin = admin_pb2_grpc.AdminStub(channel)
            deadline = time.monotonic() + 10
            while admin.GetHealth(admin_pb2.GetHealthRequest()).nodes_down == 0:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        assert scan_all(cluster.router.address, 64)[0] == sorted(data.items())
        cluster.node("n5").kill()
        with grpc.insecure_channel(cluster.router.address) as channel:
            kv = kv_pb2_grpc.KVStub(channel)
            with pytest.raises(grpc.RpcError) as caught:
                kv.Scan(kv_pb2.ScanRequest(), timeout=10)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "n5" in caught.value.details()
    finally:
        for node_id in ("n4", "n5"):
            cluster.node(node_id).start()
