"""Replica.Apply and Replica.Read as frames of one long-lived stream (ReplicaExchange).

A router sends each node its coalesced Apply and Read calls as frames of one stream
instead of a unary call each: a unary call costs a node about twice the CPU of a stream
message (interceptors, call set-up, headers and trailers), and its set-up adds to the
latency of every router hop (README, Performance). A frame is served exactly as the call
it replaces: by ReplicaServicer.Apply or .Read themselves (same checks, same fencing under
the epoch the frame carries, same status table), each frame as its own task, under its
own deadline; replies are written as frames finish, so a slow commit never holds a read
back. Each frame is counted, timed and logged as the Replica call it replaces (same
method name, request ids, status: shardkv.serving.telemetry), so dashboards, alerts and
request logs see no difference. The stream itself passes the node's auth interceptor
once, when it opens.

Frames running on one stream are bounded (MAX_RUNNING): beyond it a frame is refused with
RESOURCE_EXHAUSTED, as a node refuses calls beyond its maximum_concurrent_rpcs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, NoReturn, cast

import grpc
import grpc.aio
from shardkv.common import requestid
from shardkv.common.wire import varint
from shardkv.shardd.fence import EPOCH_KEY
from shardkv.shardd.replica_service import ReplicaServicer
from shardkv.v1 import replica_pb2

log = logging.getLogger(__name__)

SERVICE = replica_pb2.DESCRIPTOR.services_by_name["ReplicaExchange"].full_name
# Frames served at once on one stream; a router keeps a few per node in flight.
MAX_RUNNING = 256

Context = grpc.aio.ServicerContext[Any, Any]
# RequestInterceptor.observe: (method, request id, started, code, details, peer).
Observe = Callable[[str, str | None, float, grpc.StatusCode, str | None, str], None]
METHODS = {"apply": "/shardkv.v1.Replica/Apply", "read": "/shardkv.v1.Replica/Read"}
# ExchangeReply fields a reply's body goes in (apply = 5, read = 6), as wire tags.
_APPLY_TAG = b"\x2a"
_READ_TAG = b"\x32"


class _Aborted(Exception):
    """A frame's handler ended it with a status (what context.abort does to a call)."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class _FrameContext:
    """What ReplicaServicer.Apply and .Read use of their call's context, for one frame:
    its metadata (the epoch it was routed under), trailing metadata (a fence refusal's)
    and abort (the status table's answer)."""

    def __init__(self, frame: replica_pb2.ExchangeFrame) -> None:
        self._metadata: tuple[tuple[str, str], ...] = (
            ((EPOCH_KEY, str(frame.epoch)),) if frame.HasField("epoch") else ()
        )
        self.trailing: dict[str, str] = {}

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def set_trailing_metadata(self, metadata: tuple[tuple[str, str | bytes], ...]) -> None:
        self.trailing = {key: str(value) for key, value in metadata}

    async def abort(self, code: grpc.StatusCode, details: str = "") -> NoReturn:
        raise _Aborted(code, details)


def _passthrough(reply: bytes) -> bytes:
    """Replies are serialized by hand (a header, then the body's bytes)."""
    return reply


