"""The router's coalesced Apply and Read calls travel as frames on one connection per node
to its exchange port (common/exchange_connection.py, serving/exchange_listener.py) and
behave exactly as the unary calls they replace: fenced under the epoch each carries,
answered with the same status, counted by the node as the calls they replace, bounded by
their deadline even when the node stops answering (or reading), and served again once a
restarted node is back on a new port."""

from __future__ import annotations

import asyncio
import signal
import time
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import grpc
import pytest
from harness import Proc, free_port, shardd_proc
from shardkv.common.limits import DEFAULT_LIMITS
from shardkv.router.membership.topology import NodeConfig
from shardkv.router.requests.coalescer import NodeFailure
from shardkv.router.requests.node_client import NodeClient
from shardkv.serving.telemetry import Observability
from shardkv.shardd.server import ServerConfig, ShardServer
from shardkv.v1 import replica_pb2

VERSION = (1_700_000_000_000 << 16) | 1
T = TypeVar("T")


def _record(key: bytes, version: int = VERSION) -> replica_pb2.Record:
    return replica_pb2.Record(key=key, value=b"v-" + key, version=version, writer=1)


def _client(address: str, node_id: str = "n1", call_timeout_s: float = 5) -> NodeClient:
    return NodeClient(
        NodeConfig(node_id, address),
        limits=DEFAULT_LIMITS,
        call_timeout_s=call_timeout_s,
        on_failure=lambda failure, timeout: None,
    )


async def _apply(
    client: NodeClient, record: replica_pb2.Record, epoch: int, within_s: float = 5
) -> bool | NodeFailure:
    answer: asyncio.Future[bool | NodeFailure] = asyncio.get_running_loop().create_future()
    deadline = asyncio.get_running_loop().time() + within_s
    client.apply([(record, answer.set_result)], deadline, epoch)
    return await answer


async def _read(
    client: NodeClient, key: bytes, epoch: int, within_s: float = 5
) -> replica_pb2.Record | NodeFailure:
    answer: asyncio.Future[replica_pb2.Record | NodeFailure] = (
        asyncio.get_running_loop().create_future()
    )
    deadline = asyncio.get_running_loop().time() + within_s
    client.read([(key, answer.set_result)], deadline, epoch)
    return await answer


async def _eventually(
    attempt: Callable[[], Awaitable[T | NodeFailure]], tries: int = 50
) -> T | NodeFailure:
    """attempt's first answer that is not a failure, retried every 0.1 s (a node coming
    back); its last failure after tries."""
    for _ in range(tries - 1):
        answer = await attempt()
        if not isinstance(answer, NodeFailure):
            return answer
        await asyncio.sleep(0.1)
    return await attempt()


def _replica_calls(metrics_address: str) -> int:
    """Replica Apply and Read calls the node counted (frames count as the calls)."""
    with urllib.request.urlopen(f"http://{metrics_address}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    return sum(
        int(float(line.rsplit(" ", 1)[1]))
        for line in text.splitlines()
        if line.startswith("shardkv_grpc_requests_total")
        and 'service="shardkv.v1.Replica"' in line
        and ('method="Apply"' in line or 'method="Read"' in line)
    )


@pytest.mark.timeout(60)
def test_frames_are_fenced_and_answered_like_calls(tmp_path: Path) -> None:
    async def main() -> None:
        server = ShardServer(
            ServerConfig(
                node_id="n1",
                data_dir=tmp_path,
                listen="127.0.0.1:0",
                observe=Observability(metrics_listen="127.0.0.1:0"),
            )
        )
        port = await server.start()
        client = _client(f"127.0.0.1:{port}")
        try:
            assert await client.fence(5, 5) == 5
            assert await _apply(client, _record(b"a"), epoch=5) is True
            read = await _read(client, b"a", epoch=5)
            assert isinstance(read, replica_pb2.Record) and read.value == b"v-a"
            # Routed under an epoch below the fence: refused, and nothing written.
            for stale in (
                await _apply(client, _record(b"b"), epoch=4),
                await _read(client, b"a", epoch=4),
            ):
                assert isinstance(stale, NodeFailure), stale
                assert stale.code == grpc.StatusCode.FAILED_PRECONDITION, stale
                assert "epoch 4" in stale.message and "epoch 5" in stale.message, stale
            missing = await _read(client, b"b", epoch=5)
            assert isinstance(missing, replica_pb2.Record) and missing.version == 0
            # Validation answers as a call's would: an empty key is INVALID_ARGUMENT.
            invalid = await _apply(client, _record(b""), epoch=5)
            assert isinstance(invalid, NodeFailure), invalid
            assert invalid.code == grpc.StatusCode.INVALID_ARGUMENT, invalid
            # Six frames, no unary call; the node counted each as the call it replaces.
            assert client.frames_answered == 6
            assert await asyncio.to_thread(_replica_calls, server.metrics_address) == 6
        finally:
            await client.close()
            await server.stop(0)

    asyncio.run(main())


