"""Overload: far more concurrent requests than a node (or a router) can serve. They must
shed what they cannot serve with RESOURCE_EXHAUSTED (gRPC's maximum_concurrent_rpcs, the
node's bounded group-commit queue, the router's bounded per-node queues) while their
memory stays bounded, keep serving, and keep every write they acknowledged."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import grpc.aio
import lmdb
import pytest
from harness import Proc, shardd_proc, wait_serving
from shardkv.client import Client, ResourceExhausted
from shardkv.v1 import kv_pb2, kv_pb2_grpc

from faults.cluster import RssSampler, start_faulty_cluster

RSS_LIMIT_MB = 500
VALUE = b"v" * 2048
BATCH_VALUE = VALUE[:256]
BATCH_ITEMS = 1000
# The node's bound on writes waiting for a commit, and its batch flood: with its commits
# held (CommitHold), the node takes one batch into the stuck commit and queues at most
# MAX_PENDING_WRITES more items, so the flood overflows the queue whatever the machine.
MAX_PENDING_WRITES = 4000
NODE_BATCHES = 48
assert NODE_BATCHES > 1 + MAX_PENDING_WRITES // BATCH_ITEMS + 1
# How long held commits wait for the flood to be shed: a node that never sheds gets its
# commits back then, and fails the checks.
HOLD_LIMIT_S = 30.0


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


class CommitHold:
    """Holds the writer lock of a node's LMDB store from a thread of this process (the
    lock is shared between processes) until release(): the node's commit worker waits in
    its next commit, so nothing leaves the node's queue of writes meanwhile. A flood then
    meets a full queue however fast this machine commits (a flood alone overflowed it only
    when the machine delivered writes faster than the node committed them)."""

    def __init__(self, data_dir: Path) -> None:
        self._data_dir = data_dir
        self._held = threading.Event()
        self._release = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._hold, name="commit-hold", daemon=True)

    def __enter__(self) -> CommitHold:
        self._thread.start()
        if not self._held.wait(30) or self._error is not None:
            self.release()
            raise RuntimeError(f"could not hold the commits of {self._data_dir}: {self._error}")
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
        self._thread.join(30)

    def release(self) -> None:
        self._release.set()

    def _hold(self) -> None:
        # A write transaction is the writer lock, released by the thread that took it.
        try:
            env = lmdb.open(str(self._data_dir), subdir=True, lock=True)
            try:
                txn = env.begin(write=True)
                self._held.set()
                self._release.wait()
                txn.abort()
            finally:
                env.close()
        except BaseException as err:
            self._error = err
            self._held.set()


async def flood_held(
    hold: CommitHold,
    shed: str,
    address: str,
    calls: int,
    make: Callable[[kv_pb2_grpc.KVStub, int], Awaitable[object]],
    messages: set[str],
    served: list[int] | None = None,
    acknowledged: list[bytes] | None = None,
) -> Counter[str]:
    """flood() while hold keeps the node's commits, which go once a call was refused with
    a message containing shed (or after HOLD_LIMIT_S): the calls the node took in are
    then committed and answered."""

    async def let_go() -> None:
        deadline = time.monotonic() + HOLD_LIMIT_S
        while time.monotonic() < deadline and not any(shed in m for m in messages):
            await asyncio.sleep(0.01)
        hold.release()

    releaser = asyncio.create_task(let_go())
    try:
        return await flood(address, calls, make, messages, served, acknowledged)
    finally:
        releaser.cancel()
        hold.release()


def _put(stub: kv_pb2_grpc.KVStub, i: int) -> Awaitable[object]:
    return stub.Put(kv_pb2.PutRequest(key=b"flood/%d" % i, value=VALUE), timeout=20)


def _batch_key(i: int, j: int) -> bytes:
    return b"fb/%d/%d" % (i, j)


def _batch(stub: kv_pb2_grpc.KVStub, i: int) -> Awaitable[object]:
    mutations = [
        kv_pb2.Mutation(key=_batch_key(i, j), value=BATCH_VALUE) for j in range(BATCH_ITEMS)
    ]
    # A deadline far beyond any shedding delay: a batch the router sheds is answered at once,
    # so running out of it means a hung router, not a busy machine.
    return stub.BatchWrite(kv_pb2.BatchWriteRequest(mutations=mutations), timeout=60)


@pytest.mark.timeout(120)
def test_flooded_node_sheds_load_with_bounded_memory(tmp_path: Path) -> None:
    """Each flood meets a node whose commits are held: nothing drains while it arrives, so
    the bounds must answer it (not whether this machine commits faster than it sends).
    Without --no-sync a node commits writes to its journal and LMDB only at checkpoints,
    which the hold would not stop: the unary flood then shed nothing whenever the node
    kept up with it (3,253 served, 747 cancelled by gRPC core's queue, once in a run). The
    bounds are the same code either way; a node with its journal is flooded below."""
    extra = ["--max-concurrent-rpcs", "64", "--max-pending-writes", str(MAX_PENDING_WRITES)]
    extra.append("--no-sync")
    node = shardd_proc(tmp_path, "n1", extra=extra).start()
    data_dir = tmp_path / "n1"
    try:
        unary_messages: set[str] = set()
        batch_messages: set[str] = set()
        served: list[int] = []
        batch_keys: list[bytes] = []
        with RssSampler([node]) as rss:
            started = time.monotonic()
            with CommitHold(data_dir) as hold:
                unary = asyncio.run(
                    flood_held(
                        hold,
                        "Concurrent RPC limit",
                        node.address,
                        4000,
                        _put,
                        unary_messages,
                        served,
                    )
                )
            with CommitHold(data_dir) as hold:
                batches = asyncio.run(
                    flood_held(
                        hold,
                        "node overloaded",
                        node.address,
                        NODE_BATCHES,
                        _batch,
                        batch_messages,
                        acknowledged=batch_keys,
                    )
                )
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
        assert len(batch_keys) >= BATCH_ITEMS, "no batch was acknowledged"
        _read_back(node.address, batch_keys, BATCH_VALUE)
    finally:
        node.stop()


@pytest.mark.timeout(120)
def test_flooded_journaled_node_keeps_what_it_acknowledged(tmp_path: Path) -> None:
    """A node as it ships, with its journal, flooded without any hold: whether it sheds
    depends on how fast this machine journals, so only what must hold whatever the speed
    is asserted. Every call and batch item is served or shed, memory stays bounded, and
    every write it acknowledged is there after a SIGKILL and the journal's replay."""
    extra = ["--max-concurrent-rpcs", "64", "--max-pending-writes", str(MAX_PENDING_WRITES)]
    node = shardd_proc(tmp_path, "n1", extra=extra).start()
    try:
        messages: set[str] = set()
        served: list[int] = []
        batch_keys: list[bytes] = []
        with RssSampler([node]) as rss:
            unary = asyncio.run(flood(node.address, 4000, _put, messages, served))
            batches = asyncio.run(
                flood(node.address, NODE_BATCHES, _batch, messages, acknowledged=batch_keys)
            )
        print(f"[overload journaled node] unary={dict(unary)} batch={dict(batches)}")
        assert set(unary) <= {"OK"} | SHED and unary["OK"] > 0, unary
        assert set(batches) <= {"OK"} | SHED | {f"item:{c}" for c in SHED}, batches
        assert batch_keys, "no batch item was acknowledged"
        assert rss.peak["n1"] < RSS_LIMIT_MB
        node.kill()
        node.start()
        _read_back(node.address, [b"flood/%d" % i for i in served], VALUE)
        _read_back(node.address, batch_keys, BATCH_VALUE)
        _still_serving(node)
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
