"""Writer ids unique through etcd (issue 15 item 4): routers with --topology etcd://... hold
their writer id under a lease. Each router here has a state dir of its own, as on separate
hosts, so only etcd can tell two routers with one id apart. A second router with a held id
is refused at start naming the holder; a clean stop frees the id at once, a SIGKILL within
the lease's TTL; a router paused past its lease hands out no versions when it resumes
while another router holds its id, and writes again once the id is free and its own; with
etcd away past the lease's TTL writes stop, and resume once etcd is back."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from etcd_harness import etcd_members, etcdctl, start_etcd
from harness import BIN, Proc, failed, free_port, shardd_proc, wait_serving, write_cluster_toml
from shardkv.common.hlc import writer_number
from shardkv.v1 import kv_pb2, kv_pb2_grpc

PREFIX = "/shardkv/writers-test"
TTL_S = 3
KEY = f"{PREFIX}/writers/{writer_number('r1'):08x}"


@dataclass
class Site:
    base: Path
    config: Path
    etcd: list[Proc]
    nodes: list[Proc]
    routers: list[Proc]

    def router(self, name: str, router_id: str = "r1") -> Proc:
        """A router (not started) with its own state dir, as on a host of its own; every
        router made here is stopped with the site."""
        address = f"127.0.0.1:{free_port()}"
        argv = [
            str(BIN / "shardkv-router"),
            "--id", router_id,
            "--config", str(self.config),
            "--listen", address,
            "--state-dir", str(self.base / f"{name}-state"),
            "--topology", f"etcd://{self.etcd[0].address}{PREFIX}",
            "--etcd-lease-s", str(TTL_S),
        ]  # fmt: skip
        router = Proc(name, argv, address, self.base / f"{name}.log")
        self.routers.append(router)
        return router

    def all(self) -> list[Proc]:
        return [*self.routers, *self.nodes, *self.etcd]


@pytest.fixture
def site(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Site]:
    """One etcd member and three nodes; routers are added by the test."""
    nodes = [shardd_proc(tmp_path, f"n{i}") for i in range(1, 4)]
    config = write_cluster_toml(tmp_path / "cluster.toml", nodes)
    running = Site(tmp_path, config, etcd_members(tmp_path), nodes, [])
    try:
        start_etcd(running.etcd)
        for node in nodes:
            node.start(wait=False)
        for node in nodes:
            wait_serving(node.address)
        yield running
    finally:
        if failed(request):
            print("\n".join(f"===== {p.name} =====\n{p.log()[-6000:]}" for p in running.all()))
        for proc in running.all():
            proc.signal(signal.SIGCONT)
            proc.stop()


def holder(site: Site) -> str:
    """What etcd holds under r1's writer-id key ("" when nobody holds it)."""
    return etcdctl(site.etcd, "get", KEY, "--print-value-only").strip()


def wait_free(site: Site, timeout_s: float) -> float:
    """Seconds until nobody holds r1's id (fails after timeout_s)."""
    start = time.monotonic()
    while holder(site):
        assert time.monotonic() - start < timeout_s, f"still held: {holder(site)}"
        time.sleep(0.1)
    return time.monotonic() - start


def put(router: Proc, key: bytes) -> None:
    with grpc.insecure_channel(router.address) as channel:
        request = kv_pb2.PutRequest(key=key, value=b"v")
        kv_pb2_grpc.KVStub(channel).Put(request, timeout=10)


@pytest.mark.timeout(120)
def test_a_held_id_refuses_a_twin_and_is_freed_by_stop_or_death(site: Site) -> None:
    first = site.router("first").start()
    assert f"pid {first.pid}" in holder(site)

    twin = site.router("twin").start(wait=False)
    assert twin.popen is not None and twin.popen.wait(TTL_S + 20) == 1
    assert f"is held in etcd at {site.etcd[0].address} by router 'r1'" in twin.log(), twin.log()
    assert f"pid {first.pid}" in twin.log(), twin.log()
    put(first, b"w/after-twin")  # the refused twin took nothing from the holder

    # SIGKILL: no release, the id is free once the lease expires (a clean stop frees it
    # at once: the last test).
    first.kill()
    freed = wait_free(site, TTL_S + 2)
    # Within the TTL since the last renewal, plus etcd's sweep of expired leases (every
    # 500 ms) and this poll's own latency: a full run on a busy machine saw 3.54 s.
    assert freed <= TTL_S + 1.0, freed


@pytest.mark.timeout(120)
def test_a_router_paused_past_its_lease_writes_nothing_under_a_taken_id(site: Site) -> None:
    paused = site.router("paused").start()
    put(paused, b"w/before")
    paused.signal(signal.SIGSTOP)
    wait_free(site, TTL_S + 2)
    taker = site.router("taker").start()
    assert f"pid {taker.pid}" in holder(site)

    paused.signal(signal.SIGCONT)
    with pytest.raises(grpc.RpcError) as refused:
        put(paused, b"w/resumed")
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, refused.value
    assert "hands out no versions" in str(refused.value.details()), refused.value.details()
    put(taker, b"w/taker")
    deadline = time.monotonic() + 10
    while f"pid {taker.pid}" not in paused.log():  # it names who holds the id now
        assert time.monotonic() < deadline, paused.log()[-3000:]
        time.sleep(0.1)

    # The taker stops cleanly: the resumed router claims its id again and writes.
    assert taker.stop() == 0
    deadline = time.monotonic() + 10
    while f"pid {paused.pid}" not in holder(site):
        assert time.monotonic() < deadline, holder(site)
        time.sleep(0.1)
    put(paused, b"w/reclaimed")


@pytest.mark.timeout(120)
def test_writes_stop_while_etcd_is_away_past_the_lease_and_resume_after(site: Site) -> None:
    router = site.router("alone").start()
    put(router, b"w/before")
    site.etcd[0].signal(signal.SIGSTOP)
    try:
        time.sleep(TTL_S + 0.5)  # no renewal answered for longer than the lease's TTL
        with pytest.raises(grpc.RpcError) as refused:
            put(router, b"w/away")
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, refused.value
        assert "hands out no versions" in str(refused.value.details()), refused.value.details()
    finally:
        site.etcd[0].signal(signal.SIGCONT)
    # etcd back: the router claims its id again on a new lease, and writes.
    deadline = time.monotonic() + 15
    while True:
        try:
            put(router, b"w/back")
            break
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.UNAVAILABLE, err
            assert time.monotonic() < deadline, "no writes after etcd returned"
            time.sleep(0.2)
    assert f"pid {router.pid}" in holder(site)

    # A clean stop revokes the lease: the id is free at once.
    assert router.stop() == 0
    assert holder(site) == ""
