"""Routers keeping the topology in etcd (real etcd 3.4 members, shardd nodes and routers on
loopback; issue 15 item 4): they seed an empty prefix once and follow each other's changes
by watch; with etcd away they keep serving and refuse changes with UNAVAILABLE naming etcd,
then catch up; a watch whose history was compacted re-reads the key; with three members a
router fails over when its member stops; bad etcd input is refused and never overwritten.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from etcd_harness import current_revision, etcd_members, etcdctl, start_etcd, wait_etcd
from faults.proxy import FaultProxy
from harness import BIN, Proc, failed, free_port, router_proc, shardd_proc, wait_serving
from harness import write_cluster_toml as write_toml
from shardkv.client import Client
from shardkv.router.membership.store_etcd import open_etcd_store, parse_etcd_url
from shardkv.router.membership.topology import Topology, load_topology, parse_topology
from shardkv.v1 import admin_pb2, admin_pb2_grpc

PREFIX = "/shardkv/test"
EXTRA_TOML = "\n[rebalance]\nsettle_ms = 300\n\n[repair]\ninterval_s = 0\n"


@dataclass
class EtcdCluster:
    base: Path
    etcd: list[Proc]
    nodes: list[Proc]
    routers: list[Proc]

    def node(self, node_id: str) -> Proc:
        return next(n for n in self.nodes if n.name == node_id)

    def all(self) -> list[Proc]:
        return [*self.routers, *self.nodes, *self.etcd]


def write_config(path: Path, nodes: list[Proc], extra: str = EXTRA_TOML) -> Path:
    config = write_toml(path, nodes)
    config.write_text(config.read_text() + extra)
    return config


def etcd_url(*members: Proc | FaultProxy) -> str:
    return f"etcd://{','.join(m.address for m in members)}{PREFIX}"


@pytest.fixture
def cluster(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[EtcdCluster]:
    """One etcd member, nodes n1..n5 (n1..n3 in the ring) and no router yet."""
    nodes = [shardd_proc(tmp_path, f"n{i}") for i in range(1, 6)]
    running = EtcdCluster(tmp_path, etcd_members(tmp_path, getattr(request, "param", 1)), nodes, [])
    try:
        start_etcd(running.etcd)
        for node in nodes:
            node.start(wait=False)
        for node in nodes:
            wait_serving(node.address)
        yield running
    finally:
        if failed(request):
            print("\n".join(f"===== {p.name} =====\n{p.log()[-8000:]}" for p in running.all()))
        for proc in running.all():
            proc.stop()


def start_routers(cluster: EtcdCluster, *urls: str, configs: list[Path] | None = None) -> None:
    """One router per url (r1, r2, ...), started together so that they seed at once."""
    default = write_config(cluster.base / "cluster.toml", cluster.nodes[:3])
    for index, url in enumerate(urls):
        config = configs[index] if configs else default
        extra = ["--topology", url]
        cluster.routers.append(router_proc(cluster.base, config, f"r{index + 1}", extra=extra))
    for router in cluster.routers:
        router.start(wait=False)
    for router in cluster.routers:
        wait_serving(router.address)


def admin(router: Proc) -> admin_pb2_grpc.AdminStub:
    return admin_pb2_grpc.AdminStub(grpc.insecure_channel(router.address))


def served(router: Proc) -> tuple[int, list[tuple[str, str]]]:
    reply = admin(router).GetTopology(admin_pb2.GetTopologyRequest(), timeout=5)
    return reply.epoch, sorted((n.id, n.membership) for n in reply.nodes)


def stored(cluster: EtcdCluster) -> Topology:
    text = etcdctl(cluster.etcd, "get", f"{PREFIX}/topology", "--print-value-only")
    return parse_topology(text, source="etcd")


def wait_served(router: Proc, epoch: int, timeout_s: float = 20) -> float:
    """Waits until router serves epoch, or a later one, with no move; returns when it did
    (monotonic). Later: a node's first claim of its directory is one more topology write."""
    deadline = time.monotonic() + timeout_s
    while True:
        now, nodes = served(router)
        if now >= epoch and all(state == "member" for _, state in nodes):
            return time.monotonic()
        assert time.monotonic() < deadline, f"{router.name} serves {now} {nodes}, not {epoch}"
        time.sleep(0.05)


