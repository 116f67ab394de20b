"""Routers starting together never take a new cluster's fresh directories for lost ones.

Five fresh nodes, N=3, R=W=2 (issue 15, multi-host tests): two routers on one etcd
topology started at the same moment; r1 read r2's claims of the directories half made (n1
claimed, n2..n5 not yet), took n2..n5 for replaced disks, began rebuilding all four, and
every write failed ("3 of 4 required replicas"). A claim another router made (or is
making) is not a wipe: a router judges against the newest stored topology and the
directories as they are now, and completes a new cluster's claims itself while nothing
was written yet.

The first two tests assert the same outcome: every router sees every directory ``ok`` at
generation 0, the topology is unchanged (epoch 1: claims write none), writes through every
router succeed, and no router ever judged a directory new, behind, foreign or ahead, or
began a rebuild (their logs say so when they do). The third checks the other side: a
directory wiped after data was written is still rebuilt. The fourth, a router whose
topology lags the store: it judges a directory against what the store holds now.
"""

from __future__ import annotations

import logging
import re
import shutil
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from etcd_harness import etcd_members, start_etcd
from harness import (
    BIN,
    Proc,
    failed,
    free_port,
    shardd_proc,
    wait_serving,
    write_cluster_toml,
)
from shardkv.client import Client
from shardkv.v1 import admin_pb2, admin_pb2_grpc, replica_pb2, replica_pb2_grpc

log = logging.getLogger(__name__)

NODES = 5
WAIT_S = 15.0
# What a router logs when it judges a directory not ok, or starts rebuilding a node.
MISJUDGED = re.compile(r"data directory of \S+: (new|behind|foreign|ahead)\b|rebuild of ")
CLAIMED = re.compile(r"data directory of \S+ claimed")


@dataclass
class Site:
    """Processes of one test, all stopped (and resumed first) by their PIDs."""

    base: Path
    procs: list[Proc] = field(default_factory=list)

    def nodes(self, where: Path) -> list[Proc]:
        """NODES fresh nodes with their directories under where, started and SERVING."""
        where.mkdir(parents=True, exist_ok=True)
        nodes = [shardd_proc(where, f"n{i}") for i in range(1, NODES + 1)]
        self.procs += nodes
        for node in nodes:
            node.start(wait=False)
        for node in nodes:
            wait_serving(node.address)
        return nodes

    def router(self, where: Path, config: Path, router_id: str, topology: str = "") -> Proc:
        """A router (not started) with a state dir of its own, as on a host of its own."""
        address = f"127.0.0.1:{free_port()}"
        argv = [
            str(BIN / "shardkv-router"),
            "--id", router_id,
            "--config", str(config),
            "--listen", address,
            "--state-dir", str(where / f"{router_id}-state"),
            *(["--topology", topology] if topology else []),
        ]  # fmt: skip
        router = Proc(router_id, argv, address, where / f"{router_id}.log")
        self.procs.append(router)
        return router

    def stop(self, procs: list[Proc] | None = None) -> None:
        for proc in reversed(procs if procs is not None else self.procs):
            proc.signal(signal.SIGCONT)
            proc.stop()


@pytest.fixture
def site(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Site]:
    running = Site(tmp_path)
    try:
        yield running
    finally:
        running.stop()
        if failed(request):
            print("\n".join(f"===== {p.name} =====\n{p.log()[-8000:]}" for p in running.procs))


def identity(node: Proc) -> replica_pb2.DirectoryIdentity:
    with grpc.insecure_channel(node.address) as channel:
        reply: replica_pb2.DirectoryIdentity = replica_pb2_grpc.ReplicaStub(channel).Identity(
            replica_pb2.IdentityRequest(), timeout=5
        )
    return reply


def claim(node: Proc) -> None:
    """Claims node's fresh directory for an unnamed cluster at generation 0, with the very
    call a router's first check makes (router/membership/identity.py)."""
    with grpc.insecure_channel(node.address) as channel:
        replica_pb2_grpc.ReplicaStub(channel).SetIdentity(
            replica_pb2.SetIdentityRequest(
                expect_generation=0, expect_claimed=False, generation=0, advance_boot=True
            ),
            timeout=5,
        )


def topology(router: Proc) -> admin_pb2.Topology:
    with grpc.insecure_channel(router.address) as channel:
        reply: admin_pb2.Topology = admin_pb2_grpc.AdminStub(channel).GetTopology(
            admin_pb2.GetTopologyRequest(), timeout=5
        )
    return reply


def wait_all_ok(router: Proc) -> None:
    """Waits until router sees every directory ok; fails naming what it sees otherwise."""
    deadline = time.monotonic() + WAIT_S
    while True:
        seen = topology(router)
        states = [(n.id, n.directory, n.expected_generation) for n in seen.nodes]
        if all(state == "ok" for _, state, _ in states):
            assert seen.epoch == 1, f"{router.name}: claims wrote a topology: {seen}"
            assert all(g == 0 for _, _, g in states), f"{router.name}: {states}"
            return
        assert time.monotonic() < deadline, f"{router.name} sees {states}"
        time.sleep(0.05)


def write_through(router: Proc, tag: str) -> None:
    """100 puts through router: every one must be acknowledged."""
    with Client(router.address) as client:
        client.put_many({f"{tag}-{i:03d}".encode(): b"v" for i in range(100)})


def misjudged(routers: list[Proc]) -> list[str]:
    return [
        f"{r.name}: {line}"
        for r in routers
        for line in r.log().splitlines()
        if MISJUDGED.search(line)
    ]


