"""What the servers' event loop (uvloop's: serving/event_loop.py) does differently from
asyncio's, met where the servers meet it, on real sockets. Its transports raise on a write
after the connection is lost (asyncio's drop the bytes), the socket behind a closed one
has descriptor -1, and its clock counts whole milliseconds with timers that fire up to
half of one early."""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import uvloop
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from shardkv.common.exchange_outbox import Connection
from shardkv.serving.connections import ConnectionLimits
from shardkv.serving.exchange_listener import ExchangeListener, gone
from shardkv.serving.exchange_server import FrameServer
from shardkv.serving.metrics_http import MetricsServer
from shardkv.v1 import exchange_pb2

LOOPS = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


def run(loop: str, scenario: Callable[[], Awaitable[Any]]) -> Any:
    with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
        return runner.run(scenario())  # type: ignore[arg-type]


async def _closed_connection() -> tuple[asyncio.Transport, socket.socket]:
    """A client transport whose connection was closed (and the close processed), with
    the socket it gave while open (as the exchange port keeps a caller's)."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    transport, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)
    sock = transport.get_extra_info("socket")
    transport.close()
    await asyncio.sleep(0.01)
    server.close()
    return transport, sock  # type: ignore[return-value]


@pytest.mark.timeout(10)
@pytest.mark.parametrize("loop", LOOPS)
def test_a_half_closed_callers_socket_closed_meanwhile_counts_as_gone(loop: str) -> None:
    """The exchange port polls a half-closed caller's socket; once a failed reply closed
    it, the caller is gone. On uvloop that socket raised ValueError, out of the
    connection's task, and its other frames ran on to their deadlines."""

    async def scenario() -> bool:
        _, sock = await _closed_connection()
        return gone(sock)

    assert run(loop, scenario)


@pytest.mark.timeout(10)
@pytest.mark.parametrize("loop", LOOPS)
def test_a_frame_written_on_a_lost_connection_is_left_to_its_reader(loop: str) -> None:
    """A frame written in the turn its connection was lost: nothing is written, and the
    connection's reader fails it (uvloop's write raised RuntimeError at the caller)."""

    async def scenario() -> int:
        transport, _ = await _closed_connection()
        connection = Connection(transport)
        return connection.write(b"frame")

    assert run(loop, scenario) == 0


@pytest.mark.timeout(15)
@pytest.mark.parametrize("loop", LOOPS)
def test_an_idle_connections_check_runs_about_once_per_idle_time(loop: str) -> None:
    """The exchange port closes a connection idle for idle_s, checked by a timer re-armed
    until then. Judged to the nanosecond after uvloop fired it early, it was re-armed for
    the same moment and ran again at once until the millisecond passed (4,800-5,300 runs
    for 40 connections)."""
    checks = 0

    def counting(base: type[asyncio.AbstractEventLoop]) -> type[asyncio.AbstractEventLoop]:
        class Counting(base):  # type: ignore[valid-type, misc]
            def call_at(self, when: float, callback: Any, *args: Any, **kwargs: Any) -> Any:
                nonlocal checks
                checks += getattr(callback, "__name__", "") == "check"
                return super().call_at(when, callback, *args, **kwargs)

        return Counting

    async def scenario() -> int:
        running = asyncio.get_running_loop()
        listener = ExchangeListener(
            FrameServer({}, observe=lambda *_: None),
            admission=lambda *_: None,
            welcome={},
            tls=None,
            max_message_bytes=1 << 20,
            connections=ConnectionLimits(max_connections=200, idle_s=0.05),
            max_running=100,
        )
        port = await listener.start("127.0.0.1", 0)
        hello = exchange_pb2.ExchangeHello().SerializeToString()
        callers = []
        try:
            for i in range(40):
                caller = socket.socket()
                caller.setblocking(False)
                await running.sock_connect(caller, ("127.0.0.1", port))
                await running.sock_sendall(caller, struct.pack(">I", len(hello)) + hello)
                callers.append(caller)
                await asyncio.sleep(0.0013 * (i % 7))  # spread over the clock's milliseconds
            await asyncio.sleep(0.5)
            return sum([await _ended(caller) for caller in callers])
        finally:
            for caller in callers:
                caller.close()
            await listener.stop(0.1)

    factory = uvloop.Loop if loop == "uvloop" else asyncio.SelectorEventLoop
    with asyncio.Runner(loop_factory=counting(factory)) as runner:
        assert runner.run(scenario()) == 40  # every idle connection closed
    assert checks <= 3 * 40, f"{checks} idle checks for 40 connections"


async def _ended(caller: socket.socket) -> bool:
    """Whether the server closed caller's connection (what it said first is read past)."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(1):
            while await loop.sock_recv(caller, 4096):
                pass
    except TimeoutError:
        return False
    return True


class _SlowCollector:
    """A collector that takes a while: the scraper gives up meanwhile."""

    def collect(self) -> list[Metric]:
        time.sleep(0.3)
        return [GaugeMetricFamily("slow_value", "a slow collector", value=1)]


@pytest.mark.timeout(15)
@pytest.mark.parametrize("loop", LOOPS)
def test_a_scraper_that_resets_while_metrics_render_costs_no_error(
    loop: str, caplog: pytest.LogCaptureFixture
) -> None:
    """uvloop's write on a connection lost meanwhile raised RuntimeError out of the
    metrics endpoint's connection handler, an ERROR with a traceback per such scrape."""

    async def scenario() -> None:
        running = asyncio.get_running_loop()
        registry = CollectorRegistry()
        registry.register(_SlowCollector())  # type: ignore[arg-type]
        server = MetricsServer(registry, "127.0.0.1:0")
        host, port = (await server.start()).rsplit(":", 1)
        scraper = socket.socket()
        scraper.setblocking(False)
        try:
            await running.sock_connect(scraper, (host, int(port)))
            await running.sock_sendall(scraper, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            await asyncio.sleep(0.1)  # rendering on the metrics thread
            scraper.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        finally:
            scraper.close()  # a reset
        await asyncio.sleep(0.5)
        await server.stop()

    with caplog.at_level(logging.ERROR):
        run(loop, scenario)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