class ExchangeServicer:
    """shardkv.v1.ReplicaExchange on one node: frames served by its ReplicaServicer."""

    def __init__(self, replica: ReplicaServicer, *, observe: Observe) -> None:
        """observe: told of every frame answered, as the interceptor is of a call."""
        self._replica = replica
        self._observe = observe
        self._readers: set[asyncio.Task[None]] = set()

    def handlers(self) -> grpc.GenericRpcHandler:
        """The service's handler, for server.add_generic_rpc_handlers."""
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Exchange": grpc.stream_stream_rpc_method_handler(
                    self.exchange,
                    request_deserializer=replica_pb2.ExchangeFrame.FromString,
                    response_serializer=_passthrough,
                )
            },
        )

    def close(self) -> None:
        """Stops reading frames on every stream; each ends once its frames in flight are
        answered (the node is stopping: without this, server.stop would wait its whole
        grace for streams that never end)."""
        for reader in list(self._readers):
            reader.cancel()

    async def exchange(self, requests: Any, context: Context) -> None:
        """Serves the frames of one stream until the router closes it (or close())."""
        lock = asyncio.Lock()
        running: set[asyncio.Task[None]] = set()
        peer = context.peer()  # read while the call is alive (see telemetry._streaming)
        reader = asyncio.get_running_loop().create_task(
            self._read(requests, context, lock, running, peer)
        )
        self._readers.add(reader)
        try:
            await asyncio.wait({reader})
            if running:
                await asyncio.wait(running)
        finally:
            # The call itself ended (the router went away): nothing is left to answer to.
            self._readers.discard(reader)
            reader.cancel()
            for task in running:
                task.cancel()

    async def _read(
        self,
        requests: Any,
        context: Context,
        lock: asyncio.Lock,
        running: set[asyncio.Task[None]],
        peer: str,
    ) -> None:
        loop = asyncio.get_running_loop()
        async for frame in requests:
            if len(running) >= MAX_RUNNING:
                message = f"{MAX_RUNNING} frames already running on this stream"
                reply = replica_pb2.ExchangeReply(
                    id=frame.id, code=grpc.StatusCode.RESOURCE_EXHAUSTED.value[0], message=message
                )
                await _write(context, lock, reply.SerializeToString())
                continue
            task = loop.create_task(self._serve(frame, context, lock, peer))
            running.add(task)
            task.add_done_callback(running.discard)

    async def _serve(
        self, frame: replica_pb2.ExchangeFrame, context: Context, lock: asyncio.Lock, peer: str
    ) -> None:
        """Answers one frame as its unary call would have been answered."""
        started = time.perf_counter()
        rid = requestid.from_header(frame.request_id) if frame.request_id else None
        requestid.current.set(rid)
        kind = frame.WhichOneof("body")
        frame_context = _FrameContext(frame)
        as_context = cast(Context, frame_context)
        header = replica_pb2.ExchangeReply(id=frame.id)
        try:
            async with asyncio.timeout(frame.timeout_ms / 1000 if frame.timeout_ms else None):
                if kind == "apply":
                    applied = await self._replica.Apply(frame.apply, as_context)
                    body = _APPLY_TAG + _serialized(applied)
                elif kind == "read":
                    read = await self._replica.Read(frame.read, as_context)
                    body = _READ_TAG + _serialized(read)
                else:
                    raise _Aborted(
                        grpc.StatusCode.INVALID_ARGUMENT, f"frame {frame.id} has no body"
                    )
            reply = header.SerializeToString() + body
        except _Aborted as aborted:
            header.code = aborted.code.value[0]
            header.message = aborted.details
            header.trailing.update(frame_context.trailing)
            reply = header.SerializeToString()
        except TimeoutError:
            header.code = grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
            header.message = f"frame deadline of {frame.timeout_ms} ms passed on the node"
            reply = header.SerializeToString()
        except Exception as exc:  # a bug: answered as INTERNAL, as a call would be
            log.error("exchange frame %d failed", frame.id, exc_info=exc)
            header.code = grpc.StatusCode.INTERNAL.value[0]
            header.message = f"internal error in Exchange: {type(exc).__name__}"
            reply = header.SerializeToString()
        code = _CODES.get(header.code, grpc.StatusCode.UNKNOWN)
        method = METHODS.get(kind or "", "/shardkv.v1.ReplicaExchange/Exchange")
        self._observe(method, rid, started, code, header.message or None, peer)
        await _write(context, lock, reply)


# google.rpc.Code value -> grpc.StatusCode
_CODES = {code.value[0]: code for code in grpc.StatusCode}


def _serialized(response: replica_pb2.ApplyResponse | replica_pb2.ReadResponse) -> bytes:
    body = response.SerializeToString()
    return varint(len(body)) + body


async def _write(context: Context, lock: asyncio.Lock, reply: bytes) -> None:
    """Writes one reply; one write at a time per call (gRPC allows no more). A stream
    that ended meanwhile has nobody to answer: its reply is dropped."""
    async with lock:
        try:
            await context.write(reply)
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError, RuntimeError) as exc:
            log.debug("exchange reply dropped: %r", exc)
