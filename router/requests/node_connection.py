"""The router's coalesced Apply and Read calls to one node, as frames on one TCP connection.

Measured on this 2-core machine, a message on an open gRPC stream costs each end about
eight times the CPU of a length-prefixed frame on an asyncio connection, and a unary call
twice that again; the router's every request is such a hop. So NodeClient sends its
coalesced calls as frames on one long-lived connection to the node's exchange port
(replica.proto, ExchangeHello; shardd/exchange_listener.py), learnt from the node's
Identity and opened on first use, and opened again (asking the port again: a restarted
node listens on a new one) after it ends. It carries TLS when the router has node TLS,
with the node's certificate checked as its gRPC channel checks it, and the node token in
the hello.

A frame behaves as the unary call it replaces: it carries the epoch it was routed under
(a call's ``shardkv-epoch``), the request ids and its deadline; the router stops waiting at
that deadline with DEADLINE_EXCEEDED; a refused frame raises the AioRpcError the call
would have raised, with the node's trailing metadata (a fence refusal's shardkv-fence), so
callers, the coalescer and the health tracker see no difference. A connection that ends,
or whose hello fails, fails every frame it was to carry with UNAVAILABLE (or the status
the node refused it with). A frame whose deadline passes while the node has not even
taken its bytes, or has answered nothing on the connection since the frame left (a
stopped node, a link that drops everything), closes the connection, so the bytes held for
it are let go and the next frame starts afresh. A node that advertises no exchange port,
or whose exchange port cannot be reached while its gRPC port answers, is sent unary calls
for UNARY_S, then asked again.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import ssl
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass

import grpc
import grpc.aio
from google.protobuf.message import DecodeError
from shardkv.common import requestid
from shardkv.common.wire import FRAME_OVERHEAD, LENGTH_PREFIX, varint
from shardkv.v1 import replica_pb2

log = logging.getLogger(__name__)

# ExchangeFrame fields a frame's body goes in (apply = 5, read = 6), as wire tags.
APPLY = b"\x2a"
READ = b"\x32"
# The welcome's trailing metadata naming the node that answered the hello.
NODE_ID_KEY = "shardkv-node-id"
# How long frames go as unary calls once the exchange port is missing or unreachable,
# before the router asks for it and tries it again.
UNARY_S = 30.0

Reply = replica_pb2.ExchangeReply
# Asks the node for its exchange port (0: it has none), within timeout seconds.
PortLookup = Callable[[float], Awaitable[int]]


@dataclass(eq=False)
class _Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    # When the node last answered a frame on it (loop time).
    answered_at: float = 0.0
    # Bytes written to it so far.
    written: int = 0

    def write(self, data: bytes) -> int:
        """Writes one message; returns the offset its last byte ends at."""
        self.writer.write(LENGTH_PREFIX.pack(len(data)) + data)
        self.written += LENGTH_PREFIX.size + len(data)
        return self.written

    def taken(self) -> int:
        """How many of the bytes written the kernel has taken (the node may be reading)."""
        return self.written - self.writer.transport.get_write_buffer_size()


@dataclass(eq=False)
class _Queued:
    """A frame waiting for the connection to open: its deadline goes out as the time left
    when it is written, so the node never works on it past the router's wait."""

    frame_id: int
    header: replica_pb2.ExchangeFrame
    payload: bytes
    deadline: float

    def data(self, now: float) -> bytes:
        self.header.timeout_ms = max(1, int((self.deadline - now) * 1000))
        return self.header.SerializeToString() + self.payload


