"""The router's coalesced Apply and Read calls to one node, as frames of one stream.

Measured at one request in flight on this 2-core machine (an echo through a proxy, as the
router is), a unary call costs the called process about twice the CPU of a stream message
and adds its set-up to each hop; the router's node hop is two of them per request. So
NodeClient sends its coalesced calls as frames of one long-lived ReplicaExchange stream per
node (replica.proto), opened on first use and opened again after it ends.

A frame behaves as the unary call it replaces: it carries the epoch it was routed under
(a call's ``shardkv-epoch``), the request ids and its deadline; the router stops waiting at
that deadline with DEADLINE_EXCEEDED; a refused frame raises the AioRpcError the call
would have raised, with the node's trailing metadata (a fence refusal's shardkv-fence), so
callers, the coalescer and the health tracker see no difference. When the stream fails,
every frame in flight fails with the stream's status. A node without the service
(UNIMPLEMENTED) is sent unary calls from then on (``supported``).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import deque
from typing import TYPE_CHECKING

import grpc
import grpc.aio
from shardkv.common import requestid
from shardkv.common.wire import varint
from shardkv.router.requests.framing import passthrough
from shardkv.v1 import replica_pb2

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine, Sequence

log = logging.getLogger(__name__)

METHOD = "/shardkv.v1.ReplicaExchange/Exchange"
# ExchangeFrame fields a frame's body goes in (apply = 5, read = 6), as wire tags.
APPLY = b"\x2a"
READ = b"\x32"

Reply = replica_pb2.ExchangeReply


class NodeStream:
    """One node's Exchange stream: frames out, replies matched to them by id."""

    def __init__(
        self,
        node_id: str,
        channel: grpc.aio.Channel,
        auth: Sequence[tuple[str, str]],
        *,
        refused: Callable[[grpc.aio.AioRpcError], None],
    ) -> None:
        """auth: the metadata the stream opens with (the node token), checked once;
        refused: told of every error a frame raises, as of a call's (NodeCalls._noticed
        looks for a fence refusal)."""
        self._node_id = node_id
        self._refused = refused
        self._open = channel.stream_stream(
            METHOD, request_serializer=passthrough, response_deserializer=Reply.FromString
        )
        self._auth = tuple(auth)
        self._call: grpc.aio.StreamStreamCall[bytes, Reply] | None = None
        # Frames to write, in order, by one _drain task at a time (gRPC allows one write
        # in progress per call).
        self._outbox: deque[tuple[int, bytes]] = deque()
        self._draining = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._waiting: dict[int, asyncio.Future[Reply]] = {}
        # The call each frame in flight was written on (failed with it if it ends).
        self._carrier: dict[int, grpc.aio.StreamStreamCall[bytes, Reply]] = {}
        self._ids = itertools.count(1)
        # False once the node answered UNIMPLEMENTED: NodeClient sends unary calls then.
        self.supported = True
        # Frames the node answered (with any status), for tests and operators.
        self.answered = 0

    async def send(
        self, tag: bytes, body: bytes, timeout: float, epoch: int | None
    ) -> Reply | None:
        """Sends body (a serialized ApplyRequest or ReadRequest, tag APPLY or READ) routed
        under epoch and returns the node's OK reply; raises the AioRpcError its unary call
        would have raised; None when the node has no stream service (send a unary call).
        The wait ends at the deadline even while the stream cannot be written (a node that
        stopped reading): frames are written by _drain, not here."""
        if not self.supported:
            return None
        loop = asyncio.get_running_loop()
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
        timer = loop.call_later(
            timeout,
            self._fail,
            frame_id,
            grpc.StatusCode.DEADLINE_EXCEEDED,
            f"no answer from {self._node_id} within {timeout:.3f}s",
        )
        self._outbox.append((frame_id, header.SerializeToString() + tag + varint(len(body)) + body))
        if not self._draining:
            self._draining = True
            self._spawn(self._drain())
        try:
            reply = await waiter
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.UNIMPLEMENTED and not self.supported:
                return None
            self._refused(err)
            raise
        finally:
            timer.cancel()
            self._waiting.pop(frame_id, None)
            self._carrier.pop(frame_id, None)
            if self._outbox:  # still unwritten (a stream that cannot be written): drop it
                self._outbox = deque(entry for entry in self._outbox if entry[0] != frame_id)
        if reply.code:
            code = _CODES.get(reply.code, grpc.StatusCode.UNKNOWN)
            refusal = _error(code, reply.message, dict(reply.trailing))
            self._refused(refusal)
            raise refusal
        return reply

    async def close(self) -> None:
        """Ends the stream; frames in flight fail with CANCELLED."""
        call, self._call = self._call, None
        if call is not None:
            call.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _spawn(self, work: Coroutine[None, None, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _fail(self, frame_id: int, code: grpc.StatusCode, message: str) -> None:
        waiter = self._waiting.pop(frame_id, None)
        if waiter is not None and not waiter.done():
            waiter.set_exception(_error(code, message))

    async def _drain(self) -> None:
        """Writes the frames queued, in order, opening the stream when it is not open. A
        frame whose wait ended (its deadline) leaves the queue then (send), so a stream
        that cannot be written holds the bytes of the frames still waiting, no more."""
        try:
            while self._outbox:
                frame_id, data = self._outbox.popleft()
                if frame_id not in self._waiting:
                    continue
                if not self.supported:  # send() answers None: a unary call follows
                    self._fail(frame_id, grpc.StatusCode.UNIMPLEMENTED, "no ReplicaExchange")
                    continue
                call = self._call
                if call is None or call.done():
                    call = self._call = self._open(metadata=self._auth)
                    self._spawn(self._read(call))
                self._carrier[frame_id] = call
                try:
                    await call.write(data)
                except (
                    grpc.aio.AioRpcError,
                    asyncio.InvalidStateError,
                    grpc.aio.UsageError,
                ) as exc:
                    # The stream ended under the write (its reader fails the frames it
                    # carried); this frame is failed as a call on a lost connection.
                    message = f"stream to {self._node_id} ended: {exc}"
                    self._fail(frame_id, grpc.StatusCode.UNAVAILABLE, message)
                    if self._call is call:
                        self._call = None
        finally:
            self._draining = False

    async def _read(self, call: grpc.aio.StreamStreamCall[bytes, Reply]) -> None:
        """Hands each reply to its frame; when the stream ends, fails the frames left."""
        failure: grpc.aio.AioRpcError
        try:
            async for reply in call:
                self.answered += 1
                waiter = self._waiting.pop(reply.id, None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(reply)
            failure = _error(grpc.StatusCode.UNAVAILABLE, f"{self._node_id} ended the stream")
        except grpc.aio.AioRpcError as err:
            failure = err
            if err.code() == grpc.StatusCode.UNIMPLEMENTED:
                log.warning("node %s has no ReplicaExchange: unary calls", self._node_id)
                self.supported = False
        except asyncio.CancelledError:
            failure = _error(grpc.StatusCode.CANCELLED, "router stopping")
        if self._call is call:
            self._call = None
        for frame_id in [f for f, carrier in self._carrier.items() if carrier is call]:
            waiter = self._waiting.pop(frame_id, None)
            if waiter is not None and not waiter.done():
                waiter.set_exception(failure)


# google.rpc.Code value -> grpc.StatusCode
_CODES = {code.value[0]: code for code in grpc.StatusCode}


def _error(
    code: grpc.StatusCode, message: str, trailing: dict[str, str] | None = None
) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(
        code,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(*(trailing or {}).items()),
        details=message,
    )
