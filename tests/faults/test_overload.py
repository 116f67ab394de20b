"""Overload: far more concurrent requests than a node (or a router) can serve. They must
shed what they cannot serve with RESOURCE_EXHAUSTED (gRPC's maximum_concurrent_rpcs, the
node's bounded group-commit queue, the router's bounded per-node queues) while their
memory stays bounded, keep serving, and keep every write they acknowledged."""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import grpc.aio
import pytest
from harness import Proc, shardd_proc, wait_serving
from shardkv.client import Client, ResourceExhausted
from shardkv.v1 import kv_pb2, kv_pb2_grpc

from faults.cluster import RssSampler, start_faulty_cluster

RSS_LIMIT_MB = 500
VALUE = b"v" * 2048
BATCH_VALUE = VALUE[:256]


# What a flood may get: served, or shed. gRPC core itself cancels calls beyond its queue of
# calls not yet picked up by the server (grpc.server.max_pending_requests_hard_limit, 3000):
# those clients see CANCELLED; the servers' own bounds answer RESOURCE_EXHAUSTED.
SHED = {"RESOURCE_EXHAUSTED", "CANCELLED"}
_CODES = {code.value[0]: code for code in grpc.StatusCode}


def _shape(message: str) -> str:
    """A message with its key and numbers blanked, so equal failures collect as one."""
    return re.sub(r"\d+", "N", re.sub(r"key b'[^']*'", "key K", message))[:400]


async def flood(
    address: str,
    calls: int,
    make: Callable[[kv_pb2_grpc.KVStub, int], Awaitable[object]],
    messages: set[str],
    served: list[int] | None = None,
    acknowledged: list[bytes] | None = None,
) -> Counter[str]:
    """Starts `calls` RPCs at once over a few channels; counts their status codes (and
    those of failed batch items, as "item:CODE"), collects the distinct RESOURCE_EXHAUSTED
    messages and the numbers of the calls served, and the keys of the batch items that
    were acknowledged (item status OK in a reply that came back OK)."""
    codes: Counter[str] = Counter()
    channels = [grpc.aio.insecure_channel(address) for _ in range(8)]
    stubs = [kv_pb2_grpc.KVStub(channel) for channel in channels]

    async def one(i: int) -> None:
        try:
            reply = await make(stubs[i % len(stubs)], i)
            codes["OK"] += 1
            for j, item in enumerate(getattr(reply, "results", ())):
                if item.status.code:
                    codes[f"item:{grpc.StatusCode(_CODES[item.status.code]).name}"] += 1
                    messages.add(_shape(item.status.message))
                elif acknowledged is not None:
                    acknowledged.append(_batch_key(i, j))
            if served is not None:
                served.append(i)
        except grpc.aio.AioRpcError as err:
            codes[err.code().name] += 1
            if err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                messages.add(_shape(err.details() or ""))

    try:
        await asyncio.gather(*(one(i) for i in range(calls)))
    finally:
        await asyncio.gather(*(channel.close() for channel in channels))
    return codes


def _put(stub: kv_pb2_grpc.KVStub, i: int) -> Awaitable[object]:
    return stub.Put(kv_pb2.PutRequest(key=b"flood/%d" % i, value=VALUE), timeout=20)


def _batch_key(i: int, j: int) -> bytes:
    return b"fb/%d/%d" % (i, j)


def _batch(stub: kv_pb2_grpc.KVStub, i: int) -> Awaitable[object]:
    mutations = [kv_pb2.Mutation(key=_batch_key(i, j), value=BATCH_VALUE) for j in range(1000)]
    # A deadline far beyond any shedding delay: a batch the router sheds is answered at once,
    # so running out of it means a hung router, not a busy machine.
    return stub.BatchWrite(kv_pb2.BatchWriteRequest(mutations=mutations), timeout=60)


@pytest.mark.timeout(90)
def test_flooded_node_sheds_load_with_bounded_memory(tmp_path: Path) -> None:
    node = shardd_proc(
        tmp_path, "n1", extra=["--max-concurrent-rpcs", "64", "--max-pending-writes", "4000"]
    ).start()
    try:
        unary_messages: set[str] = set()
        batch_messages: set[str] = set()
        served: list[int] = []
        batch_keys: list[bytes] = []
        with RssSampler([node]) as rss:
            started = time.monotonic()
            unary = asyncio.run(flood(node.address, 4000, _put, unary_messages, served))
            # 48 batches of 1000 at once overflow a 4000-write queue unless this (loaded)
            # machine delivers them slower than the node commits them: flood again then,
            # up to 3 rounds, counting every round's codes.
            batches: Counter[str] = Counter()
            for _ in range(3):
                batches += asyncio.run(
                    flood(node.address, 48, _batch, batch_messages, acknowledged=batch_keys)
                )
                if any("node overloaded" in m for m in batch_messages):
                    break
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
        assert len(batch_keys) >= 1000, "no batch was acknowledged"
        _read_back(node.address, batch_keys, BATCH_VALUE)
    finally:
        node.stop()


