"""How the end of an exchange connection reaches the frames it carried, against a scripted
server on a real TCP port: a close or a going-away that comes with the welcome fails the
frames queued while the connection opened with the server's status (they are not sent to
one new connection after another), and the caller's close() closes every connection it
still holds, the one a going-away left answering included."""

from __future__ import annotations

import asyncio

import exchange_wire as wire
import grpc
import pytest
from shardkv.common.exchange_connection import ExchangeConnection
from shardkv.v1 import exchange_pb2

pytestmark = pytest.mark.timeout(30)

METHOD = "/test.Echo/Call"
Reply = exchange_pb2.ExchangeReply


class Server:
    """Welcomes each connection together with `first` (the replies its first connection
    sends with the welcome; `every` sends them on every connection), then echoes frames;
    with `hold`, reads one frame, says it read it (going-away, last_id) and goes silent."""

    def __init__(self, first: Reply | None = None, *, every: bool = False, hold: bool = False):
        self.first, self.every, self.hold = first, every, hold
        self.connections = 0
        self.ended = asyncio.Event()  # the caller closed a connection
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.transport.abort()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.append(writer)
        try:
            await wire.read_message(reader)  # the hello
            if self.first is not None and (self.every or self.connections == 1):
                writer.write(wire.framed(Reply(), self.first))
                if not self.first.HasField("last_id"):  # a close message: the end
                    writer.close()
                    return
            else:
                writer.write(wire.framed(Reply()))
            while True:
                frame = exchange_pb2.ExchangeFrame.FromString(await wire.read_message(reader))
                if self.hold:
                    writer.write(wire.framed(Reply(code=14, message="stopping", last_id=frame.id)))
                    await reader.read()  # until the caller closes
                    self.ended.set()
                    return
                writer.write(wire.framed(Reply(id=frame.id, response=frame.request)))
        except (asyncio.IncompleteReadError, ConnectionError):
            self.ended.set()


async def _outcomes(connection: ExchangeConnection, count: int) -> list[tuple[str, str]]:
    async def one(index: int) -> tuple[str, str]:
        try:
            return "OK", repr(await connection.send(METHOD, b"%d" % index, 5.0, {}))
        except grpc.aio.AioRpcError as err:
            return err.code().name, err.details() or ""

    return await asyncio.gather(*(one(i) for i in range(count)))


def test_a_close_with_every_welcome_fails_the_queued_frames_with_the_servers_status() -> None:
    async def main() -> None:
        server = Server(Reply(code=8, message="too many callers"), every=True)
        connection = wire.caller(await server.start())
        try:
            started = asyncio.get_running_loop().time()
            outcomes = await _outcomes(connection, 2)
            assert (
                outcomes
                == [
                    (
                        "RESOURCE_EXHAUSTED",
                        "scripted server closed the connection: too many callers",
                    )
                ]
                * 2
            )
            assert asyncio.get_running_loop().time() - started < 1.0, "failed at once"
            await asyncio.sleep(0.2)
            assert server.connections == 1, "no connection opened after another"
        finally:
            await connection.close()
            await server.stop()

    asyncio.run(main())


def test_a_going_away_with_the_welcome_fails_the_frames_as_not_read() -> None:
    """A server stopping as the caller connects: the frames fail UNAVAILABLE, so callers
    may send them elsewhere, and the next frame goes on a new connection (not by gRPC)."""

    async def main() -> None:
        server = Server(Reply(code=14, message="server stopping", last_id=0))
        connection = wire.caller(await server.start())
        try:
            outcomes = await _outcomes(connection, 2)
            not_read = "scripted server: server stopping; the frame was not read"
            assert outcomes == [("UNAVAILABLE", not_read)] * 2
            assert await connection.send(METHOD, b"next", 5.0, {}) == b"next"
            assert server.connections == 2
        finally:
            await connection.close()
            await server.stop()

    asyncio.run(main())


def test_close_closes_the_connection_a_going_away_left_answering() -> None:
    async def main() -> None:
        server = Server(hold=True)
        connection = wire.caller(await server.start())
        try:
            waiting = asyncio.ensure_future(connection.send(METHOD, b"read", 5.0, {}))
            await asyncio.sleep(0.2)  # read by the server, which says it stops
            await connection.close()
            with pytest.raises(grpc.aio.AioRpcError) as closed:
                await waiting
            assert closed.value.code() == grpc.StatusCode.CANCELLED
            await asyncio.wait_for(server.ended.wait(), 1.0)  # the caller's end reached it
        finally:
            await server.stop()

    asyncio.run(main())
