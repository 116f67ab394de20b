"""The caller's end of an exchange connection (exchange_connection.py), read as its bytes
arrive: each length-prefixed reply is parsed in data_received and handed on at once.

Why a Protocol and not asyncio's StreamReader with a task looping on readexactly: the
stream wakes the reading task, which wakes the frame's caller, each a turn of the event
loop later; here a reply reaches its caller in the turn its bytes arrive, and no task,
future or readexactly runs per reply. A router asks two or three nodes per request and
reads each one's reply, so that turn was paid two or three times a request.

Replies that arrive before the connection's owner takes them (between the welcome and
``deliver``), and an end that comes meanwhile, wait here and are handed on in order.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import cast

from google.protobuf.message import DecodeError
from shardkv.common.wire import MessageCutter, TooLong
from shardkv.v1 import exchange_pb2

Reply = exchange_pb2.ExchangeReply
# Takes each reply, in the order the server sent them.
OnReply = Callable[[Reply], None]
# Told once that the connection ended, with why: the OSError that broke it, the
# DecodeError of a reply that could not be read, a ConnectionError when it ended inside a
# reply, or None for the server's clean close.
OnEnd = Callable[[Exception | None], None]


class ReplyReader(asyncio.Protocol):
    """Parses replies as they arrive; the first one (the welcome) resolves ``welcome``,
    the others go to the handler ``deliver`` sets."""

    def __init__(self, max_reply: int) -> None:
        self.transport: asyncio.Transport | None = None
        self.welcome: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._messages = MessageCutter(max_reply)
        self._on_reply: OnReply | None = None
        self._on_end: OnEnd | None = None
        # What came before deliver(): replies, and the end (a 1-tuple once it ended).
        self._early: list[Reply] = []
        self._ended: tuple[Exception | None] | None = None

    def deliver(self, on_reply: OnReply, on_end: OnEnd) -> None:
        """From now on replies go to on_reply and the end to on_end; those that came
        before go first."""
        early, self._early = self._early, []
        for reply in early:
            on_reply(reply)
        if self._ended is not None:
            on_end(self._ended[0])
            return
        self._on_reply, self._on_end = on_reply, on_end

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport; not always a subclass of asyncio.Transport (uvloop's are
        # not), so told by what it is, not checked.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            for message in self._messages.cut(data):
                self._hand(Reply.FromString(message))
        except TooLong as long:
            self._unreadable(DecodeError(f"reply of {long.length} bytes exceeds {long.limit}"))
        except DecodeError as exc:
            self._unreadable(exc)

    def _unreadable(self, why: DecodeError) -> None:
        self._end(why)
        if self.transport is not None:
            self.transport.abort()

    def eof_received(self) -> bool:
        return False  # the transport closes; connection_lost says the server ended it

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is None and self._messages.partial:  # the server's close cut a reply short
            partial = self._messages.partial
            exc = ConnectionError(f"the connection ended {partial} bytes into a reply")
        self._end(exc)

    def _hand(self, reply: Reply) -> None:
        if not self.welcome.done():
            self.welcome.set_result(reply)
        elif self._on_reply is not None:
            self._on_reply(reply)
        else:
            self._early.append(reply)

    def _end(self, why: Exception | None) -> None:
        if self._ended is not None:
            return
        self._ended = (why,)
        if not self.welcome.done():
            self.welcome.set_exception(ConnectionError(f"the connection ended: {why!r}"))
            # Retrieved now: nobody awaits it when the connect was given up as it opened.
            self.welcome.exception()
        if self._on_end is not None:
            on_end, self._on_end, self._on_reply = self._on_end, None, None
            on_end(why)
