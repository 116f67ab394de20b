"""The server's end of an exchange connection (exchange_listener.py), read as its bytes
arrive: each length-prefixed message is cut out in data_received and handed on at once.

Why a Protocol and not asyncio's StreamReader with a task looping on readexactly: the
stream wakes the reading task, which starts the frame's task, each a turn of the event
loop later; here a frame's task is started in the turn its bytes arrive. A request
crosses two such hops (SDK to router, router to nodes), so the turn was paid on each.
(The caller's end reads its replies the same way: common/exchange_replies.py.)

The first message is the hello (``hello``); the frames after it go to the handler
``deliver`` sets, those that came before it first. A peer that does not read its replies
is not read either: reading pauses while the transport holds more unsent bytes than its
high-water mark, and each reply's writer waits (``drained``) until they are below it, as a
StreamWriter's drain waits; so a slow reader holds back its own connection's frames, no
one else's, and a frame counts as running until its reply is written but for that mark.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import cast

import grpc
from shardkv.common.wire import MessageCutter, TooLong
from shardkv.serving.exchange_server import Refusal

# Takes each frame's bytes, in the order the caller sent them; may raise Refusal, which
# ends the connection with that status.
OnFrame = Callable[[bytes], None]


class FrameReader(asyncio.Protocol):
    """Cuts the stream into messages: the hello resolves ``hello`` (None: the stream ended
    first), the frames go to ``deliver``'s handler. ``ended`` resolves when reading ends:
    True when the caller ended its stream between two messages (a half-close; it may
    still read), or raises why it ended otherwise (ConnectionError, also for an end inside
    a message; the OSError that broke it; or the Refusal of a message that could not be
    taken)."""

    def __init__(self, hello_limit: int, frame_limit: int) -> None:
        loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.hello: asyncio.Future[bytes | None] = loop.create_future()
        self.ended: asyncio.Future[bool] = loop.create_future()
        self._messages = MessageCutter(hello_limit)
        self._frame_limit = frame_limit
        self._on_frame: OnFrame | None = None
        self._early: list[bytes] = []  # frames before deliver()
        self._stopped = False
        # Writers waiting for the unsent bytes to fall below the high-water mark (one
        # future each: a waiter cancelled must not cancel the others' wait).
        self._paused = False
        self._drains: list[asyncio.Future[None]] = []
        self._lost = False

    def deliver(self, on_frame: OnFrame) -> None:
        """From now on frames go to on_frame; those that came with the hello go first."""
        self._on_frame = on_frame
        early, self._early = self._early, []
        try:
            for frame in early:
                on_frame(frame)
        except Refusal as refused:
            self._end(refused)

    def stop(self) -> None:
        """Takes nothing more (the connection is idle or ending): frames that arrive stay
        unread. They are still drained from the socket, also while replies wait to be
        sent, so that closing it sends the caller a clean end rather than the reset that
        unread bytes would cause."""
        self._stopped = True
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    async def drained(self) -> None:
        """Returns once the transport's unsent bytes are below its high-water mark, or
        the connection closed."""
        if self._paused and not self._lost:
            drain = asyncio.get_running_loop().create_future()
            self._drains.append(drain)
            await drain

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport; not always a subclass of asyncio.Transport (uvloop's are
        # not), so told by what it is, not checked.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self._stopped:
            return
        try:
            for message in self._messages.cut(data):
                self._take(message)
                if self._stopped:
                    return
        except TooLong as long:
            problem = f"message of {long.length} bytes exceeds this server's limit of {long.limit}"
            self._end(Refusal(grpc.StatusCode.RESOURCE_EXHAUSTED, problem))
        except Refusal as refused:
            self._end(refused)

    def _take(self, message: bytes) -> None:
        if not self.hello.done():
            self.hello.set_result(message)
            self._messages.limit = self._frame_limit
        elif self._on_frame is None:
            self._early.append(message)
        else:
            self._on_frame(message)

    def eof_received(self) -> bool:
        partial = self._messages.partial
        cut = ConnectionError(f"the caller ended its stream {partial} bytes into a message")
        self._end(cut if partial else None)
        # Kept open: the caller may still read its frames' answers (a half-close; TLS has
        # none, and asyncio warns when asked to keep a TLS transport open).
        return self.transport is not None and self.transport.get_extra_info("sslcontext") is None

    def connection_lost(self, exc: Exception | None) -> None:
        self._end(exc if exc is not None else ConnectionError("the connection was closed"))
        self._lost = True
        self._wake()

    def pause_writing(self) -> None:
        """The caller is slow to read its replies: it is not read meanwhile (unless
        reading stopped: then what comes is drained and dropped)."""
        self._paused = True
        if self.transport is not None and not self._stopped:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self._paused = False
        if self.transport is not None and not self._stopped:
            self.transport.resume_reading()
        self._wake()

    def _wake(self) -> None:
        drains, self._drains = self._drains, []
        for drain in drains:
            if not drain.done():
                drain.set_result(None)

    def _end(self, why: BaseException | None) -> None:
        """Reading ends: None for the caller's half-close between two messages, else why
        (a hello not read yet gets the same: None, or why)."""
        self.stop()
        for waiter in (self.hello, self.ended):
            if waiter.done():
                continue
            if why is not None:
                waiter.set_exception(why)
                waiter.exception()  # retrieved: a connection nobody waits for is no bug
            elif waiter is self.hello:
                self.hello.set_result(None)
            else:
                self.ended.set_result(True)
