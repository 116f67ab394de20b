"""The status table and its handler wrappers, on a real grpc.aio server on a loopback port:
each registered error reaches a client as its code with its message, an unexpected one as
INTERNAL (logged) while the server keeps serving, and a stream failing midway ends with its
code after the items it sent. Every servicer of node and router uses the wrappers."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeAlias

import grpc
import grpc.aio
import pytest
from shardkv.common.hlc import ClockStateError
from shardkv.common.limits import LimitExceeded
from shardkv.router.api.admin_service import AdminService
from shardkv.router.api.errors import AnswerTooLarge, Exhausted, Unavailable
from shardkv.router.api.kv_service import KVService
from shardkv.router.membership.move_plan import BadNode, MoveConflict, NodeExists, NodeUnknown
from shardkv.router.membership.topology import TopologyError
from shardkv.router.membership.topology_store import StoreUnavailable
from shardkv.router.requests.scan import ScanUnavailable
from shardkv.serving import status
from shardkv.serving.status import Relayed, streaming, unary
from shardkv.shardd.commit import CommitterClosed, CommitterOverloaded
from shardkv.shardd.errors import ResponseTooLarge
from shardkv.shardd.fence import FenceLowered, StaleEpoch
from shardkv.shardd.gate import StoreClosed
from shardkv.shardd.identity import IdentityConflict
from shardkv.shardd.kv_service import KVServicer
from shardkv.shardd.replica_service import ReplicaServicer
from shardkv.shardd.snapshot import SnapshotsBusy
from shardkv.shardd.store import StoreFull, TooManyTargets
from shardkv.v1 import admin_pb2, kv_pb2, replica_pb2

Code = grpc.StatusCode
Context = grpc.aio.ServicerContext[Any, Any]
UnaryCall: TypeAlias = "grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]"
StreamCall: TypeAlias = "grpc.aio.UnaryStreamMultiCallable[bytes, bytes]"

# What every error of node and router must end a call with; written out by hand, so that a
# wrong entry in the table fails here.
EXPECTED: dict[type[Exception], grpc.StatusCode] = {
    LimitExceeded: Code.INVALID_ARGUMENT,
    BadNode: Code.INVALID_ARGUMENT,
    NodeUnknown: Code.NOT_FOUND,
    NodeExists: Code.ALREADY_EXISTS,
    MoveConflict: Code.FAILED_PRECONDITION,
    TopologyError: Code.FAILED_PRECONDITION,
    IdentityConflict: Code.FAILED_PRECONDITION,
    StaleEpoch: Code.FAILED_PRECONDITION,
    FenceLowered: Code.FAILED_PRECONDITION,
    StoreFull: Code.RESOURCE_EXHAUSTED,
    TooManyTargets: Code.RESOURCE_EXHAUSTED,
    CommitterOverloaded: Code.RESOURCE_EXHAUSTED,
    ResponseTooLarge: Code.RESOURCE_EXHAUSTED,
    SnapshotsBusy: Code.RESOURCE_EXHAUSTED,
    Exhausted: Code.RESOURCE_EXHAUSTED,
    AnswerTooLarge: Code.RESOURCE_EXHAUSTED,
    StoreClosed: Code.UNAVAILABLE,
    CommitterClosed: Code.UNAVAILABLE,
    Unavailable: Code.UNAVAILABLE,
    ScanUnavailable: Code.UNAVAILABLE,
    StoreUnavailable: Code.UNAVAILABLE,
    ClockStateError: Code.UNAVAILABLE,
}

SERVICE = "shardkv.test.Probe"


class Probe:
    """Raises whatever the test sets in ``error``; the stream first yields ``items`` items."""

    def __init__(self) -> None:
        self.error: Exception | None = None
        self.items = 0
        self.closed = asyncio.Event()

    @unary
    async def Call(self, request: bytes, context: Context) -> bytes:
        if self.error is not None:
            raise self.error
        return b"ok " + request

    @streaming
    async def Stream(self, request: bytes, context: Context) -> AsyncIterator[bytes]:
        for i in range(self.items):
            yield b"item %d" % i
        if self.error is not None:
            raise self.error

    @unary
    async def Abort(self, request: bytes, context: Context) -> bytes:
        await context.abort(Code.PERMISSION_DENIED, "the handler's own abort")

    @streaming
    async def Hang(self, request: bytes, context: Context) -> AsyncIterator[bytes]:
        try:
            yield b"first"
            await asyncio.Event().wait()
        finally:
            self.closed.set()


class Client:
    """The probe's methods as a client calls them (bytes in, bytes out)."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.call: UnaryCall = channel.unary_unary(f"/{SERVICE}/Call")
        self.stream: StreamCall = channel.unary_stream(f"/{SERVICE}/Stream")
        self.abort: UnaryCall = channel.unary_unary(f"/{SERVICE}/Abort")
        self.hang: StreamCall = channel.unary_stream(f"/{SERVICE}/Hang")

    async def items(self, request: bytes = b"") -> list[bytes]:
        return [item async for item in self.stream(request, timeout=5)]


def run(scenario: Callable[[Probe, Client], Awaitable[None]]) -> None:
    """Runs scenario against a fresh server on an ephemeral loopback port."""

    async def main() -> None:
        probe = Probe()
        handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
            "Call": grpc.unary_unary_rpc_method_handler(probe.Call),
            "Stream": grpc.unary_stream_rpc_method_handler(probe.Stream),
            "Abort": grpc.unary_unary_rpc_method_handler(probe.Abort),
            "Hang": grpc.unary_stream_rpc_method_handler(probe.Hang),
        }
        server = grpc.aio.server()
        server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, handlers)])
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                await scenario(probe, Client(channel))
        finally:
            await server.stop(None)

    asyncio.run(main())


