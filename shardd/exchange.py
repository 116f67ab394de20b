"""Replica.Apply and Replica.Read as frames (replica.proto, ExchangeFrame): one frame served.

A router sends each node its coalesced Apply and Read calls as frames on one connection to
the node's exchange port (exchange_listener.py) instead of a gRPC call each: a frame costs
both ends a small fraction of a gRPC message's CPU and adds far less to a hop's latency
(README, Performance). A frame is served exactly as the call it replaces: by
ReplicaServicer.Apply or .Read themselves (same checks, same fencing under the epoch the
frame carries, same status table), under its own deadline, and counted, timed and logged
as the Replica call it replaces (same method name, request ids, status:
shardkv.serving.telemetry), so dashboards, alerts and request logs see no difference.
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

Context = grpc.aio.ServicerContext[Any, Any]
# RequestInterceptor.observe: (method, request id, started, code, details, peer).
Observe = Callable[[str, str | None, float, grpc.StatusCode, str | None, str], None]
METHODS = {"apply": "/shardkv.v1.Replica/Apply", "read": "/shardkv.v1.Replica/Read"}
# ExchangeReply fields a reply's body goes in (apply = 5, read = 6), as wire tags.
_APPLY_TAG = b"\x2a"
_READ_TAG = b"\x32"


class Refusal(Exception):
    """A status to answer with: a frame's handler ended it (what context.abort does to a
    call), or the exchange port refuses a connection (exchange_listener.py)."""

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
        raise Refusal(code, details)


class FrameServer:
    """Answers frames with one node's ReplicaServicer."""

    def __init__(self, replica: ReplicaServicer, *, observe: Observe) -> None:
        """observe: told of every frame answered, as the interceptor is of a call."""
        self._replica = replica
        self._observe = observe

    async def answer(self, frame: replica_pb2.ExchangeFrame, peer: str) -> bytes:
        """The serialized ExchangeReply to frame: what its unary call would have answered."""
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
                    raise Refusal(grpc.StatusCode.INVALID_ARGUMENT, f"frame {frame.id} has no body")
            reply = header.SerializeToString() + body
        except Refusal as aborted:
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
            header.message = f"internal error serving a frame: {type(exc).__name__}"
            reply = header.SerializeToString()
        code = CODES.get(header.code, grpc.StatusCode.UNKNOWN)
        method = METHODS.get(kind or "", "/shardkv.v1.Replica/Exchange")
        self._observe(method, rid, started, code, header.message or None, peer)
        return reply


# google.rpc.Code value -> grpc.StatusCode
CODES = {code.value[0]: code for code in grpc.StatusCode}


def status_reply(frame_id: int, code: grpc.StatusCode, message: str) -> bytes:
    """A serialized ExchangeReply carrying only a status (no body)."""
    reply = replica_pb2.ExchangeReply(id=frame_id, code=code.value[0], message=message)
    return reply.SerializeToString()


def _serialized(response: replica_pb2.ApplyResponse | replica_pb2.ReadResponse) -> bytes:
    body = response.SerializeToString()
    return varint(len(body)) + body
