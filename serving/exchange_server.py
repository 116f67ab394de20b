"""Unary calls served as frames (exchange.proto, ExchangeFrame): one frame answered.

A frame is served exactly as the call it replaces: by the servicer's own handler (same
checks, same status table, same fencing under the metadata it carries), under its own
deadline, and counted, timed and logged as that call (same method name, request ids,
status: shardkv.serving.telemetry), so dashboards, alerts and request logs see no
difference. The methods a port serves are the unary methods of the services its server
gives it (UnaryMethods), looked up by the full name a frame carries.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn, cast

import grpc
import grpc.aio
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import DecodeError, Message
from google.protobuf.message_factory import GetMessageClass
from shardkv.common import requestid
from shardkv.common.deadlines import Deadlines
from shardkv.common.rpc_status import status_code
from shardkv.common.wire import varint
from shardkv.serving.services import serialized
from shardkv.v1 import exchange_pb2

log = logging.getLogger(__name__)

Context = grpc.aio.ServicerContext[Any, Any]
# RequestInterceptor.observe: (method, request id, started, code, details, peer).
Observe = Callable[[str, str | None, float, grpc.StatusCode, str | None, str], None]
# A response is a message, or its bytes already serialized (shardkv.serving.services).
Response = Message | bytes
Handler = Callable[[Any, Context], Awaitable[Response]]
# ExchangeReply.response (field 5) as a wire tag: a reply's response bytes follow it.
_RESPONSE_TAG = b"\x2a"


class Refusal(grpc.aio.AbortError):
    """A status to answer with: a frame's handler ended it (what context.abort does to a
    call: an AbortError, which the status table's wrappers let through), or the exchange
    port refuses a connection (exchange_listener.py)."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


@dataclass(frozen=True)
class UnaryMethod:
    parse: Callable[[bytes], Message]
    handler: Handler


def unary_methods(*services: tuple[ServiceDescriptor, object]) -> dict[str, UnaryMethod]:
    """The unary methods of each (service, servicer), by full gRPC method name."""
    methods: dict[str, UnaryMethod] = {}
    for service, servicer in services:
        for method in service.methods:
            if method.client_streaming or method.server_streaming:
                continue
            request = GetMessageClass(method.input_type)
            handler = getattr(servicer, method.name)
            methods[f"/{service.full_name}/{method.name}"] = UnaryMethod(
                request.FromString, handler
            )
    return methods


class _FrameContext:
    """What handlers use of their call's context, for one frame: its metadata, trailing
    metadata (a fence refusal's), the time left, the peer, and abort (the status table's
    answer)."""

    def __init__(self, frame: exchange_pb2.ExchangeFrame, peer: str, deadline: float | None):
        self._metadata = tuple(frame.metadata.items())
        self._peer = peer
        self._deadline = deadline
        self.trailing: dict[str, str] = {}

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def set_trailing_metadata(self, metadata: tuple[tuple[str, str | bytes], ...]) -> None:
        self.trailing = {key: str(value) for key, value in metadata}

    def time_remaining(self) -> float | None:
        if self._deadline is None:
            return None
        return max(0.0, self._deadline - time.monotonic())

    def peer(self) -> str:
        return self._peer

    async def abort(self, code: grpc.StatusCode, details: str = "") -> NoReturn:
        raise Refusal(code, details)


class FrameServer:
    """Answers frames with the handlers of the methods a port serves."""

    def __init__(self, methods: Mapping[str, UnaryMethod], *, observe: Observe) -> None:
        """observe: told of every frame answered, as the interceptor is of a call."""
        self._methods = methods
        self._observe = observe
        # Each frame's deadline: its handler is cancelled when it passes (as
        # asyncio.timeout would, on a timer of its own per frame).
        self._deadlines = Deadlines()

    async def _within(self, timeout: float | None, handling: Awaitable[Response]) -> Response:
        """What handling returns, or TimeoutError once timeout seconds pass: the frame's
        task is cancelled then, and the cancellation becomes the timeout unless the task
        was cancelled from elsewhere too (asyncio.timeout's rule)."""
        if timeout is None:
            return await handling
        task = asyncio.current_task()
        assert task is not None  # a frame runs as its own task (exchange_listener.py)
        cancelling = task.cancelling()
        expiry = self._deadlines.at(asyncio.get_running_loop().time() + timeout, task.cancel)
        uncancelled = False
        try:
            return await handling
        except asyncio.CancelledError:
            if expiry.passed:
                uncancelled = True
                if task.uncancel() <= cancelling:
                    raise TimeoutError from None
            raise
        finally:
            expiry.cancel()
            if expiry.passed and not uncancelled:  # the handler let the cancellation go
                task.uncancel()

    async def answer(self, frame: exchange_pb2.ExchangeFrame, peer: str) -> bytes:
        """The serialized ExchangeReply to frame: what its unary call would have answered."""
        started = time.perf_counter()
        rid = requestid.from_header(frame.request_id) if frame.request_id else None
        requestid.current.set(rid)
        timeout = frame.timeout_ms / 1000 if frame.timeout_ms else None
        deadline = None if timeout is None else time.monotonic() + timeout
        context = _FrameContext(frame, peer, deadline)
        header = exchange_pb2.ExchangeReply(id=frame.id)
        method = self._methods.get(frame.method)
        try:
            if method is None:
                raise Refusal(
                    grpc.StatusCode.UNIMPLEMENTED,
                    f"method {frame.method[:200]!r} is not served on this exchange port",
                )
            try:
                request = method.parse(frame.request)
            except DecodeError as exc:
                problem = f"not a request of {frame.method}: {exc}"
                raise Refusal(grpc.StatusCode.INVALID_ARGUMENT, problem) from exc
            response = await self._within(timeout, method.handler(request, cast(Context, context)))
            body = serialized(response)
            reply = header.SerializeToString() + _RESPONSE_TAG + varint(len(body)) + body
        except Refusal as aborted:
            header.code = aborted.code.value[0]
            header.message = aborted.details
            header.trailing.update(context.trailing)
            reply = header.SerializeToString()
        except asyncio.CancelledError:  # the connection ended: counted, never answered
            message = "the caller's exchange connection ended"
            self._observe(frame.method, rid, started, grpc.StatusCode.CANCELLED, message, peer)
            raise
        except TimeoutError:
            header.code = grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
            header.message = f"frame deadline of {frame.timeout_ms} ms passed on the server"
            reply = header.SerializeToString()
        except Exception as exc:  # a bug: answered as INTERNAL, as a call would be
            log.error("exchange frame %d (%s) failed", frame.id, frame.method, exc_info=exc)
            header.code = grpc.StatusCode.INTERNAL.value[0]
            header.message = f"internal error serving a frame: {type(exc).__name__}"
            reply = header.SerializeToString()
        code = status_code(header.code)
        name = frame.method if method is not None else "/shardkv.v1.Exchange/Unknown"
        self._observe(name, rid, started, code, header.message or None, peer)
        return reply


def status_reply(frame_id: int, code: grpc.StatusCode, message: str) -> bytes:
    """A serialized ExchangeReply carrying only a status (no response)."""
    reply = exchange_pb2.ExchangeReply(id=frame_id, code=code.value[0], message=message)
    return reply.SerializeToString()
