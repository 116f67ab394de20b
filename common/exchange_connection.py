"""Unary calls as frames on one TCP connection to a server's exchange port (exchange.proto).

Measured on this 2-core machine, a unary gRPC call costs its server about 14 times the CPU
of a length-prefixed frame on an asyncio connection and its client about 10 times, and
adds far more latency to the hop (README, Performance). So the router sends its
coalesced Apply and Read calls to each node, and the asyncio SDK its KV calls to each
router, as frames on one long-lived connection to the server's exchange port, learnt from
the server (a node's Identity, KV.ExchangePort) and opened on first use, and opened again
(asking the port again: a restarted server listens on a new one) after it ends. It carries
TLS when the caller has TLS, with the server's certificate checked as its gRPC channel
checks it, and the token in the hello; the welcome must name the server meant, when the
caller knows its name.

A frame behaves as the unary call it replaces: it carries the call's metadata, the
request ids and its deadline; the caller stops waiting at that deadline with
DEADLINE_EXCEEDED; a refused frame raises the AioRpcError the call would have raised, with
the server's trailing metadata (a fence refusal's shardkv-fence), so callers, retries and
health trackers see no difference. A connection that ends, or whose hello fails, fails
every frame it was to carry with UNAVAILABLE (or the status the server refused it with).
A long silence on the connection has the server pinged, and the connection closed if
the ping goes unanswered too (a stopped server, a dead link: _expire); a server whose
frames wait on a stalled disk answers it. A server that advertises no exchange port, does
not tell it within the connect timeout (a slow server: its calls keep their own
deadlines), or whose exchange port cannot be reached while its gRPC port answers, is sent
gRPC calls for UNARY_S, then asked again.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import ssl
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Mapping

import grpc
from shardkv.common import keepalive, requestid
from shardkv.common.deadlines import Deadlines
from shardkv.common.exchange_outbox import (
    Carried,
    Connection,
    Heads,
    Queued,
    deadline_field,
    welcome_problem,
)
from shardkv.common.exchange_replies import Reply, ReplyReader
from shardkv.common.rpc_status import rpc_error, status_code
from shardkv.common.wire import FRAME_OVERHEAD, MAX_FRAMES_RUNNING, varint
from shardkv.v1 import exchange_pb2

log = logging.getLogger(__name__)

# ExchangeFrame.request (field 3) as a wire tag: a frame's request bytes follow it.
_REQUEST_TAG = b"\x1a"
# How long calls go by gRPC once the exchange port is missing or unreachable, before the
# caller asks for it and tries it again.
UNARY_S = 30.0
# Asks the server for its exchange port (0: it has none), within timeout seconds, and
# what the port's welcome must name: the server that answered (empty: no such check).
PortLookup = Callable[[float], Awaitable[tuple[int, Mapping[str, str]]]]


class ExchangeConnection:
    """One server's exchange connection: frames out, replies matched to them by id."""

    def __init__(
        self,
        name: str,
        address: str,
        *,
        exchange_port: PortLookup,
        tls: ssl.SSLContext | None,
        authorization: str,
        max_message_bytes: int,
        connect_timeout_s: float,
        welcome: Mapping[str, str] | None = None,
        refused: Callable[[grpc.aio.AioRpcError], None] | None = None,
    ) -> None:
        """name: the server in messages ("node n1", "router host:port"); address: its
        gRPC address, whose host the exchange port is on; exchange_port: asks the server
        for its port; tls: the caller's TLS (None: plaintext); authorization: the hello's
        ("Bearer <token>", or empty); welcome: trailing metadata the welcome must carry
        (a node's shardkv-node-id: the server meant answered); refused: told of every
        error a frame raises, as of a call's (a router looks for fence refusals)."""
        self._name = name
        self._host = address.rsplit(":", 1)[0].strip("[]")
        self._exchange_port = exchange_port
        self._tls = tls
        self._welcome = dict(welcome or {})
        self._hello = exchange_pb2.ExchangeHello(authorization=authorization).SerializeToString()
        self._max_reply = max_message_bytes + FRAME_OVERHEAD
        self._connect_timeout_s = connect_timeout_s
        self._refused = refused
        self._connection: Connection | None = None
        # Connections not ended: the current one, one a going-away left answering.
        self._open: set[Connection] = set()
        # Frames to write, in order, by one _drain task at a time (which opens the
        # connection first when there is none).
        self._outbox: deque[Queued] = deque()
        self._draining = False
        self._tasks: set[asyncio.Task[None]] = set()
        # Each frame in flight: its caller, and its deadline (_expire); where and when it
        # was written (failed with its connection if that ends; silence counted from then).
        self._waiting: dict[int, asyncio.Future[Reply]] = {}
        self._deadlines = Deadlines()
        self._heads = Heads()
        self._carrier: dict[int, Carried] = {}
        self._closed = False
        self._ids = itertools.count(1)
        # Until then (loop time) the caller sends gRPC calls: the server advertised no
        # exchange port, or its port could not be reached while its gRPC port could.
        self._unary_until = 0.0
        # Frames the server answered (with any status), for tests and operators.
        self.answered = 0

    async def send(
        self, method: str, body: bytes, timeout: float, metadata: Mapping[str, str]
    ) -> bytes | None:
        """Sends body (a serialized request of the unary method, full name) with metadata
        and returns the server's serialized response; raises the AioRpcError the call
        would have raised; None when it is to go by gRPC: for now (_connect), or because
        the server would refuse it as a frame (larger than the message limit, whose gRPC
        call fails alone, or beyond the frames it runs at once on a connection).
        The wait ends at the deadline even while the connection is being opened."""
        loop = asyncio.get_running_loop()
        if (
            loop.time() < self._unary_until
            or len(body) > self._max_reply - FRAME_OVERHEAD
            or len(self._waiting) >= MAX_FRAMES_RUNNING
        ):
            return None
        if self._closed:
            raise rpc_error(grpc.StatusCode.CANCELLED, self._stopping)
        frame_id = next(self._ids)
        head = self._heads.head(frame_id, method, metadata, requestid.current.get() or "")
        waiter: asyncio.Future[Reply] = loop.create_future()
        self._waiting[frame_id] = waiter
        timer = self._deadlines.at(loop.time() + timeout, self._expire, frame_id, timeout)
        payload = _REQUEST_TAG + varint(len(body)) + body
        connection = self._connection
        if connection is not None and not self._draining:  # open, nothing queued: write now
            end = connection.write(head + deadline_field(timeout) + payload)
            self._carrier[frame_id] = Carried(connection, end, loop.time())
        else:
            self._outbox.append(Queued(frame_id, head, payload, loop.time() + timeout))
            if not self._draining:
                self._draining = True
                self._spawn(self._drain())
        try:
            reply = await waiter
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.UNIMPLEMENTED and loop.time() < self._unary_until:
                return None
            if self._refused is not None:
                self._refused(err)
            raise
        finally:
            timer.cancel()
            self._waiting.pop(frame_id, None)
            self._carrier.pop(frame_id, None)
            if self._outbox:  # still unwritten (the connection is opening): let it go
                self._outbox = deque(q for q in self._outbox if q.frame_id != frame_id)
        if reply.code:
            code = status_code(reply.code)
            refusal = rpc_error(code, reply.message, dict(reply.trailing))
            if self._refused is not None:
                self._refused(refusal)
            raise refusal
        return reply.response

    @property
    def _stopping(self) -> str:
        return f"{self._name}'s exchange connection closed by the caller"

    async def close(self) -> None:
        """Closes the connection; frames in flight, and any sent later, fail with
        CANCELLED."""
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._connection = None
        for connection in self._open:  # one a going-away left still carries frames
            connection.transport.close()
        stopping = rpc_error(grpc.StatusCode.CANCELLED, self._stopping)
        for frame_id in list(self._waiting):
            self._fail(frame_id, stopping)

    def _spawn(self, work: Coroutine[None, None, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _fail(self, frame_id: int, error: grpc.aio.AioRpcError) -> None:
        waiter = self._waiting.pop(frame_id, None)
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)

    def _expire(self, frame_id: int, timeout: float) -> None:
        """A frame's deadline passed: it fails. If the server answered nothing on its
        connection since the frame was written on it (a frame queued while the connection
        opened was written after its welcome) and for at least the connect timeout, the
        connection may be dead (a stopped server, a link that drops everything, which TCP
        would retry long after it is back): it is closed if the server has not taken even
        the oldest frame's bytes, else once a ping gets no answer within the connect
        timeout (_unanswered). A server that answers the ping is slow, not gone (its
        frames wait on a stalled disk): closing would fail the frames it works on, and a
        router would count the node DOWN. A younger frame's bytes may wait behind a large
        request ahead of them: only pinged for."""
        message = f"no answer from {self._name} within {timeout:.3f}s"
        self._fail(frame_id, rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, message))
        carried = self._carrier.get(frame_id)
        if carried is None or carried.connection.transport.is_closing():
            return
        carrier, end, written_at = carried
        loop = asyncio.get_running_loop()
        silent_s = loop.time() - carrier.answered_at
        if carrier.answered_at > written_at or silent_s < self._connect_timeout_s:
            return
        oldest = not any(f < frame_id and c.connection is carrier for f, c in self._carrier.items())
        if oldest and carrier.taken() < end:
            self._abandon(carrier, "stopped reading its exchange connection")
        elif carrier.ping(next(self._ids), loop.time()):
            loop.call_later(self._connect_timeout_s, self._unanswered, carrier)

    def _unanswered(self, carrier: Connection) -> None:
        """A ping's time passed: a connection that answered nothing since is closed. (A
        reply that arrived by now has been read: the loop runs what its socket brought
        before the timers due in the same turn.)"""
        if carrier.unanswered():
            self._abandon(carrier, f"answered no ping within {self._connect_timeout_s:g}s")

    def _abandon(self, carrier: Connection, problem: str) -> None:
        log.warning("%s %s: closed", self._name, problem)
        if self._connection is carrier:  # the next frame opens a new one at once
            self._connection = None
        carrier.abandon(f"{self._name} {problem}: the connection was closed")

    async def _drain(self) -> None:
        """Writes the frames queued, in order, opening the connection when there is none.
        A frame whose wait ended (its deadline) is skipped."""
        loop = asyncio.get_running_loop()
        try:
            while self._outbox:
                connection = self._connection
                if connection is None:
                    try:
                        connection = await self._connect()
                    except grpc.aio.AioRpcError as err:
                        self._fail_queued(err)
                        continue
                    except Exception as exc:  # a bug or an unforeseen failure: say which
                        log.error("opening %s's exchange connection", self._name, exc_info=exc)
                        message = f"cannot open {self._name}'s exchange connection: {exc!r}"
                        self._fail_queued(rpc_error(grpc.StatusCode.UNAVAILABLE, message))
                        continue
                    if connection is None:  # no exchange port to reach: frames go unary
                        no_port = rpc_error(grpc.StatusCode.UNIMPLEMENTED, "no exchange port")
                        self._fail_queued(no_port)
                        continue
                while self._outbox and self._connection is connection:
                    queued = self._outbox.popleft()
                    if queued.frame_id in self._waiting:
                        end = connection.write(queued.data(loop.time()))
                        self._carrier[queued.frame_id] = Carried(connection, end, loop.time())
        finally:
            self._draining = False

    def _fail_queued(self, error: grpc.aio.AioRpcError) -> None:
        while self._outbox:
            self._fail(self._outbox.popleft().frame_id, error)

    async def _connect(self) -> Connection | None:
        """Opens the connection and passes the hello; None when frames are to go as unary
        calls for UNARY_S (_unary): the server advertises no exchange port, does not tell
        it within connect_timeout_s, or answers on its gRPC port but cannot be reached on
        its exchange port (a firewall that lets one through, a listener gone). Each step
        is bounded by connect_timeout_s (and every frame by its own). A server that
        answers the hello with anything but a welcome (another protocol on that port), or
        whose welcome names another server than the one that answered the lookup (a
        router's port reached through a name that stands for several), also gets gRPC
        calls, which reach the server asked; one that refuses the caller, or names another
        server than the caller expects (welcome), fails the frames (gRPC would refuse them
        too, or reach the wrong server)."""
        try:
            port, answerer = await self._exchange_port(self._connect_timeout_s)
        except grpc.aio.AioRpcError as err:
            if err.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                raise
            # Only the lookup's short wait ran out: gRPC calls get the frames' whole time.
            self._unary(f"{self._name} told no port within {self._connect_timeout_s:g}s")
            return None
        if not port:
            self._unary(f"{self._name} advertises no exchange port")
            return None
        where = f"{self._name}'s exchange port {self._host}:{port}"
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                transport, replies = await loop.create_connection(
                    lambda: ReplyReader(self._max_reply),
                    self._host,
                    port,
                    ssl=self._tls,
                    server_hostname=self._host if self._tls else None,
                )
        except (OSError, TimeoutError) as exc:
            self._unary(f"cannot open {where}: {exc!r}")
            return None
        keepalive.enable(transport)
        connection = Connection(transport)
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                connection.write(self._hello)
                welcome = await replies.welcome
            problem = welcome_problem(welcome, self._welcome)
            stranger = welcome_problem(welcome, answerer)
        except (OSError, TimeoutError) as exc:  # ConnectionError: it ended first
            transport.abort()
            self._unary(f"{where} answered no welcome: {exc!r}")
            return None
        except BaseException:
            transport.abort()
            raise
        if problem is not None:
            transport.abort()
            raise rpc_error(problem[0], f"{where}: {problem[1]}")
        if stranger is not None:  # gRPC reaches the server that answered the lookup
            transport.abort()
            self._unary(f"{where} {stranger[1]}")
            return None
        connection.answered_at = loop.time()  # the welcome answers: silence counts from here
        self._connection = connection
        self._open.add(connection)
        # What came with the welcome is handed on after _drain wrote the frames queued
        # meanwhile: a close or going-away fails them, not sends _drain to reconnect.
        loop.call_soon(
            replies.deliver,
            functools.partial(self._reply, connection),
            functools.partial(self._ended, connection),
        )
        return connection

    def _unary(self, why: str) -> None:
        """Frames go as gRPC calls for UNARY_S, for the reason why; then the port again."""
        log.warning("%s; gRPC calls for %g s", why, UNARY_S)
        self._unary_until = asyncio.get_running_loop().time() + UNARY_S

    def _going_away(self, connection: Connection, reply: Reply) -> None:
        """The server stops: the frames it did not read (after last_id) fail with its
        status, so their callers may send them elsewhere; the others are still answered
        on this connection, and the next frame opens a new one."""
        if self._connection is connection:
            self._connection = None
        message = f"{self._name}: {reply.message}; the frame was not read"
        unread = rpc_error(status_code(reply.code), message)
        for frame_id in self._carried_by(connection):
            if frame_id > reply.last_id:
                self._fail(frame_id, unread)

    def _reply(self, connection: Connection, reply: Reply) -> None:
        """Hands a reply to its frame, in the loop's turn its bytes arrived; nothing after
        the connection ended (after a server's close message in the same read)."""
        if connection not in self._open:
            return
        if reply.id == 0 and reply.HasField("last_id"):
            self._going_away(connection, reply)
        elif reply.id == 0:  # the server closes the connection, saying why
            closed = f"{self._name} closed the connection: {reply.message}"
            self._end(connection, rpc_error(status_code(reply.code), closed))
        elif not connection.heard(reply.id, asyncio.get_running_loop().time()):  # not a pong
            self.answered += 1
            waiter = self._waiting.pop(reply.id, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(reply)

    def _ended(self, connection: Connection, why: Exception | None) -> None:
        """The connection ended (why: what broke it; None: the server closed it)."""
        reason = repr(why) if why is not None else "closed by the server"
        ended = connection.closed_why or f"{self._name} ended the exchange connection: {reason}"
        self._end(connection, rpc_error(grpc.StatusCode.UNAVAILABLE, ended))

    def _end(self, connection: Connection, failure: grpc.aio.AioRpcError) -> None:
        """Fails the frames the connection carried; the next frame opens a new one."""
        if self._connection is connection:
            self._connection = None
        self._open.discard(connection)
        connection.transport.close()
        for frame_id in self._carried_by(connection):
            self._fail(frame_id, failure)

    def _carried_by(self, connection: Connection) -> list[int]:
        """The frames written on connection and not answered yet."""
        return [f for f, carried in self._carrier.items() if carried.connection is connection]
