"""Data-directory identities with real processes: shardd refuses another node's directory,
a new cluster claims its directories without changing the topology, a restarted node's
generation advances (directory, then cluster.toml), `shardctl node rebuild` and `shardctl
status`, and a directory claimed by another cluster never counts until rebuilt by hand."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from harness import (
    BIN,
    Cluster,
    Proc,
    router_proc,
    shardd_proc,
    start_cluster,
    wait_serving,
    write_cluster_toml,
)
from shardkv.client import Client
from shardkv.router.membership.topology import load_topology
from shardkv.shardd.identity import Identity
from shardkv.shardd.store import Store
from shardkv.v1 import admin_pb2, admin_pb2_grpc, kv_pb2, kv_pb2_grpc

WAIT_S = 30.0


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    running = start_cluster(tmp_path)
    try:
        yield running
    finally:
        running.stop()


def shardctl(router: Proc, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "shardctl"), "--addr", router.address, *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def topology(router: Proc) -> admin_pb2.Topology:
    with grpc.insecure_channel(router.address) as channel:
        reply: admin_pb2.Topology = admin_pb2_grpc.AdminStub(channel).GetTopology(
            admin_pb2.GetTopologyRequest(), timeout=5
        )
    return reply


def wait_directory(router: Proc, node_id: str, state: str, generation: int = 0) -> None:
    """Waits until the router sees node_id's directory in state, expected at generation
    (at least)."""
    deadline = time.monotonic() + WAIT_S
    while True:
        node = next(n for n in topology(router).nodes if n.id == node_id)
        if node.directory == state and node.expected_generation >= generation:
            return
        assert time.monotonic() < deadline, f"{node_id}: {node}"
        time.sleep(0.05)


def test_shardd_refuses_another_nodes_directory(tmp_path: Path) -> None:
    n1 = shardd_proc(tmp_path, "n1").start()
    n1.stop()
    as_n2 = subprocess.run(
        [
            str(BIN / "shardd"),
            "--id",
            "n2",
            "--listen",
            "127.0.0.1:0",
            "--data",
            str(tmp_path / "n1"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert as_n2.returncode == 2, as_n2.stderr
    assert "belongs to node 'n1', not to 'n2'" in as_n2.stderr, as_n2.stderr


def test_a_new_cluster_claims_its_directories_and_a_restart_advances_one(cluster: Cluster) -> None:
    before = topology(cluster.router)
    assert before.epoch == 1, "claiming a new cluster's directories writes no topology"
    assert [(n.directory, n.generation) for n in before.nodes] == [("ok", 0)] * 3
    cluster.node("n2").restart()
    wait_directory(cluster.router, "n2", "ok", 1)
    after = topology(cluster.router)
    assert after.epoch == 2
    assert [(n.id, n.generation, n.expected_generation) for n in after.nodes] == [
        ("n1", 0, 0),
        ("n2", 1, 1),
        ("n3", 0, 0),
    ]
    assert load_topology(cluster.config).node("n2").generation == 1


def test_shardctl_rebuilds_a_node_and_status_shows_it(cluster: Cluster) -> None:
    with Client(cluster.router.address) as client:
        client.put_many({b"k%03d" % i: b"v" for i in range(300)})
    done = shardctl(cluster.router, "node", "rebuild", "n3")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "rebuild of n3 (requested): REBUILD_DONE" in done.stdout, done.stdout
    assert "600 of 600 records copied from n1, n2" in done.stdout, done.stdout
    wait_directory(cluster.router, "n3", "ok", 1)
    status = shardctl(cluster.router, "status", "--json", "--interval", "0")
    assert status.returncode == 0, status.stderr
    nodes = {n["id"]: n for n in json.loads(status.stdout)["nodes"]}
    assert nodes["n3"]["directory"] == "ok" and nodes["n3"]["generation"] == 1
    assert nodes["n3"]["rebuild"]["state"] == "REBUILD_DONE"
    unknown = shardctl(cluster.router, "node", "rebuild", "n9")
    assert unknown.returncode == 2 and "no node 'n9'" in unknown.stderr, unknown.stderr


def refuses_all_naming_n3(router: Proc) -> None:
    """While n3 does not count, every key (N=3 of 3 nodes) needs one reply more than at
    QUORUM: a write and a read at QUORUM succeed (3 of 3 replies), at ALL they cannot (4
    of 3), and the error names n3 as the owner that raised the count."""
    with grpc.insecure_channel(router.address) as channel:
        kv = kv_pb2_grpc.KVStub(channel)
        key = b"identity/all"
        kv.Put(kv_pb2.PutRequest(key=key, value=b"v", consistency=kv_pb2.QUORUM), timeout=10)
        got = kv.Get(kv_pb2.GetRequest(key=key, consistency=kv_pb2.QUORUM), timeout=10)
        assert got.value == b"v"
        for call in (
            lambda: kv.Put(kv_pb2.PutRequest(key=key, value=b"w", consistency=kv_pb2.ALL)),
            lambda: kv.Get(kv_pb2.GetRequest(key=key, consistency=kv_pb2.ALL)),
        ):
            with pytest.raises(grpc.RpcError) as refused:
                call()
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            details = refused.value.details() or ""
            assert "3 of 4 required replicas" in details, details
            assert "not counted yet or joining: n3" in details, details


def test_a_directory_of_another_cluster_never_counts_until_rebuilt(tmp_path: Path) -> None:
    nodes = [shardd_proc(tmp_path, f"n{i}") for i in (1, 2, 3)]
    config = write_cluster_toml(tmp_path / "cluster.toml", nodes)
    config.write_text('cluster_id = "blue"\n' + config.read_text())
    # n3's directory was claimed by another cluster (a disk moved between clusters).
    store = Store(tmp_path / "n3")
    store.meta(b"identity", Identity("n3", "green", 5, claimed=True).encode())
    store.close()
    router = router_proc(tmp_path, config)
    procs = [*nodes, router]
    try:
        for node in nodes:
            node.start(wait=False)
        for node in nodes:
            wait_serving(node.address)
        router.start()
        # n1 and n2 come to count (claimed, or rebuilt empty when a round saw n3 claimed
        # first: a loaded machine caught n2 still rebuilding when n3 was first judged).
        for node_id, state in (("n1", "ok"), ("n2", "ok"), ("n3", "foreign")):
            wait_directory(router, node_id, state)
        assert [n.directory for n in topology(router).nodes] == ["ok", "ok", "foreign"]
        time.sleep(1)  # never rebuilt by the router itself
        assert next(n for n in topology(router).nodes if n.id == "n3").directory == "foreign"
        refuses_all_naming_n3(router)
        done = shardctl(router, "node", "rebuild", "n3")
        assert done.returncode == 0, done.stdout + done.stderr
        wait_directory(router, "n3", "ok", 1)
    finally:
        for proc in procs:
            proc.stop()