def wait_log(proc: Proc, pattern: re.Pattern[str], timeout_s: float = WAIT_S) -> None:
    """Polls proc's log (each line is flushed as it is logged) until pattern appears."""
    deadline = time.monotonic() + timeout_s
    while not pattern.search(proc.log()):
        assert proc.alive(), f"{proc.name} exited:\n{proc.log()}"
        assert time.monotonic() < deadline, f"{proc.name} never logged {pattern.pattern}"
        time.sleep(0.001)


@pytest.mark.timeout(90)
def test_claims_half_made_by_a_stopped_router_are_completed_not_rebuilt(
    site: Site, tmp_path: Path
) -> None:
    """A router that claimed n1 and was then paused or killed leaves n1 claimed and n2..n5
    fresh. Two routers started together on that cluster (cluster.toml) must complete the
    claims. Before the fix both judged n2..n5 new and rebuilt all four."""
    nodes = site.nodes(tmp_path / "nodes")
    config = write_cluster_toml(tmp_path / "cluster.toml", nodes)
    claim(nodes[0])
    routers = [site.router(tmp_path, config, f"r{i}") for i in (1, 2)]
    for router in routers:
        router.start(wait=False)
    for router in routers:
        wait_serving(router.address)
    for router in routers:
        wait_all_ok(router)
        write_through(router, router.name)
    assert misjudged(routers) == []
    assert all(identity(node).claimed for node in nodes)


@pytest.mark.timeout(120)
def test_routers_started_together_on_etcd_with_one_paused_mid_claims(
    site: Site, tmp_path: Path
) -> None:
    """Rounds of a new cluster on one etcd topology: r1 starts and is SIGSTOPped as soon as
    it logs its first claim (usually with some directories still fresh), r2 and r3 start at
    the same instant, then r1 resumes."""
    etcd = etcd_members(tmp_path)
    site.procs += etcd
    start_etcd(etcd)
    caught = 0
    for round_no in range(3):
        where = tmp_path / f"round{round_no}"
        nodes = site.nodes(where)
        config = write_cluster_toml(where / "cluster.toml", nodes)
        url = f"etcd://{etcd[0].address}/shardkv/race{round_no}"
        r1, r2, r3 = (site.router(where, config, f"r{i}", url) for i in (1, 2, 3))
        r1.start(wait=False)
        wait_log(r1, CLAIMED)
        r1.signal(signal.SIGSTOP)
        fresh = sum(not identity(node).claimed for node in nodes)
        caught += fresh > 0
        log.info("round %d: r1 paused with %d of %d directories fresh", round_no, fresh, NODES)
        for router in (r2, r3):
            router.start(wait=False)
        for router in (r2, r3):
            wait_serving(router.address)
            wait_all_ok(router)
            write_through(router, router.name)
        r1.signal(signal.SIGCONT)
        wait_serving(r1.address)
        wait_all_ok(r1)
        write_through(r1, r1.name)
        assert misjudged([r1, r2, r3]) == [], f"round {round_no}"
        site.stop([r1, r2, r3, *nodes])
    print(f"rounds with r1 paused while directories were still fresh: {caught} of 3")


@pytest.mark.timeout(90)
def test_a_wiped_directory_in_a_never_restarted_cluster_is_still_rebuilt(
    site: Site, tmp_path: Path
) -> None:
    """The other side of completing half-made claims: every node still expected at
    generation 0, but data written, then n2's directory wiped. n2 is new, not a claim to
    complete: the router rebuilds it (its generation and the topology's go to 1)."""
    nodes = site.nodes(tmp_path / "nodes")
    config = write_cluster_toml(tmp_path / "cluster.toml", nodes)
    router = site.router(tmp_path, config, "r1").start()
    wait_all_ok(router)
    write_through(router, "before")
    n2 = nodes[1]
    n2.stop()
    shutil.rmtree(tmp_path / "nodes" / "n2")
    n2.start()
    wait_log(router, re.compile(r"data directory of n2: new\b"))
    wait_log(router, re.compile(r"rebuilt n2 \(new directory\)"))
    seen = {n.id: (n.directory, n.expected_generation) for n in topology(router).nodes}
    assert seen["n2"] == ("ok", 1), seen
    assert [line for line in misjudged([router]) if "n2" not in line] == []


def wait_generation(router: Proc, node_id: str, generation: int) -> None:
    """Waits until router records node_id's directory ok at generation."""
    deadline = time.monotonic() + WAIT_S
    while True:
        node = next(n for n in topology(router).nodes if n.id == node_id)
        if (node.directory, node.expected_generation) == ("ok", generation):
            return
        assert time.monotonic() < deadline, f"{router.name} sees {node}"
        time.sleep(0.05)


@pytest.mark.timeout(90)
def test_a_router_behind_the_store_judges_against_the_newest_topology(
    site: Site, tmp_path: Path
) -> None:
    """r1 follows cluster.toml only every 30 s. While it is paused, n2 restarts twice and
    r2 records generation 2 (epoch 3). Resumed, r1 finds n2's directory at 2 while its own
    topology expects 0: before, that was "ahead" (n2 uncounted, rebuilt only by hand) until
    its next look at the file; now it re-reads the store before judging and n2 is ok."""
    nodes = site.nodes(tmp_path / "nodes")
    config = write_cluster_toml(tmp_path / "cluster.toml", nodes)
    config.write_text(
        config.read_text().replace("[timeouts]\n", "[timeouts]\nwatch_interval_ms = 30000\n")
    )
    r1, r2 = (site.router(tmp_path, config, f"r{i}").start() for i in (1, 2))
    wait_all_ok(r1)
    wait_all_ok(r2)
    r1.signal(signal.SIGSTOP)
    n2 = nodes[1]
    for generation in (1, 2):
        n2.restart()
        wait_generation(r2, "n2", generation)
    r1.signal(signal.SIGCONT)
    wait_generation(r1, "n2", 2)
    write_through(r1, "r1")
    assert misjudged([r1, r2]) == []
