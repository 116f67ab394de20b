"""ReplyReader (common/exchange_replies.py) over a real socket pair: replies cut anywhere
by the network come out whole and in order; what comes before the owner takes them waits;
a reply too long or unreadable ends the connection with its reason."""

from __future__ import annotations

import asyncio
import socket

import pytest
from google.protobuf.message import DecodeError
from shardkv.common.exchange_replies import Reply, ReplyReader
from shardkv.common.wire import LENGTH_PREFIX

pytestmark = pytest.mark.timeout(20)


def _framed(*replies: Reply) -> bytes:
    return b"".join(
        LENGTH_PREFIX.pack(len(data)) + data for data in (r.SerializeToString() for r in replies)
    )


class Pair:
    """A ReplyReader on one end of a socket pair; the test writes the other end."""

    def __init__(self, max_reply: int = 1 << 20) -> None:
        self.max_reply = max_reply
        self.replies: list[Reply] = []
        self.ended: list[Exception | None] = []
        self.reader: ReplyReader
        self._peer: socket.socket

    async def open(self) -> ReplyReader:
        ours, self._peer = socket.socketpair()
        loop = asyncio.get_running_loop()
        _, self.reader = await loop.create_connection(
            lambda: ReplyReader(self.max_reply), sock=ours
        )
        return self.reader

    async def welcomed(self) -> ReplyReader:
        """Opened, welcomed, and handing replies on."""
        reader = await self.open()
        await self.send(_framed(Reply()))
        await reader.welcome
        self.deliver()
        return reader

    def deliver(self) -> None:
        self.reader.deliver(self.replies.append, self.ended.append)

    async def send(self, data: bytes) -> None:
        self._peer.sendall(data)
        await asyncio.sleep(0.02)  # read by the loop on its own, not with the next piece

    def close(self) -> None:
        self._peer.close()


def test_replies_cut_anywhere_come_out_whole_and_in_order() -> None:
    async def main() -> None:
        pair = Pair()
        reader = await pair.open()
        big = Reply(id=3, response=b"v" * 300_000)  # read in many pieces
        data = _framed(Reply(), Reply(id=1, response=b"one"), Reply(id=2), big, Reply(id=4))
        # The welcome and a byte of the next prefix; then the rest in uneven pieces, two
        # replies sharing one of them.
        cuts = [5 + len(Reply().SerializeToString()) - 1, 7, 11, 70_000, 200_000, len(data)]
        start = 0
        for cut in sorted(cuts):
            await pair.send(data[start:cut])
            start = cut
        assert (await reader.welcome).id == 0
        pair.deliver()  # the replies that came meanwhile go first
        assert [r.id for r in pair.replies] == [1, 2, 3, 4]
        assert pair.replies[0].response == b"one"
        assert pair.replies[2].response == big.response
        pair.close()
        await asyncio.sleep(0.05)
        assert pair.ended == [None]  # the peer closed it cleanly

    asyncio.run(main())


def test_a_reply_longer_than_the_limit_ends_the_connection_with_why() -> None:
    async def main() -> None:
        pair = Pair(max_reply=100)
        reader = await pair.welcomed()
        await pair.send(LENGTH_PREFIX.pack(101) + b"x" * 101)
        assert len(pair.ended) == 1 and isinstance(pair.ended[0], DecodeError)
        assert "reply of 101 bytes exceeds 100" in str(pair.ended[0])
        assert reader.transport is not None and reader.transport.is_closing()
        pair.close()

    asyncio.run(main())


def test_an_end_before_the_welcome_fails_the_wait_and_reaches_the_owner_later() -> None:
    async def main() -> None:
        pair = Pair()
        reader = await pair.open()
        await pair.send(b"\x00\x00")  # half a prefix, then the peer goes away
        pair.close()
        with pytest.raises(ConnectionError):
            await reader.welcome
        pair.deliver()
        assert len(pair.ended) == 1 and isinstance(pair.ended[0], ConnectionError)
        assert "2 bytes into a reply" in str(pair.ended[0]) and pair.replies == []

    asyncio.run(main())


def test_unreadable_bytes_end_the_connection() -> None:
    async def main() -> None:
        pair = Pair()
        await pair.welcomed()
        await pair.send(LENGTH_PREFIX.pack(3) + b"\xff\xff\xff")
        assert len(pair.ended) == 1 and isinstance(pair.ended[0], DecodeError)
        pair.close()

    asyncio.run(main())


def test_an_end_inside_a_reply_is_not_a_clean_close() -> None:
    async def main() -> None:
        pair = Pair()
        await pair.welcomed()
        await pair.send(_framed(Reply(id=1, response=b"cut short"))[:-3])
        pair.close()
        await asyncio.sleep(0.05)
        assert len(pair.ended) == 1 and isinstance(pair.ended[0], ConnectionError)
        assert "bytes into a reply" in str(pair.ended[0])
        assert pair.replies == []

    asyncio.run(main())
