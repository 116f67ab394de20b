"""The exchange port (serving/exchange_listener.py) and callers slow to read their replies,
over real sockets to an ExchangeListener on its own event loop (a thread), whose frames
sleep and answer replies of a given size: a stop, or an idle close, delivers every reply
of every frame read, then the going-away, then a clean end; callers that never read stay
counted against the connection bound; a frame that arrives as a stop begins is not read.

Found by a review of the listener that cuts frames out in data_received (3c3a914): each
of these failed on it (a reset after 30 of 40 replies; the bound counting none of 5
callers that never read; a frame read and run as the stop began)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import pytest
from shardkv.common.wire import LENGTH_PREFIX
from shardkv.serving.connections import ConnectionLimits
from shardkv.serving.exchange_listener import ExchangeListener
from shardkv.serving.exchange_server import FrameServer
from shardkv.v1 import exchange_pb2

pytestmark = pytest.mark.timeout(60)
T = TypeVar("T")


class SleepyFrames(FrameServer):
    """Frame "/<seconds>/<reply bytes>" sleeps, then answers that many bytes."""

    def __init__(self) -> None:
        self.started: list[int] = []

    async def answer(self, frame: exchange_pb2.ExchangeFrame, peer: str) -> bytes:
        _, delay, size = frame.method.split("/")
        self.started.append(frame.id)
        await asyncio.sleep(float(delay))
        reply = exchange_pb2.ExchangeReply(id=frame.id, response=b"r" * int(size))
        return reply.SerializeToString()


class Port:
    """An ExchangeListener served by an event loop in a thread."""

    def __init__(self, max_connections: int = 100, idle_s: float | None = None) -> None:
        self.frames = SleepyFrames()
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        limits = ConnectionLimits(
            max_connections=max_connections, idle_s=idle_s, handshake_timeout_s=5.0
        )
        self.listener = self.run(self._make(limits))
        self.port = self.run(self.listener.start("127.0.0.1"))

    async def _make(self, limits: ConnectionLimits) -> ExchangeListener:
        return ExchangeListener(
            self.frames,
            admission=lambda authorization, names: None,
            welcome={},
            tls=None,
            max_message_bytes=1 << 20,
            connections=limits,
            max_running=10_000,
        )

    def run(self, work: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(work, self.loop).result(30)

    def stop_soon(self, grace: float) -> Any:
        return asyncio.run_coroutine_threadsafe(self.listener.stop(grace), self.loop)

    def close(self) -> None:
        self.run(self.listener.stop(1.0))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()

    def caller(self, receive_buffer: int | None = None) -> socket.socket:
        sock = socket.socket()
        if receive_buffer is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        sock.connect(("127.0.0.1", self.port))
        sock.sendall(_framed(exchange_pb2.ExchangeHello().SerializeToString()))
        return sock


@pytest.fixture
def port() -> Iterator[Port]:
    served = Port()
    try:
        yield served
    finally:
        served.close()


def _framed(message: bytes) -> bytes:
    return LENGTH_PREFIX.pack(len(message)) + message


def _frame(frame_id: int, delay: float, size: int) -> bytes:
    frame = exchange_pb2.ExchangeFrame(id=frame_id, method=f"/{delay}/{size}", timeout_ms=60_000)
    return _framed(frame.SerializeToString())


def _read_to_end(sock: socket.socket) -> tuple[list[exchange_pb2.ExchangeReply], str]:
    """Every reply until the connection ends, and how it ended: "end" (a clean end) or
    the error (a reset)."""
    sock.settimeout(20)
    data = bytearray()
    try:
        while chunk := sock.recv(1 << 20):
            data += chunk
        ended = "end"
    except OSError as err:
        ended = repr(err)
    replies, offset = [], 0
    while len(data) - offset >= LENGTH_PREFIX.size:
        (length,) = LENGTH_PREFIX.unpack_from(data, offset)
        start = offset + LENGTH_PREFIX.size
        if len(data) - start < length:
            return replies, f"cut inside a reply ({ended})"
        replies.append(exchange_pb2.ExchangeReply.FromString(bytes(data[start : start + length])))
        offset = start + length
    return replies, ended


def test_a_stop_while_the_caller_reads_slowly_answers_every_frame_read_then_ends_cleanly(
    port: Port,
) -> None:
    sock = port.caller(receive_buffer=65536)
    sock.sendall(b"".join(_frame(i, 0.0, 256 * 1024) for i in range(1, 41)))
    time.sleep(0.5)  # 10 MiB of replies wait: the caller is not read meanwhile
    sock.sendall(b"".join(_frame(i, 0.0, 10) for i in range(41, 61)))
    time.sleep(0.3)
    stopping = port.stop_soon(grace=10.0)
    time.sleep(0.3)
    replies, ended = _read_to_end(sock)
    stopping.result(20)
    read = sorted(port.frames.started)
    assert ended == "end"
    answered = [r.id for r in replies if r.id]
    assert answered == read, "a frame read was not answered, or one not read was"
    assert all(len(r.response) == (256 * 1024 if r.id <= 40 else 10) for r in replies if r.id)
    going = [r for r in replies if not r.id and r.HasField("last_id")]
    assert [(g.last_id, g.message) for g in going] == [(max(read), "server stopping")]
    sock.close()


def test_an_idle_close_of_a_slow_reader_delivers_its_replies_first() -> None:
    served = Port(idle_s=1.0)
    try:
        sock = served.caller(receive_buffer=65536)
        sock.sendall(b"".join(_frame(i, 0.0, 256 * 1024) for i in range(1, 41)))
        time.sleep(0.5)  # 10 MiB of replies wait: the caller is not read meanwhile
        sock.sendall(b"".join(_frame(i, 0.0, 10) for i in range(41, 61)))
        time.sleep(2.0)  # longer than the idle time, its replies unread
        replies, ended = _read_to_end(sock)
        assert ended == "end"
        read = sorted(served.frames.started)
        assert [r.id for r in replies if r.id] == read
        going = [r for r in replies if not r.id and r.HasField("last_id")]
        assert [(g.last_id, g.message) for g in going] == [(max(read), "no frame for 1s")]
        sock.close()
    finally:
        served.close()


def test_callers_that_never_read_their_replies_stay_counted_against_the_bound() -> None:
    served = Port(max_connections=10, idle_s=0.5)  # the exchange port's share: 5
    callers = []
    try:
        for _ in range(5):
            sock = served.caller(receive_buffer=4096)
            sock.sendall(b"".join(_frame(i, 0.0, 1 << 20) for i in range(1, 5)))
            callers.append(sock)
        time.sleep(1.5)  # idle by the clock, but each has replies waiting to be taken
        late = socket.create_connection(("127.0.0.1", served.port))
        late.settimeout(5)
        assert late.recv(100) == b"", "a connection beyond the bound was admitted"
        late.close()
    finally:
        for sock in callers:
            sock.close()
        served.close()


def test_a_frame_that_arrives_as_a_stop_begins_is_not_read(port: Port) -> None:
    sock = port.caller()
    sock.sendall(_frame(1, 0.0, 10))
    time.sleep(0.2)

    stopping: list[asyncio.Task[None]] = []

    def stop_then_block() -> None:
        # stop()'s first step runs in the next turn; the loop is held meanwhile, so that
        # the frame sent now is read in that same turn, after it.
        stopping.append(port.loop.create_task(port.listener.stop(0.5)))
        time.sleep(0.2)

    port.loop.call_soon_threadsafe(stop_then_block)
    time.sleep(0.05)
    sock.sendall(_frame(2, 5.0, 10))
    replies, ended = _read_to_end(sock)
    assert ended == "end"
    assert port.frames.started == [1]
    going = [r for r in replies if not r.id and r.HasField("last_id")]
    assert [g.last_id for g in going] == [1]
    sock.close()
    port.run(asyncio.wait_for(asyncio.shield(stopping[0]), 5))