@pytest.mark.timeout(150)
def test_flooded_router_sheds_load_with_bounded_memory(tmp_path: Path) -> None:
    cluster = start_faulty_cluster(
        tmp_path, router_extra=["--max-concurrent-rpcs", "64", "--max-queued-per-node", "500"]
    )
    try:
        router = cluster.router
        unary_messages: set[str] = set()
        batch_messages: set[str] = set()
        served: list[int] = []
        batch_keys: list[bytes] = []
        with RssSampler(cluster.all()) as rss:
            started = time.monotonic()
            unary = asyncio.run(flood(router.address, 4000, _put, unary_messages, served))
            batches = asyncio.run(
                flood(router.address, 60, _batch, batch_messages, acknowledged=batch_keys)
            )
            elapsed = time.monotonic() - started
        peaks = {name: round(mb) for name, mb in rss.peak.items()}
        print(
            f"[overload router] unary={dict(unary)} batch={dict(batches)} peak_rss_mb={peaks}"
            f" seconds={elapsed:.1f} messages={sorted(unary_messages | batch_messages)}"
        )
        assert unary["RESOURCE_EXHAUSTED"] > 0 and unary["OK"] > 0, unary
        assert set(unary) <= {"OK"} | SHED, unary
        # The per-node queues refused items beyond their bound instead of growing, and
        # nothing failed any other way: a call or an item that is not served is shed
        # (RESOURCE_EXHAUSTED, or CANCELLED by gRPC's own queue), never UNAVAILABLE,
        # DEADLINE_EXCEEDED or INTERNAL.
        assert batches["item:RESOURCE_EXHAUSTED"] > 0, batches
        assert set(batches) <= {"OK"} | SHED | {f"item:{code}" for code in SHED}, batches
        assert any("router overloaded" in m for m in batch_messages), batch_messages
        assert max(rss.peak.values()) < RSS_LIMIT_MB, peaks
        _still_serving(router)
        _read_back(router.address, [b"flood/%d" % i for i in served], VALUE)
        assert batch_keys, "no batch item was acknowledged"
        _read_back(router.address, batch_keys, BATCH_VALUE)
    finally:
        cluster.stop()


@pytest.mark.timeout(60)
def test_full_store_refuses_writes_and_keeps_serving_reads(tmp_path: Path) -> None:
    """A node whose map may not grow past 2 MiB: writes fail RESOURCE_EXHAUSTED naming the
    full store, on the node and through the router; reads of what was stored go on."""
    cluster = start_faulty_cluster(
        tmp_path,
        nodes=1,
        replication=1,
        read_quorum=1,
        write_quorum=1,
        node_extra=["--map-size", "1MiB", "--max-map-size", "2MiB"],
    )
    try:
        stored: list[bytes] = []
        with Client(cluster.router.address, timeout=5) as kv:
            for i in range(200):
                try:
                    kv.put(b"fill/%03d" % i, VALUE * 32)
                except ResourceExhausted as err:
                    refusal = err
                    break
                stored.append(b"fill/%03d" % i)
            else:
                pytest.fail("a 2 MiB store took 200 x 64 KiB")
            print(f"[full store] router answered after {len(stored)} writes: {refusal}")
            assert "full" in refusal.details and "n1" in refusal.details
            assert kv.get_many(stored) == {key: VALUE * 32 for key in stored}
        node = cluster.nodes[0]
        with grpc.insecure_channel(node.address) as channel:
            stub = kv_pb2_grpc.KVStub(channel)
            with pytest.raises(grpc.RpcError) as err:
                stub.Put(kv_pb2.PutRequest(key=b"more", value=VALUE * 32), timeout=5)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "is full" in (err.value.details() or "")
            assert stub.Get(kv_pb2.GetRequest(key=stored[0]), timeout=5).value == VALUE * 32
        wait_serving(node.address, timeout_s=5)
    finally:
        cluster.stop()


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
