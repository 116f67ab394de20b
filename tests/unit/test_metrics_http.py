"""The metrics endpoint in-process: what it answers, its bound on connections, its idle
timeout, and the gRPC server options and flags of the connection limits."""

from __future__ import annotations

import argparse
import asyncio
import gzip
import threading
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.metrics_core import Metric
from shardkv.serving import connections
from shardkv.serving.metrics_http import MetricsServer

Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def _server(**kwargs: float) -> tuple[MetricsServer, str, int]:
    registry = CollectorRegistry()
    Counter("probe_calls", "Calls.", registry=registry).inc(3)
    server = MetricsServer(registry, "127.0.0.1:0", **kwargs)  # type: ignore[arg-type]
    address = await server.start()
    host, _, port = address.rpartition(":")
    return server, host, int(port)


async def _request(conn: Conn, head: str) -> tuple[str, dict[str, str], bytes]:
    reader, writer = conn
    writer.write(head.encode())
    status, *lines = (await reader.readuntil(b"\r\n\r\n")).decode().strip().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    body = await reader.readexactly(int(headers["content-length"])) if "HEAD" not in head else b""
    return status, headers, body


def test_answers_get_head_and_errors_on_one_kept_alive_connection() -> None:
    async def main() -> None:
        server, host, port = await _server()
        conn = await asyncio.open_connection(host, port)
        status, headers, body = await _request(conn, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status == "HTTP/1.1 200 OK"
        assert headers["content-type"].startswith("text/plain; version=0.0.4")
        assert b"probe_calls_total 3.0" in body
        status, headers, _ = await _request(conn, "HEAD /metrics HTTP/1.1\r\n\r\n")
        assert status == "HTTP/1.1 200 OK" and int(headers["content-length"]) == len(body)
        request = "GET /metrics HTTP/1.1\r\nAccept-Encoding: gzip\r\n\r\n"
        status, headers, zipped = await _request(conn, request)
        assert headers["content-encoding"] == "gzip" and gzip.decompress(zipped) == body
        assert (await _request(conn, "GET /x HTTP/1.1\r\n\r\n"))[0].endswith("404 Not Found")
        assert (await _request(conn, "DELETE / HTTP/1.1\r\n\r\n"))[0].endswith(
            "405 Method Not Allowed"
        )
        status, headers, _ = await _request(conn, "GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
        assert status.endswith("200 OK") and headers["connection"] == "close"
        assert await conn[0].read() == b""  # closed after the answer
        conn[1].close()
        await server.stop()

    asyncio.run(main())


@pytest.mark.timeout(30)
def test_bounds_connections_closes_idle_ones_and_starts_no_thread() -> None:
    async def main() -> None:
        server, host, port = await _server(max_connections=2, idle_s=0.3, first_head_s=0.3)
        # Threads other tests left may end meanwhile; none may start.
        threads = set(threading.enumerate())
        held = [await asyncio.open_connection(host, port) for _ in range(2)]
        await asyncio.sleep(0.05)
        assert set(threading.enumerate()) <= threads
        # Full: a new connection takes the place of the oldest idle one (before: 503).
        conn = await asyncio.open_connection(host, port)
        assert (await _request(conn, "GET /metrics HTTP/1.1\r\n\r\n"))[0].endswith("200 OK")
        assert await asyncio.wait_for(held[0][0].read(), 2) == b""
        conn[1].close()
        # Connections that send no request are closed after first_head_s.
        assert await asyncio.wait_for(held[1][0].read(), 2) == b""
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 9000 + b"\r\n\r\n")
        assert (await reader.read()).startswith(b"HTTP/1.1 431")
        await server.stop()
        await server.stop()

    asyncio.run(main())


class Blocking:
    """A collector that holds every scrape until released."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def collect(self) -> Iterator[Metric]:
        self.release.wait(5)
        yield from ()


@pytest.mark.timeout(30)
def test_refuses_only_when_every_connection_has_a_request_in_flight() -> None:
    async def main() -> None:
        registry = CollectorRegistry()
        blocking = Blocking()
        registry.register(blocking)  # type: ignore[arg-type]
        server = MetricsServer(registry, "127.0.0.1:0", max_connections=2, idle_s=5)
        host, _, port = (await server.start()).rpartition(":")
        busy = [await asyncio.open_connection(host, int(port)) for _ in range(2)]
        for _, writer in busy:
            writer.write(b"GET /metrics HTTP/1.1\r\n\r\n")
        await asyncio.sleep(0.2)  # both heads read: two requests in flight
        reader, writer = await asyncio.open_connection(host, int(port))
        assert (await reader.read()).startswith(b"HTTP/1.1 503 Service Unavailable")
        writer.close()
        blocking.release.set()
        for conn in busy:  # neither was evicted: both are answered
            assert (await conn[0].readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200 OK")
            conn[1].close()
        await server.stop()

    asyncio.run(main())


def test_a_taken_port_is_an_os_error_naming_the_address() -> None:
    async def main() -> None:
        server, host, port = await _server()
        with pytest.raises(OSError, match=f"cannot serve metrics on {host}:{port}"):
            await MetricsServer(CollectorRegistry(), f"{host}:{port}").start()
        await server.stop()

    asyncio.run(main())


def test_connection_limits_become_grpc_options() -> None:
    limits = connections.ConnectionLimits(max_connections=100, max_age_s=2.5, age_grace_s=1)
    # The gRPC port holds half the bound; the exchange port the other half.
    assert connections.connection_shares(limits) == connections.ConnectionShares(50, 50)
    assert dict(connections.server_options(limits)) == {
        "grpc.max_allowed_incoming_connections": 50,
        "grpc.server_handshake_timeout_ms": 10_000,
        "grpc.max_connection_idle_ms": 60_000,
        "grpc.max_connection_age_ms": 2500,
        "grpc.max_connection_age_grace_ms": 1000,
    }
    options = dict(connections.server_options(connections.ConnectionLimits(idle_s=None)))
    bound = connections.default_bound(connections.descriptor_limit())
    assert options["grpc.max_allowed_incoming_connections"] == bound - bound // 2
    odd = connections.ConnectionLimits(max_connections=7)
    assert connections.connection_shares(odd) == connections.ConnectionShares(4, 3)
    one = connections.ConnectionLimits(max_connections=1)
    assert connections.connection_shares(one) == connections.ConnectionShares(1, 1)
    assert "grpc.max_connection_idle_ms" not in options
    assert "grpc.max_connection_age_ms" not in options
    assert connections.default_bound(1024) == 896
    assert connections.default_bound(256) == 192
    assert connections.default_bound(20) == connections.MIN_CONNECTIONS


def test_connection_flags() -> None:
    parser = argparse.ArgumentParser()
    connections.add_flags(parser, connections.ROUTER_CONNECTIONS)
    assert connections.from_flags(parser.parse_args([])) == connections.ROUTER_CONNECTIONS
    args = parser.parse_args(
        ["--max-connections", "50", "--max-connection-idle-s", "0", "--max-connection-age-s", "0"]
    )
    assert connections.from_flags(args) == connections.ConnectionLimits(
        max_connections=50, idle_s=None, max_age_s=None
    )
    for bad in (
        ["--max-connections", "0"],
        ["--handshake-timeout-s", "0"],
        ["--max-connection-idle-s", "-1"],
    ):
        with pytest.raises(SystemExit):
            parser.parse_args(bad)
