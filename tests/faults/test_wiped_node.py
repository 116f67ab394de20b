"""A node restarted on an empty or rolled-back data directory is not counted until rebuilt.

Three nodes, N=3, R=W=2. 100 keys are written with every node up, then n3 is stopped and
all 200 keys are written again, so each acknowledged write sits on n1 and n2 only. Then n1
loses its directory (wiped, or replaced by a copy taken before those writes), n2 is stopped
and n3 and n1 start: a quorum read of R=2 can only ask n1 and n3, neither of which holds
the writes. Before data directories had an identity, every one of those reads answered
the older value (or not-found) for an acknowledged write, 200 of 200 in both cases. Now
every one is refused (UNAVAILABLE): n1 is a pending owner of its ranges until it is
rebuilt, so each of its keys needs three replies. Once n2 is back, the router rebuilds n1
from n2 and n3 by itself while writes go on; n1 then holds every acknowledged write, reads
succeed and the history checker finds nothing wrong.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from harness import stopped_after
from shardkv.v1 import admin_pb2, admin_pb2_grpc, kv_pb2, kv_pb2_grpc

from faults.checker import check
from faults.cluster import (
    FaultyCluster,
    converge,
    final_state,
    read_records,
    start_faulty_cluster,
    wait_node_state,
)
from faults.history import FAILED, GET, OK, PUT, UNKNOWN, Op

KEYS = 200
# Generous: a rebuild of these keys takes well under a second; fail only when it never ends.
REBUILD_TIMEOUT_S = 60.0


@pytest.fixture
def cluster(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[FaultyCluster]:
    with stopped_after(start_faulty_cluster(tmp_path), request) as running:
        yield running


def put(kv: kv_pb2_grpc.KVStub, key: bytes, value: bytes, worker: str, ops: list[Op]) -> None:
    start = time.monotonic()
    try:
        version = kv.Put(kv_pb2.PutRequest(key=key, value=value), timeout=10).version
    except grpc.RpcError as err:
        ops.append(Op(worker, PUT, key, value, start, time.monotonic(), UNKNOWN, error=str(err)))
        return
    ops.append(Op(worker, PUT, key, value, start, time.monotonic(), OK, version))


def put_all(router: str, keys: list[bytes], tag: bytes, ops: list[Op]) -> None:
    with grpc.insecure_channel(router) as channel:
        kv = kv_pb2_grpc.KVStub(channel)
        for key in keys:
            put(kv, key, tag + key, "setup", ops)
    assert all(op.outcome == OK for op in ops), "writes with two of three nodes up must succeed"


def get_all(router: str, keys: list[bytes], ops: list[Op]) -> dict[str, int]:
    """Reads every key at the default R=2; counts the outcomes."""
    counts = {"unavailable": 0, "found": 0, "not_found": 0}
    with grpc.insecure_channel(router) as channel:
        kv = kv_pb2_grpc.KVStub(channel)
        for key in keys:
            start = time.monotonic()
            try:
                reply = kv.Get(kv_pb2.GetRequest(key=key), timeout=10)
            except grpc.RpcError as err:
                assert err.code() == grpc.StatusCode.UNAVAILABLE, err
                counts["unavailable"] += 1
                ops.append(Op("reader", GET, key, None, start, time.monotonic(), FAILED))
                continue
            value = reply.value if reply.found else None
            counts["found" if reply.found else "not_found"] += 1
            ops.append(Op("reader", GET, key, value, start, time.monotonic(), OK, reply.version))
    return counts


def node_status(router: str, node_id: str) -> admin_pb2.NodeStatus:
    with grpc.insecure_channel(router) as channel:
        topology = admin_pb2_grpc.AdminStub(channel).GetTopology(
            admin_pb2.GetTopologyRequest(), timeout=5
        )
    return next(node for node in topology.nodes if node.id == node_id)


def wait_recorded(router: str, node_id: str, generation: int) -> None:
    """Waits until the topology expects node_id's directory at generation (or above)."""
    deadline = time.monotonic() + REBUILD_TIMEOUT_S
    while node_status(router, node_id).expected_generation < generation:
        assert time.monotonic() < deadline, f"{node_id}'s generation {generation} never recorded"
        time.sleep(0.05)