def add_node(router: Proc, node: Proc) -> admin_pb2.Move:
    request = admin_pb2.AddNodeRequest(id=node.name, address=node.address)
    return admin(router).AddNode(request, timeout=20)


@pytest.mark.timeout(120)
def test_routers_seed_once_and_follow_each_others_changes(cluster: EtcdCluster) -> None:
    # r2's file differs (another settle delay): only one file seeds the prefix.
    other = write_config(cluster.base / "other.toml", cluster.nodes[:3], EXTRA_TOML + "\n")
    other.write_text(other.read_text().replace("settle_ms = 300", "settle_ms = 400"))
    first = write_config(cluster.base / "cluster.toml", cluster.nodes[:3])
    start_routers(cluster, etcd_url(*cluster.etcd), etcd_url(*cluster.etcd), configs=[first, other])
    logs = [router.log() for router in cluster.routers]
    assert sum(log.count("event=seeded etcd at") for log in logs) == 1, logs
    assert sum("is ignored (it only seeds an empty prefix)" in log for log in logs) == 1
    assert served(cluster.routers[0]) == served(cluster.routers[1])
    assert stored(cluster).rebalance.settle_ms in (300, 400)

    with Client(cluster.routers[0].address) as client:
        client.put(b"k", b"v")
    with Client(cluster.routers[1].address) as client:
        assert client.get(b"k") == b"v"

    seeded = first.read_text()
    add_node(cluster.routers[0], cluster.node("n4"))
    done = wait_served(cluster.routers[0], 3)
    followed = wait_served(cluster.routers[1], 3)
    print(f"r2 served the move's end {max(0.0, followed - done):.3f} s after r1 did")
    assert followed - done < 1.0
    topology = stored(cluster)
    assert topology.epoch >= 3 and [n.id for n in topology.nodes] == ["n1", "n2", "n3", "n4"]
    assert first.read_text() == seeded, "a router on etcd wrote its --config file"


@pytest.mark.timeout(120)
def test_etcd_away_keeps_serving_refuses_changes_then_catches_up(cluster: EtcdCluster) -> None:
    start_routers(cluster, etcd_url(*cluster.etcd), etcd_url(*cluster.etcd))
    r1, r2 = cluster.routers
    cluster.etcd[0].stop()
    for router in (r1, r2):
        with Client(router.address, timeout=5) as client:
            client.put(b"away/" + router.name.encode(), b"v")
            assert client.get(b"away/r1") in (b"v", None)
    with pytest.raises(grpc.RpcError) as refused:
        add_node(r1, cluster.node("n4"))
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert f"etcd at {cluster.etcd[0].address}" in (refused.value.details() or "")
    assert served(r1)[0] == served(r2)[0] == 1
    assert "changes refused until etcd returns" in r2.log()

    cluster.etcd[0].start(wait=False)
    wait_etcd(cluster.etcd[0])
    add_node(r1, cluster.node("n4"))
    wait_served(r1, 3)
    wait_served(r2, 3)
    assert "is reachable again" in r2.log()
    with Client(r2.address) as client:
        assert client.get(b"away/r1") == b"v" and client.get(b"away/r2") == b"v"


@pytest.mark.timeout(120)
def test_a_compacted_watch_reads_the_key_again(cluster: EtcdCluster) -> None:
    proxy = FaultProxy(cluster.etcd[0].address).start()  # r1 reaches etcd only through it
    try:
        start_routers(cluster, etcd_url(proxy), etcd_url(*cluster.etcd))
        r1, r2 = cluster.routers
        proxy.cut()
        time.sleep(0.5)  # r1's watch breaks
        add_node(r2, cluster.node("n4"))
        wait_served(r2, 3)
        revision = current_revision(cluster.etcd)
        etcdctl(cluster.etcd, "compact", str(revision), "--physical")
        assert served(r1)[0] == 1
        proxy.heal()
        wait_served(r1, 3)
        assert "history is compacted up to revision" in r1.log()
        assert served(r1) == served(r2)
    finally:
        proxy.stop()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("cluster", [3], indirect=True)
