"""The caller's side of an exchange port against a scripted server on a real TCP port:
which deadlines close a connection, and which only fail their own frame.

A frame's deadline can close the connection only when that frame is the oldest in flight
and the server answered nothing for its whole wait and a connect timeout: the server is
then pinged, and the connection closed if the ping too goes unanswered for a connect
timeout (a stopped server or a dead link); a server that answers the ping keeps it (its
frames wait on a stalled disk). A younger frame that times out behind a slow one fails
alone, and the slow one is answered, as two gRPC calls on one channel would be; so does a
short frame to a busy server.
"""

from __future__ import annotations

import asyncio

import exchange_wire as wire
import grpc
import pytest
from shardkv.v1 import exchange_pb2

SLOW = "/test.Slow/Call"
FAST = "/test.Fast/Call"


class ScriptedServer:
    """Welcomes every connection; answers SLOW frames after slow_s with their request
    bytes, and FAST frames never (a call stuck behind other work); with pongs, pings (a
    frame with no method) at once. With stop_after, the server stops once it has read
    that many frames: it says which it read (last_id), answers those, and reads no more."""

    def __init__(self, slow_s: float, stop_after: int = 0, *, pongs: bool = False) -> None:
        self.slow_s = slow_s
        self.stop_after = stop_after
        self.pongs = pongs
        self.pings = 0
        self.connections = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        await wire.read_message(reader)  # the hello
        writer.write(wire.framed(exchange_pb2.ExchangeReply()))
        try:
            while True:
                frame = exchange_pb2.ExchangeFrame.FromString(await wire.read_message(reader))
                if frame.id == self.stop_after:
                    going = exchange_pb2.ExchangeReply(code=14, message="stopping", last_id=1)
                    writer.write(wire.framed(going))
                    await asyncio.sleep(self.slow_s + 0.2)  # frame 1's answer leaves
                    writer.close()
                    return
                if not frame.method:
                    self.pings += 1
                    if self.pongs:
                        writer.write(wire.framed(exchange_pb2.ExchangeReply(id=frame.id)))
                if frame.method == SLOW:
                    answer = exchange_pb2.ExchangeReply(id=frame.id, response=frame.request)
                    asyncio.get_running_loop().call_later(
                        self.slow_s, writer.write, wire.framed(answer)
                    )
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()


@pytest.mark.timeout(30)
def test_a_younger_frames_deadline_leaves_the_connection_to_the_older_one() -> None:
    async def main() -> None:
        server = ScriptedServer(slow_s=0.8)
        connection = wire.caller(await server.start())
        try:
            slow = asyncio.ensure_future(connection.send(SLOW, b"written", 5.0, {}))
            await asyncio.sleep(0.05)
            with pytest.raises(grpc.aio.AioRpcError) as fast:
                await connection.send(FAST, b"", 0.2, {})
            assert fast.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert await slow == b"written", "the older frame was answered on its connection"
            assert server.connections == 1
        finally:
            await connection.close()
            await server.stop()

    asyncio.run(main())


@pytest.mark.timeout(30)
def test_a_short_frame_behind_a_busy_server_fails_alone() -> None:
    """A server that answers every frame after 0.5 s is busy, not stopped: a 0.2 s frame
    sent behind a first one fails at its deadline, and the connection stays, with the
    frames the server is working on (a younger one with 5 s is answered on it)."""

    async def main() -> None:
        server = ScriptedServer(slow_s=0.5)
        connection = wire.caller(await server.start())
        try:
            assert await connection.send(SLOW, b"warm", 5.0, {}) == b"warm"
            short = asyncio.ensure_future(connection.send(SLOW, b"short", 0.2, {}))
            await asyncio.sleep(0.05)
            longer = asyncio.ensure_future(connection.send(SLOW, b"longer", 5.0, {}))
            with pytest.raises(grpc.aio.AioRpcError) as late:
                await short
            assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert await longer == b"longer"
            assert server.connections == 1
        finally:
            await connection.close()
            await server.stop()

    asyncio.run(main())