def test_the_table_holds_every_error_of_node_and_router() -> None:
    assert {kind: code.name for kind, code in status.TABLE.items()} == {
        kind: code.name for kind, code in EXPECTED.items()
    }


@pytest.mark.parametrize("kind", list(EXPECTED), ids=lambda kind: kind.__name__)
def test_each_error_arrives_as_its_code_with_its_message(kind: type[Exception]) -> None:
    message = f"{kind.__name__}: key b'k\\x00' on node n2 (limit 511 bytes)"

    async def scenario(probe: Probe, client: Client) -> None:
        probe.error = kind(message)
        with pytest.raises(grpc.aio.AioRpcError) as unary_err:
            await client.call(b"", timeout=5)
        with pytest.raises(grpc.aio.AioRpcError) as stream_err:
            await client.items()
        for err in (unary_err.value, stream_err.value):
            assert (err.code(), err.details()) == (EXPECTED[kind], message)

    run(scenario)


def test_an_unexpected_error_is_internal_logged_and_the_server_keeps_serving(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario(probe: Probe, client: Client) -> None:
        probe.error = KeyError("n9")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await client.call(b"", timeout=5)
        assert err.value.code() == Code.INTERNAL
        assert err.value.details() == "internal error in Call: KeyError: 'n9'"
        probe.error = RuntimeError("disk on fire\n  File '/srv/shardkv/secret.py', line 1")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await client.call(b"", timeout=5)
        assert err.value.details() == "internal error in Call: RuntimeError: disk on fire"
        probe.error = None
        assert await client.call(b"again", timeout=5) == b"ok again"

    with caplog.at_level(logging.ERROR, logger=status.__name__):
        run(scenario)
    logged = [r for r in caplog.records if r.name == status.__name__]
    assert [r.getMessage() for r in logged] == ["unexpected error in Call"] * 2
    assert all(r.exc_info is not None for r in logged), "each logs its traceback"


def test_a_stream_failing_midway_ends_with_its_code_after_the_items_sent() -> None:
    async def scenario(probe: Probe, client: Client) -> None:
        probe.items = 3
        for error, code in [
            (StoreFull("store of node n1 is full (map size 1 GiB)"), Code.RESOURCE_EXHAUSTED),
            (Relayed(Code.DEADLINE_EXCEEDED, "snapshot of node n2 failed"), Code.DEADLINE_EXCEEDED),
            (ValueError("unexpected"), Code.INTERNAL),
        ]:
            probe.error = error
            received = []
            with pytest.raises(grpc.aio.AioRpcError) as err:
                async for item in client.stream(b"", timeout=5):
                    received.append(item)
            assert received == [b"item 0", b"item 1", b"item 2"]
            assert err.value.code() == code, err.value.details()
        probe.error = None
        assert len(await client.items()) == 3

    run(scenario)


def test_aborts_and_cancellation_pass_through_untouched(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario(probe: Probe, client: Client) -> None:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await client.abort(b"", timeout=5)
        assert (err.value.code(), err.value.details()) == (
            Code.PERMISSION_DENIED,
            "the handler's own abort",
        )
        call = client.hang(b"", timeout=5)
        assert await call.read() == b"first"
        call.cancel()
        await asyncio.wait_for(probe.closed.wait(), 5)
        assert await client.call(b"still", timeout=5) == b"ok still"

    with caplog.at_level(logging.ERROR, logger=status.__name__):
        run(scenario)
    assert not [r for r in caplog.records if r.name == status.__name__]


def test_a_subclass_takes_its_base_code_and_a_conflicting_entry_is_refused() -> None:
    class KeyTooLong(LimitExceeded):
        pass

    assert status.status_of(KeyTooLong("key too long")) == Code.INVALID_ARGUMENT
    assert status.status_of(RuntimeError()) is None
    status.register(Code.RESOURCE_EXHAUSTED, StoreFull)  # the same entry again: no change
    with pytest.raises(ValueError, match="StoreFull is already mapped to RESOURCE_EXHAUSTED"):
        status.register(Code.INTERNAL, StoreFull)
    assert status.TABLE[StoreFull] == Code.RESOURCE_EXHAUSTED


@pytest.mark.parametrize(
    "servicer, service",
    [
        (KVServicer, kv_pb2.DESCRIPTOR.services_by_name["KV"]),
        (ReplicaServicer, replica_pb2.DESCRIPTOR.services_by_name["Replica"]),
        (KVService, kv_pb2.DESCRIPTOR.services_by_name["KV"]),
        (AdminService, admin_pb2.DESCRIPTOR.services_by_name["Admin"]),
    ],
    ids=["node KV", "node Replica", "router KV", "router Admin"],
)
def test_every_handler_of_node_and_router_is_wrapped(servicer: type, service: Any) -> None:
    unary_code, streaming_code = Probe.Call.__code__, Probe.Stream.__code__
    for method in service.methods:
        handler = getattr(servicer, method.name)
        wanted = streaming_code if method.server_streaming else unary_code
        assert handler.__code__ is wanted, f"{servicer.__name__}.{method.name} is not wrapped"
