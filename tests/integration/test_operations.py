"""Operating a cluster: metrics scraped over HTTP, `shardctl status`, request ids followed
through the logs, and backup/restore, all against real processes."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from harness import BIN, Cluster, Proc, start_cluster, wait_serving
from prometheus_client.parser import text_string_to_metric_families
from shardkv.client import Client, request_id
from shardkv.common.requestid import join
from shardkv.serving.tally import SizeHistogram
from shardkv.v1 import admin_pb2, kv_pb2, kv_pb2_grpc

OBSERVED = ["--metrics-listen", "127.0.0.1:0", "--log-requests"]
Series = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """3 nodes and a router, each serving metrics on a port of its own and logging every
    request."""
    cluster = start_cluster(
        tmp_path_factory.mktemp("observed"), router_extra=OBSERVED, node_extra=OBSERVED
    )
    try:
        yield cluster
    finally:
        cluster.stop()


def metrics_url(proc: Proc) -> str:
    """Where proc serves metrics, from its log (the last start's line)."""
    return re.findall(r"metrics_serving url=(\S+)", proc.log())[-1]


def scrape(proc: Proc) -> Series:
    text = urllib.request.urlopen(metrics_url(proc), timeout=5).read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(series: Series, name: str, **labels: str) -> float:
    return series.get((name, frozenset(labels.items())), 0.0)


def total(series: Series, name: str, **labels: str) -> float:
    """Sum of name over every series whose labels include labels."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in series.items() if n == name and wanted <= ls)


def eventually(check: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def shardctl(address: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "shardctl"), "--addr", address, *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def status(cluster: Cluster) -> dict[str, dict[str, object]]:
    """Nodes by id from `shardctl status --json --interval 0`."""
    result = shardctl(cluster.router.address, "status", "--json", "--interval", "0")
    assert result.returncode == 0, result.stderr
    return {node["id"]: node for node in json.loads(result.stdout)["nodes"]}


@pytest.mark.timeout(60)
def test_metrics_count_requests_quorums_and_node_work(observed: Cluster) -> None:
    router_before = scrape(observed.router)
    nodes_before = {n.name: scrape(n) for n in observed.nodes}
    prefix = uuid.uuid4().hex
    puts = 25
    with grpc.insecure_channel(observed.router.address) as channel:
        kv = kv_pb2_grpc.KVStub(channel)
        for i in range(puts):
            kv.Put(kv_pb2.PutRequest(key=f"{prefix}-{i}".encode(), value=b"v" * i), timeout=5)
        with pytest.raises(grpc.RpcError):
            kv.Put(kv_pb2.PutRequest(key=b"", value=b"v"), timeout=5)

    def delta(name: str, **labels: str) -> float:
        return value(scrape(observed.router), name, **labels) - value(router_before, name, **labels)

    kv_put = {"service": "shardkv.v1.KV", "method": "Put"}
    assert delta("shardkv_grpc_requests_total", code="OK", **kv_put) == puts
    assert delta("shardkv_grpc_requests_total", code="INVALID_ARGUMENT", **kv_put) == 1
    assert delta("shardkv_grpc_request_duration_seconds_count", **kv_put) == puts + 1
    assert delta("shardkv_router_replicas_required_total", op="write") == 2 * puts  # W=2
    assert delta("shardkv_router_replicas_acknowledged_total", op="write") >= 2 * puts
    assert delta("shardkv_router_quorum_failures_total", op="write") == 0
    after = scrape(observed.router)
    assert value(after, "shardkv_router_node_up", node="n1") == 1
    # Every put reaches its 3 owners; the third acknowledgement may come after the answer.
    eventually(
        lambda: (
            total(scrape(observed.router), "shardkv_router_node_batch_items_sum", call="apply")
            - total(router_before, "shardkv_router_node_batch_items_sum", call="apply")
            == 3 * puts
        )
    )

    def committed() -> float:
        return sum(
            value(scrape(n), "shardkv_node_records_committed_total")
            - value(nodes_before[n.name], "shardkv_node_records_committed_total")
            for n in observed.nodes
        )

    eventually(lambda: committed() == 3 * puts)
    for node in observed.nodes:
        now, before = scrape(node), nodes_before[node.name]
        records = value(now, "shardkv_node_store_records") - value(
            before, "shardkv_node_store_records"
        )
        assert records == puts
        applies = value(
            now,
            "shardkv_grpc_requests_total",
            service="shardkv.v1.Replica",
            method="Apply",
            code="OK",
        ) - value(
            before,
            "shardkv_grpc_requests_total",
            service="shardkv.v1.Replica",
            method="Apply",
            code="OK",
        )
        assert 1 <= applies <= puts  # coalesced: never more calls than puts
        assert value(now, "shardkv_node_commit_batch_items_count") == value(
            now, "shardkv_node_commits_total"
        )
        assert 0 < value(now, "shardkv_node_store_map_fill_ratio") < 1
        # The puts were journaled; a bulk read (an anti-entropy pass) may have moved them
        # into LMDB since, with a checkpoint.
        journaled = value(now, "shardkv_node_journal_records")
        checkpoints = value(now, "shardkv_node_checkpoints_total")
        assert journaled >= puts or checkpoints > value(before, "shardkv_node_checkpoints_total")
        assert value(now, "shardkv_node_store_used_bytes") > 0
        # A store this small is read from memory: no read waited for the disk.
        assert now[("shardkv_node_read_disk_waits_total", frozenset())] == 0


@pytest.mark.timeout(60)
def test_request_id_appears_in_router_and_node_logs(observed: Cluster) -> None:
    trace = f"trace-{uuid.uuid4().hex[:12]}"
    with Client(observed.router.address) as kv, request_id(trace):
        kv.put(b"traced", b"value")
    unary = f"unary-{uuid.uuid4().hex[:12]}"
    with grpc.insecure_channel(observed.router.address) as channel:
        kv_pb2_grpc.KVStub(channel).Get(
            kv_pb2.GetRequest(key=b"traced"), metadata=(("x-request-id", unary),), timeout=5
        )

    def nodes_logging(rid: str, method: str) -> list[str]:
        return [
            n.name
            for n in observed.nodes
            if re.search(rf"method=/shardkv\.v1\.Replica/{method} .*request_id=[^ ]*{rid}", n.log())
        ]

    for rid, router_method, node_method, replicas in (
        (trace, "BatchWrite", "Apply", 3),
        (unary, "Get", "Read", 2),
    ):
        assert re.search(
            rf"method=/shardkv\.v1\.KV/{router_method} code=OK .*request_id={rid}",
            observed.router.log(),
        ), observed.router.log()[-3000:]
        eventually(lambda rid=rid, m=node_method, r=replicas: len(nodes_logging(rid, m)) >= r)


@pytest.mark.timeout(60)
def test_status_json_follows_a_killed_node_down_and_back(observed: Cluster) -> None:
    with Client(observed.router.address) as kv:
        kv.put_many({f"status-{i}": b"v" for i in range(20)})
    nodes = status(observed)
    assert {n["state"] for n in nodes.values()} == {"UP"}
    assert all(n["reachable"] and n["keys"] > 0 and n["disk_bytes"] > 0 for n in nodes.values())

    victim = observed.node("n2")
    with Client(observed.router.address) as admin:

        def state() -> str:
            [n2] = [n for n in admin.status().topology.nodes if n.id == "n2"]
            return str(admin_pb2.NodeState.Name(n2.state))

        victim.kill()
        killed = time.monotonic()
        # Health checks every 200 ms, each with a 500 ms timeout (a refused connection
        # fails at once); the router's Admin view is what shardctl shows. How soon is a
        # measurement (printed), not a test's bound: this waits generously.
        eventually(lambda: state() == "DOWN", timeout_s=30)
        seen_down = time.monotonic() - killed
    print(f"status: n2 killed, reported DOWN after {seen_down:.2f}s")
    down = status(observed)["n2"]
    assert down["state"] == "DOWN" and not down["reachable"] and down["error"]

    victim.start()
    eventually(lambda: status(observed)["n2"]["state"] == "UP", timeout_s=10)
    back = status(observed)["n2"]
    assert back["reachable"] and back["keys"] > 0

    # ops/s: node work between two samples while a client writes.
    stop = threading.Event()

    def write() -> None:
        with Client(observed.router.address) as kv:
            while not stop.is_set():
                kv.put_many({f"load-{i}": b"x" for i in range(50)})

    writer = threading.Thread(target=write)
    writer.start()
    try:
        result = shardctl(observed.router.address, "status", "--json", "--interval", "0.5")
    finally:
        stop.set()
        writer.join(10)
    assert result.returncode == 0, result.stderr
    rates = [n["ops_per_second"] for n in json.loads(result.stdout)["nodes"]]
    assert all(rate is not None and rate > 0 for rate in rates), rates
    table = shardctl(observed.router.address, "status", "--interval", "0")
    assert table.returncode == 0 and "OPS/S" in table.stdout and "n2" in table.stdout


@pytest.mark.timeout(90)
def test_backup_wipe_restore_round_trip(cluster: Cluster, tmp_path: Path) -> None:
    with Client(cluster.router.address) as kv:
        kv.put_many({f"key-{i:04d}": f"value-{i}".encode() * (i % 7 + 1) for i in range(400)})
        for i in range(0, 400, 10):
            kv.delete(f"key-{i:04d}")
        before = {r.key: (r.value, r.version) for r in kv.scan()}
    assert len(before) == 360

    backup = tmp_path / "backup"
    result = shardctl(cluster.router.address, "--json", "backup", str(backup))
    assert result.returncode == 0, result.stderr
    manifest = json.loads(result.stdout)
    assert [n["id"] for n in manifest["nodes"]] == ["n1", "n2", "n3"]
    assert all(n["records"] == 400 for n in manifest["nodes"])  # N=3, tombstones included
    assert (backup / "cluster.toml").exists() and (backup / "topology.json").exists()

    # Wipe: stop everything, delete every node's data, start empty.
    cluster.stop()
    for node in cluster.nodes:
        shutil.rmtree(cluster.base / node.name)
    for proc in cluster.nodes:
        proc.start(wait=False)
    for proc in cluster.nodes:
        wait_serving(proc.address)
    cluster.router.start()
    with Client(cluster.router.address) as kv:
        assert list(kv.scan()) == []

    result = shardctl(cluster.router.address, "--json", "restore", str(backup))
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["sent"] == 1200 and summary["restored"] == 1200 and not summary["failures"]

    with Client(cluster.router.address) as kv:
        after = {r.key: (r.value, r.version) for r in kv.scan()}
        assert after == before  # values and versions, deleted keys still absent
        assert kv.get("key-0000") is None
        # A write after the restore orders after the restored versions.
        assert kv.put("key-0001", b"new") > before[b"key-0001"][1]

    damaged = tmp_path / "damaged"
    shutil.copytree(backup, damaged)
    with (damaged / "nodes" / "n1.snapshot").open("r+b") as stream:
        stream.seek(10)
        stream.write(b"\xff")
    result = shardctl(cluster.router.address, "restore", str(damaged))
    assert result.returncode == 2 and "damaged" in result.stderr


def test_size_histogram_buckets_and_forwarded_ids() -> None:
    histogram = SizeHistogram()
    for size in (1, 2, 3, 4, 5, 512, 10_000):
        histogram.observe(size)
    buckets = dict(histogram.cumulative())
    assert (buckets["1"], buckets["2"], buckets["4"], buckets["8"]) == (1, 2, 4, 5)
    assert buckets["512"] == 6 and buckets["4096"] == 6 and buckets["+Inf"] == 7
    assert histogram.total == 10_527
    assert join(["a", None, "b", "a"]) == "a,b"
    assert join([None]) is None
    many = join(f"id{i}" for i in range(20))
    assert many is not None and many.endswith(",+4") and many.count(",") == 16