class NodeConnection:
    """One node's exchange connection: frames out, replies matched to them by id."""

    def __init__(
        self,
        node_id: str,
        address: str,
        *,
        exchange_port: PortLookup,
        tls: ssl.SSLContext | None,
        authorization: str,
        max_message_bytes: int,
        connect_timeout_s: float,
        refused: Callable[[grpc.aio.AioRpcError], None],
    ) -> None:
        """exchange_port: asks the node for its port (Identity); tls: the router's node
        TLS (None: plaintext, for loopback); authorization: the hello's ("Bearer <node
        token>", or empty); refused: told of every error a frame raises, as of a call's
        (NodeCalls._noticed looks for a fence refusal)."""
        self._node_id = node_id
        self._host = address.rsplit(":", 1)[0].strip("[]")
        self._exchange_port = exchange_port
        self._tls = tls
        self._hello = replica_pb2.ExchangeHello(authorization=authorization).SerializeToString()
        self._max_reply = max_message_bytes + FRAME_OVERHEAD
        self._connect_timeout_s = connect_timeout_s
        self._refused = refused
        self._connection: _Connection | None = None
        # Frames to write, in order, by one _drain task at a time (which opens the
        # connection first when there is none).
        self._outbox: deque[_Queued] = deque()
        self._draining = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._waiting: dict[int, asyncio.Future[Reply]] = {}
        # The connection each frame in flight was written on (failed with it if it ends),
        # and the offset its bytes end at.
        self._carrier: dict[int, tuple[_Connection, int]] = {}
        self._closed = False
        self._ids = itertools.count(1)
        # Until then (loop time) NodeClient sends unary calls: the node advertised no
        # exchange port, or its port could not be reached while its gRPC port could.
        self._unary_until = 0.0
        # Frames the node answered (with any status), for tests and operators.
        self.answered = 0

    async def send(
        self, tag: bytes, body: bytes, timeout: float, epoch: int | None
    ) -> Reply | None:
        """Sends body (a serialized ApplyRequest or ReadRequest, tag APPLY or READ) routed
        under epoch and returns the node's OK reply; raises the AioRpcError its unary call
        would have raised; None when frames go as unary calls for now (_connect).
        The wait ends at the deadline even while the connection is being opened."""
        loop = asyncio.get_running_loop()
        if loop.time() < self._unary_until:
            return None
        if self._closed:
            raise _error(grpc.StatusCode.CANCELLED, "router stopping")
        frame_id = next(self._ids)
        header = replica_pb2.ExchangeFrame(
            id=frame_id,
            request_id=requestid.current.get() or "",
            timeout_ms=max(1, int(timeout * 1000)),
        )
        if epoch is not None:
            header.epoch = epoch
        waiter: asyncio.Future[Reply] = loop.create_future()
        self._waiting[frame_id] = waiter
        timer = loop.call_later(timeout, self._expire, frame_id, timeout)
        payload = tag + varint(len(body)) + body
        connection = self._connection
        if connection is not None and not self._draining:  # open, nothing queued: write now
            end = connection.write(header.SerializeToString() + payload)
            self._carrier[frame_id] = (connection, end)
        else:
            self._outbox.append(_Queued(frame_id, header, payload, loop.time() + timeout))
            if not self._draining:
                self._draining = True
                self._spawn(self._drain())
        try:
            reply = await waiter
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.UNIMPLEMENTED and loop.time() < self._unary_until:
                return None
            self._refused(err)
            raise
        finally:
            timer.cancel()
            self._waiting.pop(frame_id, None)
            self._carrier.pop(frame_id, None)
            if self._outbox:  # still unwritten (the connection is opening): let it go
                self._outbox = deque(q for q in self._outbox if q.frame_id != frame_id)
        if reply.code:
            code = _CODES.get(reply.code, grpc.StatusCode.UNKNOWN)
            refusal = _error(code, reply.message, dict(reply.trailing))
            self._refused(refusal)
            raise refusal
        return reply

    async def close(self) -> None:
        """Closes the connection; frames in flight, and any sent later, fail with
        CANCELLED."""
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.writer.close()
        stopping = _error(grpc.StatusCode.CANCELLED, "router stopping")
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
        """A frame's deadline passed: it fails. If the node has not even taken the bytes
        written to it, or answered nothing on the connection since the frame was sent
        (a stopped node, or a link that drops everything: TCP would hold the connection
        open and keep retrying with backoff long after the link is back), the connection
        is closed: its reader fails the other frames, and the next frame opens a new one."""
        message = f"no answer from {self._node_id} within {timeout:.3f}s"
        self._fail(frame_id, _error(grpc.StatusCode.DEADLINE_EXCEEDED, message))
        carried = self._carrier.get(frame_id)
        if carried is None or carried[0].writer.transport.is_closing():
            return
        carrier, end = carried
        if carrier.taken() < end:
            problem = "stopped reading its exchange connection"
        elif carrier.answered_at < asyncio.get_running_loop().time() - timeout:
            problem = f"answered nothing on its exchange connection for {timeout:.3f}s"
        else:
            return
        log.warning("node %s %s: closed", self._node_id, problem)
        carrier.writer.transport.abort()

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
                        log.error("opening %s's exchange connection", self._node_id, exc_info=exc)
                        message = f"cannot open {self._node_id}'s exchange connection: {exc!r}"
                        self._fail_queued(_error(grpc.StatusCode.UNAVAILABLE, message))
                        continue
                    if connection is None:  # no exchange port to reach: frames go unary
                        unary = _error(grpc.StatusCode.UNIMPLEMENTED, "no exchange port")
                        self._fail_queued(unary)
                        continue
                while self._outbox and self._connection is connection:
                    queued = self._outbox.popleft()
                    if queued.frame_id in self._waiting:
                        end = connection.write(queued.data(loop.time()))
                        self._carrier[queued.frame_id] = (connection, end)
        finally:
            self._draining = False

    def _fail_queued(self, error: grpc.aio.AioRpcError) -> None:
        while self._outbox:
            self._fail(self._outbox.popleft().frame_id, error)

    async def _connect(self) -> _Connection | None:
        """Opens the connection and passes the hello; None when frames are to go as unary
        calls for UNARY_S: the node advertises no exchange port, or answers Identity on
        its gRPC port but cannot be reached on its exchange port (a firewall that lets one
        through, a listener gone). Each step is bounded by the call timeout (and every
        frame by its own)."""
        loop = asyncio.get_running_loop()
        port = await self._exchange_port(self._connect_timeout_s)
        if not port:
            log.warning("node %s advertises no exchange port: unary calls", self._node_id)
            self._unary_until = loop.time() + UNARY_S
            return None
        where = f"{self._node_id}'s exchange port {self._host}:{port}"
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                reader, writer = await asyncio.open_connection(
                    self._host,
                    port,
                    ssl=self._tls,
                    server_hostname=self._host if self._tls else None,
                )
        except (OSError, TimeoutError) as exc:
            log.warning("cannot open %s: %r; unary calls for %g s", where, exc, UNARY_S)
            self._unary_until = loop.time() + UNARY_S
            return None
        connection = _Connection(reader, writer)
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                connection.write(self._hello)
                welcome = await self._message(reader)
            problem = _welcome_problem(welcome, self._node_id)
        except (OSError, TimeoutError, asyncio.IncompleteReadError, DecodeError) as exc:
            problem = grpc.StatusCode.UNAVAILABLE, f"no welcome: {exc!r}"
        except BaseException:
            writer.transport.abort()
            raise
        if problem is not None:
            writer.transport.abort()
            raise _error(problem[0], f"{where}: {problem[1]}")
        self._connection = connection
        self._spawn(self._read(connection))
        return connection

    async def _message(self, reader: asyncio.StreamReader) -> Reply:
        (length,) = LENGTH_PREFIX.unpack(await reader.readexactly(LENGTH_PREFIX.size))
        if length > self._max_reply:
            raise DecodeError(f"reply of {length} bytes exceeds {self._max_reply}")
        return Reply.FromString(await reader.readexactly(length))

    async def _read(self, connection: _Connection) -> None:
        """Hands each reply to its frame; when the connection ends, fails the frames left."""
        loop = asyncio.get_running_loop()
        failure: grpc.aio.AioRpcError
        try:
            while True:
                reply = await self._message(connection.reader)
                if reply.id == 0:  # the node closes the connection, saying why
                    code = _CODES.get(reply.code, grpc.StatusCode.UNKNOWN)
                    failure = _error(
                        code, f"{self._node_id} closed the connection: {reply.message}"
                    )
                    break
                self.answered += 1
                connection.answered_at = loop.time()
                waiter = self._waiting.pop(reply.id, None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(reply)
        except (OSError, asyncio.IncompleteReadError, DecodeError) as exc:
            message = f"{self._node_id} ended the exchange connection: {exc!r}"
            failure = _error(grpc.StatusCode.UNAVAILABLE, message)
        except asyncio.CancelledError:
            failure = _error(grpc.StatusCode.CANCELLED, "router stopping")
        if self._connection is connection:
            self._connection = None
        connection.writer.close()
        for frame_id in [f for f, (carrier, _) in self._carrier.items() if carrier is connection]:
            self._fail(frame_id, failure)


# google.rpc.Code value -> grpc.StatusCode
_CODES = {code.value[0]: code for code in grpc.StatusCode}


def _welcome_problem(welcome: Reply, node_id: str) -> tuple[grpc.StatusCode, str] | None:
    """Why the node's answer to the hello does not let frames go to node_id: a refusal,
    or another node answering on the port the router was told (a stale or wrong
    --advertise-exchange-port would otherwise send one node's writes to another)."""
    if welcome.id != 0 or welcome.code:
        code = _CODES.get(welcome.code, grpc.StatusCode.UNKNOWN)
        return code, f"refused the router: {welcome.message}"
    answered_by = welcome.trailing.get(NODE_ID_KEY, "")
    if answered_by != node_id:
        return grpc.StatusCode.UNAVAILABLE, f"answered by node {answered_by!r}, not {node_id!r}"
    return None


def _error(
    code: grpc.StatusCode, message: str, trailing: dict[str, str] | None = None
) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(
        code,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(*(trailing or {}).items()),
        details=message,
    )
