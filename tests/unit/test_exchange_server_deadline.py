"""A frame's deadline on the server (serving/exchange_server.py): its handler is cancelled
once the frame's time passes and the caller is answered DEADLINE_EXCEEDED, as a unary
call's deadline would; a frame answered in time, or cancelled for another reason (its
connection ended), is left alone by it."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from shardkv.serving.exchange_server import FrameServer, UnaryMethod
from shardkv.v1 import exchange_pb2, replica_pb2

METHOD = "/shardkv.v1.Replica/Read"


class SlowReads:
    """A handler that takes as long as its request's max_bytes says, in milliseconds."""

    def __init__(self) -> None:
        self.cancelled = 0

    async def Read(self, request: replica_pb2.ReadRequest, context: Any) -> bytes:
        try:
            await asyncio.sleep(request.max_bytes / 1000)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return b""


def serve(reads: SlowReads, observed: list[grpc.StatusCode]) -> FrameServer:
    def observe(method: str, rid: str | None, started: float, code: grpc.StatusCode, *_: Any):
        observed.append(code)

    parse = replica_pb2.ReadRequest.FromString
    return FrameServer({METHOD: UnaryMethod(parse, reads.Read)}, observe=observe)


def frame(takes_ms: int, timeout_ms: int) -> exchange_pb2.ExchangeFrame:
    request = replica_pb2.ReadRequest(max_bytes=takes_ms).SerializeToString()
    return exchange_pb2.ExchangeFrame(id=7, method=METHOD, request=request, timeout_ms=timeout_ms)


def test_a_frame_past_its_deadline_is_cancelled_and_answered_deadline_exceeded() -> None:
    async def scenario() -> None:
        reads, observed = SlowReads(), []
        server = serve(reads, observed)
        loop = asyncio.get_running_loop()
        started = loop.time()
        reply = exchange_pb2.ExchangeReply.FromString(
            await server.answer(frame(takes_ms=5000, timeout_ms=50), "test")
        )
        assert loop.time() - started < 1.0
        assert reply.code == grpc.StatusCode.DEADLINE_EXCEEDED.value[0], reply
        assert "frame deadline of 50 ms passed on the server" in reply.message
        assert reads.cancelled == 1
        assert observed == [grpc.StatusCode.DEADLINE_EXCEEDED]
        # The frame's task was not left cancelled: it goes on to write its answer.
        await asyncio.sleep(0.01)

    asyncio.run(scenario())


def test_a_frame_answered_in_time_is_not_cancelled_later() -> None:
    async def scenario() -> None:
        reads, observed = SlowReads(), []
        server = serve(reads, observed)
        reply = exchange_pb2.ExchangeReply.FromString(
            await server.answer(frame(takes_ms=10, timeout_ms=60), "test")
        )
        assert reply.code == 0, reply
        await asyncio.sleep(0.15)  # past the frame's deadline: nothing cancels this task
        assert reads.cancelled == 0 and observed == [grpc.StatusCode.OK]

    asyncio.run(scenario())


def test_a_frame_cancelled_from_elsewhere_is_not_taken_for_its_deadline() -> None:
    async def scenario() -> None:
        reads, observed = SlowReads(), []
        server = serve(reads, observed)
        task = asyncio.ensure_future(server.answer(frame(takes_ms=5000, timeout_ms=5000), "x"))
        await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert reads.cancelled == 1 and observed == [grpc.StatusCode.CANCELLED]

    asyncio.run(scenario())


def test_a_handler_that_lets_the_deadline_go_leaves_its_task_uncancelled() -> None:
    """As asyncio.timeout: once the deadline passed, the task's cancellation count is
    taken back even when the handler swallowed the cancellation and answered."""

    class Stubborn:
        async def Read(self, request: replica_pb2.ReadRequest, context: Any) -> bytes:
            try:
                await asyncio.sleep(5)
            except asyncio.CancelledError:
                pass
            return b""

    async def scenario() -> None:
        observed: list[grpc.StatusCode] = []
        parse = replica_pb2.ReadRequest.FromString
        server = FrameServer(
            {METHOD: UnaryMethod(parse, Stubborn().Read)},
            observe=lambda method, rid, started, code, *_: observed.append(code),
        )
        reply = exchange_pb2.ExchangeReply.FromString(
            await server.answer(frame(takes_ms=0, timeout_ms=20), "test")
        )
        assert reply.code == 0 and observed == [grpc.StatusCode.OK]
        task = asyncio.current_task()
        assert task is not None and task.cancelling() == 0

    asyncio.run(scenario())
