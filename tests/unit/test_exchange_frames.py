"""FrameReader (serving/exchange_frames.py) over a real socket pair: the hello, then frames
cut anywhere by the network come out whole and in order, those before deliver() first; a
half-close between two messages, a cut inside one, an oversized one and a refused frame
each end reading with their reason; a caller that does not read its replies is not read."""

from __future__ import annotations

import asyncio
import socket

import grpc
import pytest
from shardkv.common.wire import LENGTH_PREFIX
from shardkv.serving.exchange_frames import FrameReader
from shardkv.serving.exchange_server import Refusal

pytestmark = pytest.mark.timeout(20)


def _framed(*messages: bytes) -> bytes:
    return b"".join(LENGTH_PREFIX.pack(len(m)) + m for m in messages)


class Pair:
    """A FrameReader on one end of a socket pair; the test is the caller at the other."""

    def __init__(self, hello_limit: int = 64, frame_limit: int = 1 << 20) -> None:
        self.limits = hello_limit, frame_limit
        self.frames: list[bytes] = []
        self.reader: FrameReader
        self.transport: asyncio.Transport
        self.peer: socket.socket

    async def open(self) -> FrameReader:
        ours, self.peer = socket.socketpair()
        loop = asyncio.get_running_loop()
        transport, self.reader = await loop.create_connection(
            lambda: FrameReader(*self.limits), sock=ours
        )
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        return self.reader

    async def send(self, data: bytes) -> None:
        self.peer.sendall(data)
        await asyncio.sleep(0.02)  # read by the loop on its own, not with the next piece


def test_the_hello_then_frames_cut_anywhere_come_out_whole_and_in_order() -> None:
    async def main() -> None:
        pair = Pair()
        reader = await pair.open()
        big = b"v" * 300_000  # read in many pieces
        data = _framed(b"hello", b"one", b"", big, b"four")
        cuts = [3, 4 + 5 + 2, 20, 70_000, 200_000, len(data)]  # two frames share a piece
        start = 0
        for cut in cuts:
            await pair.send(data[start:cut])
            start = cut
        assert await reader.hello == b"hello"
        reader.deliver(pair.frames.append)  # the frames that came meanwhile go first
        await pair.send(_framed(b"five"))
        assert pair.frames == [b"one", b"", big, b"four", b"five"]
        pair.peer.shutdown(socket.SHUT_WR)  # a half-close between two messages
        assert await asyncio.wait_for(reader.ended, 5) is True
        pair.transport.write(_framed(b"still answered"))  # the caller may still read
        await asyncio.sleep(0.02)
        assert pair.peer.recv(100) == _framed(b"still answered")
        pair.transport.close()
        pair.peer.close()

    asyncio.run(main())


def test_a_stream_that_ends_before_its_hello_gives_none() -> None:
    async def main() -> None:
        pair = Pair()
        reader = await pair.open()
        pair.peer.close()
        assert await asyncio.wait_for(reader.hello, 5) is None
        pair.transport.close()

    asyncio.run(main())


def test_an_oversized_hello_or_frame_is_refused_with_the_limit() -> None:
    async def main() -> None:
        pair = Pair(hello_limit=8, frame_limit=100)
        reader = await pair.open()
        await pair.send(LENGTH_PREFIX.pack(9))
        with pytest.raises(Refusal) as refused:
            await reader.hello
        assert refused.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "message of 9 bytes exceeds this server's limit of 8" in refused.value.details
        pair.transport.close()
        pair.peer.close()

        pair = Pair(hello_limit=8, frame_limit=100)
        reader = await pair.open()
        await pair.send(_framed(b"hi", b"x" * 100) + LENGTH_PREFIX.pack(101) + b"later")
        assert await reader.hello == b"hi"
        reader.deliver(pair.frames.append)
        with pytest.raises(Refusal, match="message of 101 bytes exceeds"):
            await reader.ended
        assert pair.frames == [b"x" * 100]
        await pair.send(_framed(b"unread"))  # nothing is read after the refusal
        assert pair.frames == [b"x" * 100]
        pair.transport.close()
        pair.peer.close()

    asyncio.run(main())


def test_a_stream_cut_inside_a_message_or_a_refused_frame_ends_reading() -> None:
    async def main() -> None:
        pair = Pair()
        reader = await pair.open()
        await pair.send(_framed(b"hi") + LENGTH_PREFIX.pack(10) + b"abc")
        assert await reader.hello == b"hi"
        pair.peer.shutdown(socket.SHUT_WR)
        with pytest.raises(ConnectionError, match="ended its stream 7 bytes into a message"):
            await asyncio.wait_for(reader.ended, 5)
        pair.transport.close()
        pair.peer.close()

        pair = Pair()
        reader = await pair.open()

        def refuse(frame: bytes) -> None:
            pair.frames.append(frame)
            raise Refusal(grpc.StatusCode.INVALID_ARGUMENT, f"not a frame: {frame!r}")

        await pair.send(_framed(b"hi", b"bad", b"never read"))
        assert await reader.hello == b"hi"
        reader.deliver(refuse)  # refused among the early frames
        with pytest.raises(Refusal, match="not a frame: b'bad'"):
            await reader.ended
        assert pair.frames == [b"bad"]
        pair.transport.close()
        pair.peer.close()

    asyncio.run(main())


def test_a_caller_that_does_not_read_its_replies_is_not_read() -> None:
    async def main() -> None:
        pair = Pair()
        reader = await pair.open()
        pair.transport.set_write_buffer_limits(high=1024)
        await pair.send(_framed(b"hi"))
        assert await reader.hello == b"hi"
        reader.deliver(pair.frames.append)
        # Replies the caller never reads fill the socket's buffers, then the transport's.
        while not pair.transport.get_write_buffer_size():
            pair.transport.write(b"r" * 65536)
        await pair.send(_framed(b"held back"))
        assert pair.frames == []  # not read while the replies wait
        pair.peer.setblocking(False)
        while pair.transport.get_write_buffer_size():  # the caller reads at last
            try:
                pair.peer.recv(1 << 20)
            except BlockingIOError:
                pass
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        assert pair.frames == [b"held back"]
        pair.transport.close()
        pair.peer.close()

    asyncio.run(main())
