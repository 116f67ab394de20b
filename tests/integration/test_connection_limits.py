"""Idle connections cannot exhaust a server (security issue 14, item 7).

Idle TCP connections took every descriptor of the router (then new clients' calls timed
out) and the metrics endpoint ran a thread per connection. Now the descriptor limit is
raised to its hard maximum at start, gRPC closes connections beyond a bound derived from
it (one bound over the gRPC and exchange ports together), connections that never speak
HTTP/2 and idle ones (on either port) are closed after a while, and the metrics endpoint is
an asyncio server on the event loop with its own bound. Every process runs for real; the
router's descriptor limit is lowered with prlimit so that it is reachable with a few
thousand connections.
"""

from __future__ import annotations

import os
import re
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

import exchange_wire as wire
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from harness import Cluster, Proc, router_proc, shardd_proc, wait_serving, write_cluster_toml
from shardkv.v1 import exchange_pb2, kv_pb2, kv_pb2_grpc

METRICS = ["--metrics-listen", "127.0.0.1:0"]

# The router starts with 256 descriptors and may raise that to 1024; the flood is 2,000.
SOFT, HARD = 256, 1024
FLOOD = 2000
METRICS_FLOOD = 1000
# Idle connections to each port of a router pinned to SOFT descriptors (bound 192: 96 each).
PORT_FLOOD = 200
IDLE_S = 4
# An HTTP/2 client's first bytes: the preface and an empty SETTINGS frame.
HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes.fromhex("000000040000000000")