@pytest.mark.timeout(30)
def test_the_oldest_frame_unanswered_for_its_whole_wait_closes_a_connection_that_answers_no_ping(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Silent for the frame's whole wait and for at least a connect timeout (0.3 s), and
    silent to the ping that follows for another: the connection is closed, and the next
    frame goes on a new one."""

    async def main() -> None:
        server = ScriptedServer(slow_s=0.8)
        connection = wire.caller(await server.start(), connect_timeout_s=0.3)
        try:
            with pytest.raises(grpc.aio.AioRpcError) as silent:
                await connection.send(FAST, b"", 0.5, {})
            assert silent.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            await asyncio.sleep(0.4)
            assert server.pings == 1
            assert "answered no ping within 0.3s: closed" in caplog.text
            # A new connection serves the next frame.
            assert await connection.send(SLOW, b"again", 5.0, {}) == b"again"
            assert server.connections == 2
        finally:
            await connection.close()
            await server.stop()

    asyncio.run(main())


@pytest.mark.timeout(30)
def test_a_server_that_answers_the_ping_keeps_its_connection() -> None:
    """The same silence from a server that answers the ping (its frames wait on a disk
    that stalls): the frame fails at its deadline, the frames it still works on stay, and
    later frames are answered on the same connection."""

    async def main() -> None:
        server = ScriptedServer(slow_s=1.5, pongs=True)
        connection = wire.caller(await server.start(), connect_timeout_s=0.3)
        try:
            stuck = asyncio.ensure_future(connection.send(FAST, b"", 0.5, {}))
            await asyncio.sleep(0.05)
            working = asyncio.ensure_future(connection.send(SLOW, b"working", 5.0, {}))
            with pytest.raises(grpc.aio.AioRpcError) as silent:
                await stuck
            assert silent.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            await asyncio.sleep(0.4)
            assert server.pings >= 1
            assert await working == b"working", "the frame the server worked on was answered"
            assert await connection.send(SLOW, b"later", 5.0, {}) == b"later"
            assert server.connections == 1
            assert connection.answered == 2, "the ping's answer counted as a frame's"
        finally:
            await connection.close()
            await server.stop()

    asyncio.run(main())


@pytest.mark.timeout(30)
def test_frames_a_stopping_server_did_not_read_fail_at_once() -> None:
    async def main() -> None:
        server = ScriptedServer(slow_s=0.5, stop_after=2)
        connection = wire.caller(await server.start())
        try:
            read = asyncio.ensure_future(connection.send(SLOW, b"read", 5.0, {}))
            await asyncio.sleep(0.05)
            started = asyncio.get_running_loop().time()
            with pytest.raises(grpc.aio.AioRpcError) as unread:
                await connection.send(SLOW, b"unread", 5.0, {})
            assert unread.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "not read" in (unread.value.details() or "")
            assert asyncio.get_running_loop().time() - started < 0.4, "failed at once"
            assert await read == b"read", "the frame read was still answered"
        finally:
            await connection.close()
            await server.stop()

    asyncio.run(main())


@pytest.mark.timeout(30)
def test_a_younger_frame_after_a_long_silence_pings_and_finds_a_dead_connection() -> None:
    """An older frame that may wait long (a write waits for its request's bound) does not
    hide a dead connection: a younger frame's deadline after a long silence pings, and the
    unanswered ping closes the connection, failing the older frame too."""

    async def main() -> None:
        server = ScriptedServer(slow_s=10.0)
        connection = wire.caller(await server.start(), connect_timeout_s=0.3)
        try:
            older = asyncio.ensure_future(connection.send(SLOW, b"older", 8.0, {}))
            await asyncio.sleep(0.05)
            with pytest.raises(grpc.aio.AioRpcError) as short:
                await connection.send(FAST, b"", 0.5, {})
            assert short.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            started = asyncio.get_running_loop().time()
            with pytest.raises(grpc.aio.AioRpcError) as dead:
                await older
            assert dead.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "answered no ping" in (dead.value.details() or "")
            assert asyncio.get_running_loop().time() - started < 1.0
            assert server.pings == 1
        finally:
            await connection.close()
            await server.stop()

    asyncio.run(main())