def wait_rebuilt(router: str, node_id: str) -> admin_pb2.Rebuild:
    """Waits until node_id counts again after a completed rebuild; returns the rebuild."""
    deadline = time.monotonic() + REBUILD_TIMEOUT_S
    with grpc.insecure_channel(router) as channel:
        admin = admin_pb2_grpc.AdminStub(channel)
        while True:
            rebuilds = admin.GetRebuilds(admin_pb2.GetRebuildsRequest(), timeout=5).rebuilds
            done = [
                r for r in rebuilds if r.node_id == node_id and r.state == admin_pb2.REBUILD_DONE
            ]
            if done and node_status(router, node_id).directory == "ok":
                return done[0]
            assert time.monotonic() < deadline, f"{node_id} not rebuilt: {list(rebuilds)}"
            time.sleep(0.05)


def lose_directory(cluster: FaultyCluster, replace_with: Path | None) -> None:
    """Stops n1 and n2, wipes n1's directory (or puts replace_with in its place), starts n3
    and n1: only n1 and n3 can answer, and neither holds what n3 missed."""
    n1 = cluster.node("n1")
    n1.stop()
    shutil.rmtree(cluster.base / "n1")
    if replace_with is not None:
        shutil.copytree(replace_with, cluster.base / "n1")
    cluster.node("n2").stop()
    cluster.node("n3").start()
    n1.start()
    router = cluster.router.address
    wait_node_state(router, "n2", admin_pb2.DOWN)
    wait_node_state(router, "n1", admin_pb2.UP)
    wait_node_state(router, "n3", admin_pb2.UP)


class Writer:
    """Overwrites keys through the router on a thread until stopped; records every put."""

    def __init__(self, router: str, keys: list[bytes]) -> None:
        self.router, self.keys, self.ops = router, keys, []  # type: list[Op]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Writer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        with grpc.insecure_channel(self.router) as channel:
            kv = kv_pb2_grpc.KVStub(channel)
            round_ = 0
            while not self._stop.is_set():
                round_ += 1
                for key in self.keys[:50]:
                    put(kv, key, b"v3-%d-" % round_ + key, "writer", self.ops)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("how", ["wiped", "old copy"])
def test_a_lost_directory_never_counts_until_rebuilt(cluster: FaultyCluster, how: str) -> None:
    router = cluster.router.address
    keys = [b"lost/%03d" % i for i in range(KEYS)]
    ops: list[Op] = []
    put_all(router, keys[:100], b"v1-", ops)
    copy = None
    if how == "old copy":
        n1 = cluster.node("n1")
        n1.stop()
        copy = shutil.copytree(cluster.base / "n1", cluster.base / "n1-copy")
        n1.start()
        wait_recorded(router, "n1", 1)  # the new run advanced n1's generation past the copy's
    cluster.node("n3").stop()
    wait_node_state(router, "n3", admin_pb2.DOWN)
    put_all(router, keys, b"v2-", ops)
    lose_directory(cluster, copy)

    counts = get_all(router, keys, ops)
    print(f"\n{how}: quorum reads (R=2) with only n1 and n3 up: {counts}")
    assert counts == {"unavailable": KEYS, "found": 0, "not_found": 0}
    assert node_status(router, "n1").directory == ("new" if how == "wiped" else "behind")

    started = time.monotonic()
    with Writer(router, keys) as writer:
        cluster.node("n2").start()
        rebuild = wait_rebuilt(router, "n1")
        took = time.monotonic() - started
    ops += writer.ops
    acknowledged = {op.key: op.version for op in ops if op.kind == PUT and op.outcome == OK}
    held = read_records(cluster.node("n1").address, sorted(acknowledged))
    missing = [r.key for r in held if r.version < acknowledged[r.key]]
    assert not missing, f"n1 lacks {len(missing)} acknowledged writes after its rebuild"
    print(
        f"{how}: n1 rebuilt ({rebuild.reason}) {took:.2f} s after n2 started:"
        f" {rebuild.keys_copied} records copied from {', '.join(rebuild.sources)} in"
        f" {(rebuild.finished_ms - rebuild.started_ms) / 1000:.2f} s,"
        f" {rebuild.records_purged} purged, generation {rebuild.generation};"
        f" {len(writer.ops)} writes meanwhile"
    )
    after = get_all(router, keys, ops)
    assert after["unavailable"] == 0, after
    converge(cluster, keys)
    verdict = check(ops, final_state(cluster, keys))
    print(f"{how}: {verdict.summary()}")
    assert not verdict.problems(), verdict.problems()