def test_three_members_a_router_fails_over_when_its_member_stops(cluster: EtcdCluster) -> None:
    e1, e2, e3 = cluster.etcd
    start_routers(cluster, etcd_url(e1, e2, e3), etcd_url(e3, e2))
    r1, r2 = cluster.routers
    e1.stop()  # the member r1 talks to
    add_node(r1, cluster.node("n4"))
    wait_served(r1, 3)
    wait_served(r2, 3)
    e1.start(wait=False)
    wait_etcd(e1)
    add_node(r2, cluster.node("n5"))
    wait_served(r2, 5)
    wait_served(r1, 5)
    assert [n.id for n in stored(cluster).nodes] == ["n1", "n2", "n3", "n4", "n5"]


def run_router(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [str(BIN / "shardkv-router"), "--id", "r1", "--config", str(config)]
    argv += ["--listen", f"127.0.0.1:{free_port()}", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=40, check=False)


@pytest.mark.timeout(120)
def test_bad_etcd_input_is_refused_and_never_overwritten(tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "cluster.toml", [shardd_proc(tmp_path, f"n{i}") for i in (1, 2, 3)]
    )
    result = run_router(config, "--topology", "http://127.0.0.1:2379/x")
    assert result.returncode == 2 and "is not etcd://HOST:PORT" in result.stderr
    result = run_router(config, "--topology", "etcd://127.0.0.1:2379")
    assert result.returncode == 2 and "names no PREFIX" in result.stderr

    away = f"127.0.0.1:{free_port()}"
    began = time.monotonic()
    result = run_router(config, "--topology", f"etcd://{away}/x")
    assert result.returncode == 1, result.stderr
    assert f"etcd at {away} is unreachable" in result.stderr and "waited 10 s" in result.stderr
    assert time.monotonic() - began < 25

    members = etcd_members(tmp_path)
    try:
        start_etcd(members)
        url = f"etcd://{members[0].address}"
        etcdctl(members, "put", "/foreign/data", "theirs")
        result = run_router(config, "--topology", f"{url}/foreign")
        assert result.returncode == 1
        assert "the prefix holds 1 key(s) but no shardkv topology (e.g. /foreign/data)" in (
            result.stderr
        )
        etcdctl(members, "put", "/garbage/topology", "not = [a topology")
        result = run_router(config, "--topology", f"{url}/garbage")
        assert result.returncode == 1 and "not a shardkv topology" in result.stderr
        listed = etcdctl(members, "get", "/", "--prefix")
        assert listed.split() == [
            "/foreign/data",
            "theirs",
            "/garbage/topology",
            "not",
            "=",
            "[a",
            "topology",
        ]
    finally:
        for member in members:
            member.stop()


@pytest.mark.timeout(120)
def test_routers_opening_an_empty_prefix_at_once_all_serve_the_one_seed(tmp_path: Path) -> None:
    """A router that reads the prefix empty, then finds the key another router seeded in the
    moment between its two reads, serves that seed instead of calling the prefix foreign
    (once seen in CI: 'the prefix holds 1 key(s) but no shardkv topology (e.g. .../topology)')."""
    seed = load_topology(
        write_config(tmp_path / "cluster.toml", [shardd_proc(tmp_path, f"n{i}") for i in (1, 2, 3)])
    )
    members = etcd_members(tmp_path)

    async def race(prefix: str) -> list[Topology | BaseException]:
        target = parse_etcd_url(f"etcd://{members[0].address}{prefix}")
        opened = await asyncio.gather(
            *(open_etcd_store(target, seed=seed, seed_source="race") for _ in range(4)),
            return_exceptions=True,
        )
        served: list[Topology | BaseException] = []
        for result in opened:
            if isinstance(result, BaseException):
                served.append(result)
            else:
                store, topology = result
                await store.close()
                served.append(topology)
        return served

    try:
        start_etcd(members)
        for attempt in range(40):
            served = asyncio.run(race(f"/race/{attempt}"))
            assert served == [seed] * 4, served
    finally:
        for member in members:
            member.stop()
