"""Concurrent single-key calls on one client are coalesced into few batch RPCs, and every
caller still gets its own answer, its own error and its own timeout. RPCs are counted by
a real client interceptor on the client's real channel."""

from __future__ import annotations

import asyncio
import collections
import signal
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent import futures
from typing import Any

import grpc
import grpc.aio
import pytest
from harness import Proc
from shardkv.client import AsyncClient, Client, DeadlineExceeded
from shardkv.client.base import MAX_IN_FLIGHT
from shardkv.v1 import kv_pb2, kv_pb2_grpc

CALLS = 200


def _method(details: Any) -> str:
    method = details.method
    return (method.decode() if isinstance(method, bytes) else method).rsplit("/", 1)[-1]


class AsyncCounter(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Counts the unary RPCs an AsyncClient sends, per method."""

    def __init__(self) -> None:
        self.calls: collections.Counter[str] = collections.Counter()

    async def intercept_unary_unary(
        self, continuation: Callable[[Any, Any], Awaitable[Any]], details: Any, request: Any
    ) -> Any:
        self.calls[_method(details)] += 1
        return await continuation(details, request)


class SyncCounter(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Counts the unary RPCs a Client sends, per method (thread-safe)."""

    def __init__(self) -> None:
        self.calls: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()

    def intercept_unary_unary(
        self, continuation: Callable[[Any, Any], Any], details: Any, request: Any
    ) -> Any:
        with self._lock:
            self.calls[_method(details)] += 1
        return continuation(details, request)


@pytest.mark.timeout(60)
def test_concurrent_async_calls_share_few_rpcs(node: Proc) -> None:
    counter = AsyncCounter()

    async def scenario() -> None:
        async with AsyncClient(node.address, interceptors=[counter]) as kv:
            versions = await asyncio.gather(
                *(kv.put(f"key-{i}", f"value-{i}") for i in range(CALLS))
            )
            assert len(set(versions)) == CALLS, "every put got its own version"
            values = await asyncio.gather(*(kv.get(f"key-{i}") for i in range(CALLS)))
            assert values == [f"value-{i}".encode() for i in range(CALLS)]
            records = await asyncio.gather(*(kv.get_record(f"key-{i}") for i in range(CALLS)))
            assert [r.version if r else None for r in records] == versions

            # Writes and deletes share BatchWrite calls; reads of missing keys answer None.
            mixed = await asyncio.gather(
                *(
                    kv.delete(f"key-{i}") if i % 2 else kv.put(f"key-{i}", b"again")
                    for i in range(CALLS)
                )
            )
            assert all(m > v for m, v in zip(mixed, versions, strict=True))
            after = await asyncio.gather(*(kv.get(f"key-{i}") for i in range(CALLS)))
            assert after == [None if i % 2 else b"again" for i in range(CALLS)]

    asyncio.run(scenario())
    print(f"\nasync: {5 * CALLS} single-key calls -> RPCs {dict(counter.calls)}")
    assert set(counter.calls) == {"BatchGet", "BatchWrite"}, "one mechanism: batch RPCs only"
    assert counter.calls["BatchWrite"] <= 2 * 10, "200 concurrent writes, twice"
    assert counter.calls["BatchGet"] <= 3 * 10, "200 concurrent reads, three times"


@pytest.mark.timeout(60)
def test_a_caller_past_its_timeout_fails_alone(node: Proc) -> None:
    async def scenario() -> None:
        async with AsyncClient(node.address) as kv:
            await kv.put("warm-up", b"x")  # connect first, so only the timeouts below vary
            started = time.monotonic()
            puts = [kv.put(f"t-{i}", b"v") for i in range(CALLS)]
            hasty = kv.put("hasty", b"v", timeout=1e-6)
            outcomes = await asyncio.gather(*puts, hasty, return_exceptions=True)
            assert isinstance(outcomes[-1], DeadlineExceeded), outcomes[-1]
            assert b"hasty" in outcomes[-1].keys and "unknown" in str(outcomes[-1])
            assert all(isinstance(v, int) for v in outcomes[:-1]), "the others all succeed"
            assert time.monotonic() - started < 5

    asyncio.run(scenario())


@pytest.mark.timeout(60)
def test_deadlines_of_callers_in_flight_and_queued(node: Proc) -> None:
    """The server is frozen (SIGSTOP) so that calls stay in flight as long as the test says."""

    counter = AsyncCounter()

    async def scenario() -> None:
        async with AsyncClient(node.address, interceptors=[counter]) as kv:
            await kv.put("warm-up", b"x")
            node.signal(signal.SIGSTOP)
            try:
                # One batch: the short timeout fails alone while the batch keeps running.
                patient = asyncio.ensure_future(kv.put("patient", b"v", timeout=20))
                with pytest.raises(DeadlineExceeded):
                    await kv.put("hasty", b"v", timeout=0.2)
                assert not patient.done()
                assert counter.calls["BatchWrite"] == 2

                # Fill the other slots, one batch call each (submitted in separate turns).
                busy = []
                for i in range(MAX_IN_FLIGHT - 1):
                    busy.append(asyncio.ensure_future(kv.put(f"busy-{i}", b"v", timeout=20)))
                    await asyncio.sleep(0.05)
                assert counter.calls["BatchWrite"] == 1 + MAX_IN_FLIGHT
                # Every slot busy: the next caller queues, times out and is never sent.
                with pytest.raises(DeadlineExceeded):
                    await kv.put("never-sent", b"v", timeout=0.2)
            finally:
                node.signal(signal.SIGCONT)
            assert all(isinstance(v, int) for v in await asyncio.gather(patient, *busy))
            sent = counter.calls["BatchWrite"]
            assert sent == 1 + MAX_IN_FLIGHT, "the queued write was dropped, not sent"
            assert await kv.get("never-sent") is None
            # "hasty" was sent: its outcome is unknown, and here it happened.
            assert await kv.get("hasty") == b"v"

    asyncio.run(scenario())


@pytest.mark.timeout(60)
def test_threads_sharing_a_client_are_coalesced(node: Proc) -> None:
    counter = SyncCounter()
    threads, per_thread = 32, 25
    errors: list[BaseException] = []
    with Client(node.address, interceptors=[counter]) as kv:
        kv.put("warm-up", b"x")
        counter.calls.clear()
        barrier = threading.Barrier(threads)

        def worker(n: int) -> None:
            try:
                barrier.wait()
                for i in range(per_thread):
                    key = f"thread-{n}-{i}"
                    version = kv.put(key, key)
                    record = kv.get_record(key)
                    assert record is not None and record.value == key.encode()
                    assert record.version == version
            except BaseException as err:  # reported below, in the test's thread
                errors.append(err)

        pool = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join(50)
    assert not errors, errors[:3]
    calls = threads * per_thread
    print(f"\nthreads: {calls} puts + {calls} gets, {threads} threads -> {dict(counter.calls)}")
    assert counter.calls["BatchWrite"] < calls / 2
    assert counter.calls["BatchGet"] < calls / 2


class SlowKV(kv_pb2_grpc.KVServicer):
    """Answers every BatchGet after 1 s (key "long": 2.5 s): calls that stay in flight."""

    def BatchGet(self, request: kv_pb2.BatchGetRequest, context: Any) -> Any:
        time.sleep(2.5 if b"long" in request.keys else 1.0)
        found = [kv_pb2.GetResult(key=k, found=True, value=b"v", version=1) for k in request.keys]
        return kv_pb2.BatchGetResponse(results=found)


@pytest.mark.timeout(60)
def test_a_thread_leading_a_batch_stops_waiting_at_its_own_deadline() -> None:
    """Both slots busy (a 1 s call and a 2.5 s one); a get with 1.2 s queues, then one
    with 5 s. When the first slot frees, the short caller leads the next batch, which
    carries both and runs until the later deadline: the short caller still gets
    DeadlineExceeded at its own 1.2 s, and the other its value."""
    assert MAX_IN_FLIGHT == 2, "the scenario fills two slots"
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    kv_pb2_grpc.add_KVServicer_to_server(SlowKV(), server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    outcomes: dict[str, tuple[float, object]] = {}

    def get(kv: Client, key: str, timeout: float) -> None:
        started = time.monotonic()
        try:
            value: object = kv.get(key, timeout=timeout)
        except DeadlineExceeded as err:
            value = err
        outcomes[key] = (time.monotonic() - started, value)

    try:
        with Client(f"127.0.0.1:{port}", timeout=5) as kv:
            threads = []
            for key, timeout in [("first", 5.0), ("long", 5.0), ("hasty", 1.2), ("patient", 5.0)]:
                thread = threading.Thread(target=get, args=(kv, key, timeout))
                thread.start()
                threads.append(thread)
                time.sleep(0.1)
            for thread in threads:
                thread.join(10)
    finally:
        server.stop(0)
    took, hasty = outcomes["hasty"]
    assert isinstance(hasty, DeadlineExceeded), hasty
    assert took < 1.4, f"get(timeout=1.2) returned after {took:.2f}s"
    assert outcomes["patient"][1] == b"v", outcomes["patient"]
    assert outcomes["first"][1] == b"v" and outcomes["long"][1] == b"v", outcomes
