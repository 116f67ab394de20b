"""Two routers writing the same keys at once: every replica ends with the same record."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import grpc
import pytest
from harness import router_proc, start_cluster
from shardkv.v1 import kv_pb2, kv_pb2_grpc, replica_pb2, replica_pb2_grpc

KEYS = [b"lww/%d" % i for i in range(40)]


def hammer(address: str, label: bytes, rounds: int, errors: list[BaseException]) -> None:
    try:
        with grpc.insecure_channel(address) as channel:
            kv = kv_pb2_grpc.KVStub(channel)
            for round_ in range(rounds):
                for key in KEYS:
                    if round_ % 3 == 2 and key.endswith(b"7"):
                        kv.Delete(kv_pb2.DeleteRequest(key=key), timeout=10)
                    else:
                        kv.Put(kv_pb2.PutRequest(key=key, value=label + b"%d" % round_), timeout=10)
    except BaseException as err:  # reported by the test thread
        errors.append(err)


@pytest.mark.timeout(90)
def test_concurrent_routers_converge(tmp_path: Path) -> None:
    cluster = start_cluster(tmp_path)
    # The second router's clock runs 50 ms ahead: versions still order every write.
    skewed = router_proc(tmp_path, cluster.config, "r2", extra=["--clock-offset-ms", "50"])
    cluster.routers.append(skewed.start())
    try:
        errors: list[BaseException] = []
        threads = [
            threading.Thread(target=hammer, args=(r.address, r.name.encode(), 6, errors))
            for r in cluster.routers
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert not errors, errors

        # Remaining replica writes finish in the background: poll until the replicas agree.
        deadline = time.monotonic() + 10
        while True:
            views = []
            for node in cluster.nodes:
                with grpc.insecure_channel(node.address) as channel:
                    stub = replica_pb2_grpc.ReplicaStub(channel)
                    reply = stub.Read(replica_pb2.ReadRequest(keys=KEYS), timeout=5)
                    views.append(
                        [(r.version, r.writer, r.tombstone, r.value) for r in reply.records]
                    )
            if views[0] == views[1] == views[2]:
                break
            assert time.monotonic() < deadline, "replicas did not converge"
            time.sleep(0.1)
        assert all(version for version, _, _, _ in views[0])
        # Both routers now read the same winner, the one every replica kept.
        for router in cluster.routers:
            with grpc.insecure_channel(router.address) as channel:
                kv = kv_pb2_grpc.KVStub(channel)
                for key, (version, _, tombstone, value) in zip(KEYS, views[0], strict=True):
                    got = kv.Get(kv_pb2.GetRequest(key=key), timeout=5)
                    assert got.found == (not tombstone)
                    if got.found:
                        assert (got.value, got.version) == (value, version)
    finally:
        cluster.stop()