def _status(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name == field:
            return int(value.split()[0])
    raise KeyError(field)


def _descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _open_files_limit(pid: int) -> tuple[int, int]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise KeyError("Max open files")


def _idle_connections(address: str, count: int) -> list[socket.socket]:
    """count TCP connections to address that never send a byte."""
    host, _, port = address.rpartition(":")
    sockets = []
    for _ in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            sock.connect((host, int(port)))
        except BlockingIOError:
            pass
        sockets.append(sock)
    return sockets


def _metrics_address(proc: Proc) -> str:
    return re.findall(r"metrics_serving url=http://(\S+)/metrics", proc.log())[-1]


def _scrape(address: str) -> tuple[int, float]:
    """The status of one GET /metrics on a new connection (0: closed or reset with no
    answer, or none within 5 s), and the seconds it took."""
    started = time.monotonic()
    try:
        with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as reply:
            reply.read()
            status = int(reply.status)
    except urllib.error.HTTPError as err:
        status = err.code
    except OSError:
        status = 0
    return status, time.monotonic() - started


@pytest.fixture
def limited(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """Three nodes and a router, all serving metrics; the router is started by prlimit with
    SOFT descriptors, HARD at most."""
    yield from _cluster(tmp_path, request, getattr(request, "param", []), SOFT, HARD)


@pytest.fixture
def pinned(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """As limited, but the router's SOFT descriptors are also its hard limit (it cannot
    raise it), and it closes connections idle for IDLE_S."""
    idle = ["--max-connection-idle-s", str(IDLE_S)]
    yield from _cluster(tmp_path, request, idle, SOFT, SOFT)


def _cluster(
    tmp_path: Path, request: pytest.FixtureRequest, extra: Sequence[str], soft: int, hard: int
) -> Iterator[Cluster]:
    nodes = [shardd_proc(tmp_path, f"n{i}", extra=METRICS) for i in (1, 2, 3)]
    config = write_cluster_toml(tmp_path / "cluster.toml", nodes)
    router = router_proc(tmp_path, config, extra=[*METRICS, *extra])
    router.argv = ["prlimit", f"--nofile={soft}:{hard}", "--", *router.argv]
    cluster = Cluster(tmp_path, nodes, [router], config)
    try:
        for proc in nodes:
            proc.start(wait=False)
        for proc in nodes:
            wait_serving(proc.address)
        router.start()
        yield cluster
    finally:
        cluster.stop()
        report = getattr(request.node, "rep_call", None)
        if report is None or report.failed:
            print(cluster.logs()[-30000:])


def _put(channel: grpc.Channel, key: bytes, timeout_s: float) -> None:
    kv_pb2_grpc.KVStub(channel).Put(
        kv_pb2.PutRequest(key=key, value=b"v"), timeout=timeout_s, wait_for_ready=True
    )


@pytest.mark.timeout(120)
def test_idle_connections_leave_the_router_serving(limited: Cluster) -> None:
    router = limited.router
    pid = router.pid
    threads_before = _status(pid, "Threads")
    with grpc.insecure_channel(router.address) as connected:
        _put(connected, b"before", 5)
        flood = _idle_connections(router.address, FLOOD)
        try:
            time.sleep(2)
            held = _descriptors(pid)
            # A client connected before the flood is served throughout.
            _put(connected, b"during", 5)
            # A new client is served once the idle connections time out.
            started = time.monotonic()
            options = [
                ("grpc.use_local_subchannel_pool", 1),
                ("grpc.max_reconnect_backoff_ms", 2000),
            ]
            with grpc.insecure_channel(router.address, options=options) as fresh:
                try:
                    _put(fresh, b"new-client", 30)
                except grpc.RpcError as err:
                    raise AssertionError(
                        f"a new client's call failed during the flood: {err.code()};"
                        f" router descriptors {_descriptors(pid)}"
                    ) from err
            waited = time.monotonic() - started
            threads = _status(pid, "Threads")
        finally:
            for sock in flood:
                sock.close()
    limit = _open_files_limit(pid)
    print(
        f"{FLOOD} idle connections: router descriptors {held} of {limit[0]}, threads"
        f" {threads_before} -> {threads}; a new client's Put succeeded after {waited:.1f} s"
    )
    assert held < limit[0] - 32, f"{held} descriptors open of {limit[0]}"
    assert "File descriptor limit reached" not in router.log()
    assert threads <= threads_before + 4
    assert limit == (HARD, HARD), "the descriptor limit was not raised to its hard maximum"
    assert re.search(rf"descriptor_limit raised from={SOFT} to={HARD}", router.log())


@pytest.mark.timeout(120)
def test_idle_metrics_connections_start_no_threads(limited: Cluster) -> None:
    """The router and a node flooded at once (each waits out its own idle bound)."""
    procs = (limited.router, limited.nodes[0])
    addresses = [_metrics_address(proc) for proc in procs]
    assert [_scrape(address)[0] for address in addresses] == [200, 200]
    threads_before = [_status(proc.pid, "Threads") for proc in procs]
    floods = [_idle_connections(address, METRICS_FLOOD) for address in addresses]
    try:
        time.sleep(3)
        threads = [_status(proc.pid, "Threads") for proc in procs]
        descriptors = [_descriptors(proc.pid) for proc in procs]
        # Answered at once: a new connection takes the place of the oldest idle one
        # (before, 503 until the idle connections had been closed).
        started = time.monotonic()
        scrapes: list[list[tuple[int, float]]] = [[], []]
        while any(not tried or tried[-1][0] != 200 for tried in scrapes):
            assert time.monotonic() - started < 30, f"no scrape answered 200: {scrapes}"
            time.sleep(0.5)
            for address, tried in zip(addresses, scrapes, strict=True):
                if not tried or tried[-1][0] != 200:
                    tried.append(_scrape(address))
        waited = time.monotonic() - started
    finally:
        for sock in (sock for flood in floods for sock in flood):
            sock.close()
    for proc, before, after, held, tried in zip(
        procs, threads_before, threads, descriptors, scrapes, strict=True
    ):
        statuses = sorted({status for status, _ in tried})
        print(
            f"{proc.name}: {METRICS_FLOOD} idle metrics connections: threads {before}"
            f" -> {after}, descriptors {held}; scrapes {statuses}, 200 within {waited:.1f} s"
        )
        assert after <= before + 2, f"{proc.name}: {after - before} threads more"
        assert max(seconds for _, seconds in tried) < 2, f"{proc.name}: a scrape hung: {tried}"
        assert proc.alive()


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "limited",
    [
        [
            "--max-connection-idle-s",
            "1",
            "--max-connection-age-s",
            "2",
            "--max-connection-age-grace-s",
            "1",
        ]
    ],
    indirect=True,
)
def test_idle_and_old_connections_are_closed(limited: Cluster) -> None:
    router = limited.router
    options = [("grpc.use_local_subchannel_pool", 1)]
    with grpc.insecure_channel(router.address, options=options) as channel:
        states: list[grpc.ChannelConnectivity] = []
        channel.subscribe(states.append)
        _put(channel, b"k", 5)
        # No call for the idle time: the router closes the connection (GOAWAY), the
        # channel goes IDLE and reconnects for the next call.
        time.sleep(2.5)
        assert states[-2:] == [grpc.ChannelConnectivity.READY, grpc.ChannelConnectivity.IDLE]
        _put(channel, b"k", 5)
        # A call outliving its connection's age plus grace is cut.
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(), timeout=20
        )
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as err:
            for _ in watch:
                pass
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value
        assert "max connection age" in (err.value.details() or "")
        assert time.monotonic() - started < 5


def _exchange_port(address: str) -> int:
    with grpc.insecure_channel(address) as channel:
        reply = kv_pb2_grpc.KVStub(channel).ExchangePort(kv_pb2.ExchangePortRequest(), timeout=5)
    return int(reply.port)


def _put_frame(sock: socket.socket, frame_id: int, key: bytes) -> int:
    """The status code of a Put sent as a frame on an admitted exchange connection."""
    wire.send(sock, wire.frame(frame_id, "/shardkv.v1.KV/Put", kv_pb2.PutRequest(key=key)))
    reply = wire.reply(sock)
    while reply is not None and reply.id == 0 and reply.HasField("last_id"):
        reply = wire.reply(sock)  # told it was idle, in the same instant: not the answer
    assert reply is not None and reply.id == frame_id, reply
    return int(reply.code)


def _closed_by_server(sock: socket.socket, deadline: float) -> bool:
    """Whether the server ends the connection by deadline (whatever it says first)."""
    sock.settimeout(max(0.01, deadline - time.monotonic()))
    try:
        while sock.recv(4096):
            pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        pass
    return True


@pytest.mark.timeout(120)
def test_idle_connections_to_both_ports_leave_descriptors_in_reserve(pinned: Cluster) -> None:
    """The gRPC and exchange ports share one bound: 200 idle exchange connections (hello
    sent) and 200 idle HTTP/2 connections to a router with 256 descriptors hold at most 192
    (96 each) and leave it the rest; connected clients are served throughout; idle exchange
    connections are closed after the idle time, as gRPC closes its idle ones, and a new
    client is served. Before, each port held up to 192: the flood took all 256 descriptors,
    nothing closed the exchange connections, and a new client's Put timed out."""
    router = pinned.router
    pid = router.pid
    port = _exchange_port(router.address)
    with grpc.insecure_channel(router.address) as connected, wire.connect(port) as early:
        welcome = wire.hello(early)
        assert welcome is not None and welcome.code == 0, welcome
        assert _put_frame(early, 1, b"early") == 0
        _put(connected, b"before", 5)
        base = _descriptors(pid)
        exchange: list[socket.socket] = []
        http2: list[socket.socket] = []
        try:
            for _ in range(PORT_FLOOD):
                exchange.append(sock := socket.create_connection(("127.0.0.1", port), 5))
                wire.send(sock, exchange_pb2.ExchangeHello().SerializeToString())
            grpc_port = int(router.address.rpartition(":")[2])
            for _ in range(PORT_FLOOD):
                http2.append(sock := socket.create_connection(("127.0.0.1", grpc_port), 5))
                sock.sendall(HTTP2_PREFACE)
            time.sleep(1.5)
            held = _descriptors(pid)
            assert held - base <= 192 + 4, f"{held - base} connections held, bound 192 ({held})"
            assert held < SOFT - 32, f"{held} descriptors open of {SOFT}"
            # Clients connected before the flood are served throughout, on both ports.
            _put(connected, b"during", 5)
            assert _put_frame(early, 2, b"early-during") == 0
            started = time.monotonic()
            deadline = started + IDLE_S + 6
            closed = [_closed_by_server(sock, deadline) for sock in exchange]
            closed_within = time.monotonic() - started
            assert all(closed), f"{closed.count(False)} idle exchange connections left open"
            # A new client is served once idle connections are closed.
            started = time.monotonic()
            options = [
                ("grpc.use_local_subchannel_pool", 1),
                ("grpc.max_reconnect_backoff_ms", 2000),
            ]
            with grpc.insecure_channel(router.address, options=options) as fresh:
                try:
                    _put(fresh, b"new-client", 30)
                except grpc.RpcError as err:
                    raise AssertionError(
                        f"a new client's call failed: {err.code()}; router descriptors"
                        f" {_descriptors(pid)} of {SOFT}"
                    ) from err
            with wire.connect(port) as late:
                welcome = wire.hello(late)
                assert welcome is not None and welcome.code == 0, welcome
                assert _put_frame(late, 1, b"late") == 0
            waited = time.monotonic() - started
        finally:
            for sock in exchange + http2:
                sock.close()
    print(
        f"{PORT_FLOOD} idle exchange and {PORT_FLOOD} idle HTTP/2 connections: router"
        f" descriptors {base} -> {held} of {SOFT}; {sum(closed)} exchange connections closed"
        f" within {closed_within:.1f} s; a new client served after {waited:.1f} s"
    )
    assert "File descriptor limit reached" not in router.log()
    assert re.search(r"connection_limits max_connections=192 grpc=96 exchange=96", router.log())
