"""Overload: far more concurrent requests than a node (or a router) can serve. They must
shed what they cannot serve with RESOURCE_EXHAUSTED (gRPC's maximum_concurrent_rpcs, the
node's bounded group-commit queue, the router's bounded per-node queues) while their
memory stays bounded, keep serving, and keep every write they acknowledged."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import grpc.aio
import pytest
from faults.cluster import RssSampler
from harness import Proc, shardd_proc, wait_serving
from shardkv.v1 import kv_pb2, kv_pb2_grpc

pytestmark = pytest.mark.slow
RSS_LIMIT_MB = 500
VALUE = b"v" * 2048


# What a flood may get: served, or shed. gRPC core itself cancels calls beyond its queue of
# calls not yet picked up by the server (grpc.server.max_pending_requests_hard_limit, 3000):
# those clients see CANCELLED; the servers' own bounds answer RESOURCE_EXHAUSTED.
SHED = {"RESOURCE_EXHAUSTED", "CANCELLED"}


async def flood(
    address: str,
    calls: int,
    make: Callable[[kv_pb2_grpc.KVStub, int], Awaitable[object]],
    messages: set[str],
    served: list[int] | None = None,
) -> Counter[str]:
    """Starts `calls` RPCs at once over a few channels; counts their status codes, collects
    the distinct RESOURCE_EXHAUSTED messages and the numbers of the calls served."""
    codes: Counter[str] = Counter()
    channels = [grpc.aio.insecure_channel(address) for _ in range(8)]
    stubs = [kv_pb2_grpc.KVStub(channel) for channel in channels]

    async def one(i: int) -> None:
        try:
            await make(stubs[i % len(stubs)], i)
            codes["OK"] += 1
            if served is not None:
                served.append(i)
        except grpc.aio.AioRpcError as err:
            codes[err.code().name] += 1
            if err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                messages.add((err.details() or "")[:60])

    try:
        await asyncio.gather(*(one(i) for i in range(calls)))
    finally:
        await asyncio.gather(*(channel.close() for channel in channels))
    return codes


def _put(stub: kv_pb2_grpc.KVStub, i: int) -> Awaitable[object]:
    return stub.Put(kv_pb2.PutRequest(key=b"flood/%d" % i, value=VALUE), timeout=20)


def _batch(stub: kv_pb2_grpc.KVStub, i: int) -> Awaitable[object]:
    mutations = [kv_pb2.Mutation(key=b"fb/%d/%d" % (i, j), value=VALUE[:256]) for j in range(1000)]
    return stub.BatchWrite(kv_pb2.BatchWriteRequest(mutations=mutations), timeout=20)


@pytest.mark.timeout(90)
def test_flooded_node_sheds_load_with_bounded_memory(tmp_path: Path) -> None:
    node = shardd_proc(
        tmp_path, "n1", extra=["--max-concurrent-rpcs", "64", "--max-pending-writes", "4000"]
    ).start()
    try:
        unary_messages: set[str] = set()
        batch_messages: set[str] = set()
        served: list[int] = []
        with RssSampler([node]) as rss:
            started = time.monotonic()
            unary = asyncio.run(flood(node.address, 4000, _put, unary_messages, served))
            batches = asyncio.run(flood(node.address, 48, _batch, batch_messages))
            elapsed = time.monotonic() - started
        print(
            f"[overload node] unary={dict(unary)} batch={dict(batches)}"
            f" peak_rss_mb={rss.peak['n1']:.0f} seconds={elapsed:.1f}"
            f" messages={sorted(unary_messages | batch_messages)}"
        )
        # gRPC's concurrency bound answered the unary flood ...
        assert unary["RESOURCE_EXHAUSTED"] > 0 and unary["OK"] > 0, unary
        assert set(unary) <= {"OK"} | SHED, unary
        assert any("Concurrent RPC limit" in m for m in unary_messages), unary_messages
        # ... and the bounded commit queue answered the batch flood.
        assert any("node overloaded" in m for m in batch_messages), batch_messages
        assert batches["OK"] > 0 and set(batches) <= {"OK"} | SHED, batches
        assert rss.peak["n1"] < RSS_LIMIT_MB
        _still_serving(node)
        _read_back(node.address, [b"flood/%d" % i for i in served], VALUE)
    finally:
        node.stop()


def _read_back(address: str, keys: list[bytes], value: bytes) -> None:
    """Every acknowledged key holds its value."""
    with grpc.insecure_channel(address) as channel:
        kv = kv_pb2_grpc.KVStub(channel)
        for i in range(0, len(keys), 1000):
            reply = kv.BatchGet(kv_pb2.BatchGetRequest(keys=keys[i : i + 1000]), timeout=10)
            lost = [r.key for r in reply.results if not r.found or r.value != value]
            assert not lost, f"acknowledged writes missing after the flood: {lost[:5]}"


def _still_serving(proc: Proc) -> None:
    wait_serving(proc.address, timeout_s=5)
    with grpc.insecure_channel(proc.address) as channel:
        kv = kv_pb2_grpc.KVStub(channel)
        kv.Put(kv_pb2.PutRequest(key=b"after-flood", value=b"ok"), timeout=5)
        assert kv.Get(kv_pb2.GetRequest(key=b"after-flood"), timeout=5).value == b"ok"