@pytest.mark.timeout(90)
def test_a_silent_node_fails_frames_at_their_deadline_and_a_restarted_one_is_served(
    node: Proc, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        client = _client(node.address, call_timeout_s=1)
        try:
            assert await _apply(client, _record(b"k"), epoch=1) is True
            # A stopped process keeps its connection open and answers nothing.
            node.signal(signal.SIGSTOP)
            started = time.monotonic()
            silent = await _read(client, b"k", epoch=1, within_s=1.2)
            waited = time.monotonic() - started
            assert isinstance(silent, NodeFailure), silent
            assert silent.code == grpc.StatusCode.DEADLINE_EXCEEDED, silent
            assert waited < 2.7, f"the frame waited {waited:.2f}s past its 1.2 s deadline"
            # Nothing answered on the connection for a whole deadline, longer than the
            # connect timeout (the client's 1 s call timeout), nor the ping that follows
            # within another: it is dropped, and the next frame goes on a new one (as
            # after a link that dropped everything).
            await asyncio.sleep(1.2)
            assert "answered no ping within 1s: closed" in caplog.text
            node.signal(signal.SIGCONT)
            read = await _read(client, b"k", epoch=1)
            assert isinstance(read, replica_pb2.Record) and read.value == b"v-k", read
            # A restarted node ends the old connection; the next frames find its new port.
            before = await client.identity(replica_pb2.IdentityRequest(), 5)
            started = time.monotonic()
            await asyncio.to_thread(node.stop)
            stopped = time.monotonic() - started
            assert stopped < 4.0, f"the node took {stopped:.1f}s to stop with a connection open"
            await asyncio.to_thread(node.start)
            read = await _eventually(lambda: _read(client, b"k", epoch=1))
            assert isinstance(read, replica_pb2.Record) and read.value == b"v-k", read
            after = await client.identity(replica_pb2.IdentityRequest(), 5)
            assert after.exchange_port and after.exchange_port != before.exchange_port
        finally:
            await client.close()

    asyncio.run(main())


@pytest.mark.timeout(90)
def test_a_node_that_stops_reading_costs_frames_their_deadline_not_the_connection(
    node: Proc, caplog: pytest.LogCaptureFixture
) -> None:
    """Frames far larger than the socket buffers, to a stopped node: each fails at its
    deadline, the bytes held for them are let go with the connection, and once the node
    runs again a new connection carries the next frame."""

    async def main() -> None:
        client = _client(node.address, call_timeout_s=1)
        try:
            assert await _apply(client, _record(b"small"), epoch=1) is True
            node.signal(signal.SIGSTOP)
            try:
                for index in range(3):
                    big = replica_pb2.Record(
                        key=b"big-%d" % index, value=b"x" * (4 << 20), version=VERSION, writer=1
                    )
                    stalled = await _apply(client, big, epoch=1, within_s=0.5)
                    assert isinstance(stalled, NodeFailure), stalled
            finally:
                node.signal(signal.SIGCONT)
            assert "stopped reading its exchange connection" in caplog.text
            applied = await _eventually(lambda: _apply(client, _record(b"after"), epoch=1))
            assert applied is True, applied
            read = await _read(client, b"small", epoch=1)
            assert isinstance(read, replica_pb2.Record) and read.value == b"v-small", read
        finally:
            await client.close()

    asyncio.run(main())


@pytest.mark.timeout(60)
def test_frames_never_reach_a_node_other_than_the_one_meant(node: Proc) -> None:
    """A router told n2 is at n1's address (a stale topology, a wrong advertised port):
    n1's welcome names n1, so no frame meant for n2 is served by n1."""

    async def main() -> None:
        client = _client(node.address, node_id="n2")
        try:
            misrouted = await _apply(client, _record(b"for-n2"), epoch=1)
            assert isinstance(misrouted, NodeFailure), misrouted
            assert misrouted.code == grpc.StatusCode.UNAVAILABLE, misrouted
            assert "answered by shardkv-node-id 'n1', not 'n2'" in misrouted.message, misrouted
        finally:
            await client.close()
        right = _client(node.address)
        try:
            missing = await _read(right, b"for-n2", epoch=1)
            assert isinstance(missing, replica_pb2.Record) and missing.version == 0, missing
        finally:
            await right.close()

    asyncio.run(main())


@pytest.mark.timeout(60)
def test_a_node_whose_exchange_port_cannot_be_reached_gets_unary_calls(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A firewall that lets the gRPC port through and not the exchange port (here: a
    node advertising a port nothing listens on): writes and reads still work, as calls."""
    unreachable = free_port()
    node = shardd_proc(tmp_path, "n1", extra=["--advertise-exchange-port", str(unreachable)])
    node.start()

    async def main() -> None:
        client = _client(node.address)
        try:
            assert await _apply(client, _record(b"k"), epoch=1) is True
            read = await _read(client, b"k", epoch=1)
            assert isinstance(read, replica_pb2.Record) and read.value == b"v-k", read
            assert client.frames_answered == 0
        finally:
            await client.close()

    try:
        asyncio.run(main())
        assert f"127.0.0.1:{unreachable}" in caplog.text and "gRPC calls for" in caplog.text
    finally:
        node.stop()
