"""A scan through a router that missed a move is routed again, unseen by its client.

Three nodes (N=3, R=W=2) and two routers whose watch interval is a minute: n4 is added
through r1 and the move runs to its end (fences, switch, drops), while r2 still serves the
old epoch. The first Scan sent to r2 afterwards reaches nodes fenced at the newer epoch,
which refuse it; r2 must catch up and ask again under the new placement, so that very
call answers every key (before, it failed UNAVAILABLE: every node refused).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from harness import (
    Cluster,
    router_proc,
    shardd_proc,
    start_all,
    stopped_after,
    write_cluster_toml,
)
from shardkv.client import Client
from shardkv.v1 import admin_pb2, admin_pb2_grpc, kv_pb2, kv_pb2_grpc

KEYS = 600


@pytest.fixture
def cluster(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    nodes = [shardd_proc(tmp_path, f"n{i}") for i in range(1, 5)]
    config = write_cluster_toml(tmp_path / "cluster.toml", nodes[:3])
    text = config.read_text().replace("[timeouts]\n", "[timeouts]\nwatch_interval_ms = 60000\n")
    config.write_text(text + "\n[repair]\ninterval_s = 0\n")
    routers = [router_proc(tmp_path, config, "r1"), router_proc(tmp_path, config, "r2")]
    with stopped_after(Cluster(tmp_path, nodes, routers, config), request) as running:
        start_all(nodes, routers)
        yield running


def _epoch(address: str) -> int:
    with grpc.insecure_channel(address) as channel:
        stub = admin_pb2_grpc.AdminStub(channel)
        return int(stub.GetTopology(admin_pb2.GetTopologyRequest(), timeout=5).epoch)


def _add_and_finish(router: str, node_id: str, address: str, timeout_s: float = 60.0) -> None:
    with grpc.insecure_channel(router) as channel:
        stub = admin_pb2_grpc.AdminStub(channel)
        stub.AddNode(admin_pb2.AddNodeRequest(id=node_id, address=address), timeout=30)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            moves = stub.GetMoves(admin_pb2.GetMovesRequest(), timeout=5)
            if not moves.HasField("current") and moves.history:
                assert moves.history[-1].state == admin_pb2.MOVE_DONE, moves.history[-1]
                return
            time.sleep(0.1)
    raise TimeoutError(f"adding {node_id} did not finish in {timeout_s}s")


@pytest.mark.timeout(120)
def test_a_scan_routed_under_an_old_epoch_is_routed_again(cluster: Cluster) -> None:
    r1, r2 = cluster.routers
    written = {b"s/%04d" % i: b"v%d" % i for i in range(KEYS)}
    with Client(r1.address) as client:
        client.put_many(written)
    _add_and_finish(r1.address, "n4", cluster.node("n4").address)
    assert _epoch(r2.address) < _epoch(r1.address), "r2 learned of the move by itself"

    # One raw call (the SDK could retry): it must answer, and answer everything.
    with grpc.insecure_channel(r2.address) as channel:
        kv = kv_pb2_grpc.KVStub(channel)
        reply = kv.Scan(kv_pb2.ScanRequest(prefix=b"s/", limit=KEYS), timeout=10)
    assert {r.key: r.value for r in reply.records} == written
    assert not reply.next_page_token
    assert _epoch(r2.address) == _epoch(r1.address)
