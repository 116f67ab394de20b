"""A coalesced batch that is retried after some of its callers gave up carries only the items
still awaited: a put that timed out never lands after the same caller's later, acknowledged
put. Real processes (3 nodes, a router); the SDK reaches the router through a FaultProxy
that cuts every connection (UNAVAILABLE, which the SDK retries) until the test heals it.

The SDK is answered DeadlineExceeded for its put of A; it then puts B through another
client, which is acknowledged; only then is the link healed, and the batch that held A,
still retried for a caller that waits, reaches the router. Before, that retry carried A
too, with a newer version than B's: the key ended as A.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import grpc
import grpc.aio
import pytest
from faults.proxy import FaultProxy
from harness import Cluster, free_port, router_proc
from shardkv.client import AsyncClient, Client, DeadlineExceeded, RetryPolicy
from shardkv.v1 import kv_pb2

# Retried every 100 ms for as long as a caller waits.
PATIENT = RetryPolicy(max_attempts=1000, initial_backoff=0.1, max_backoff=0.1, jitter=False)
KEY = b"abandoned"


class Sent:
    """The keys of every BatchWrite attempt, with when it was sent."""

    def __init__(self) -> None:
        self.attempts: list[tuple[float, list[bytes]]] = []
        self._lock = threading.Lock()

    def record(self, request: Any) -> None:
        if isinstance(request, kv_pb2.BatchWriteRequest):
            with self._lock:
                self.attempts.append((time.monotonic(), [m.key for m in request.mutations]))

    def carrying(self, key: bytes, *, after: float = 0.0) -> int:
        with self._lock:
            return sum(1 for at, keys in self.attempts if at > after and key in keys)


class SyncRecorder(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    def __init__(self, sent: Sent) -> None:
        self.sent = sent

    def intercept_unary_unary(
        self, continuation: Callable[[Any, Any], Any], details: Any, request: Any
    ) -> Any:
        self.sent.record(request)
        return continuation(details, request)


class AsyncRecorder(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    def __init__(self, sent: Sent) -> None:
        self.sent = sent

    async def intercept_unary_unary(
        self, continuation: Callable[[Any, Any], Awaitable[Any]], details: Any, request: Any
    ) -> Any:
        self.sent.record(request)
        return await continuation(details, request)


@pytest.fixture
def proxy(cluster: Cluster) -> Iterator[FaultProxy]:
    """A proxy in front of the router: the SDK under test reaches it only through this."""
    running = FaultProxy(cluster.router.address).start()
    try:
        yield running
    finally:
        running.stop()


def until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


@pytest.mark.timeout(90)
def test_async_retry_never_resends_a_put_whose_caller_gave_up(
    cluster: Cluster, proxy: FaultProxy
) -> None:
    sent = Sent()

    async def scenario() -> float:
        recorder = AsyncRecorder(sent)
        async with AsyncClient(proxy.address, retry=PATIENT, interceptors=[recorder]) as kv:
            await kv.put("warm-up", b"x")
            proxy.cut()
            # Submitted in one event-loop turn: one batch, retried for as long as the
            # patient caller waits.
            patient = asyncio.ensure_future(kv.put("patient", b"v", timeout=30))
            with pytest.raises(DeadlineExceeded):
                await kv.put(KEY, b"A", timeout=1.0)
            gave_up = time.monotonic()
            assert sent.carrying(KEY) >= 2, "A travelled in the retried batch"
            with Client(cluster.router.address) as direct:
                direct.put(KEY, b"B")  # the caller's next put: acknowledged
            proxy.heal()
            assert isinstance(await patient, int)
            return gave_up

    gave_up = asyncio.run(scenario())
    with Client(cluster.router.address) as direct:
        assert direct.get(KEY) == b"B", "the put that timed out landed after the later one"
    assert sent.carrying(b"patient", after=gave_up) >= 1, "the batch was retried afterwards"
    assert sent.carrying(KEY, after=gave_up) == 0, "A was sent after its caller gave up"


@pytest.mark.timeout(90)
def test_thread_retry_never_resends_a_put_whose_caller_gave_up(
    cluster: Cluster, proxy: FaultProxy
) -> None:
    sent = Sent()
    with Client(proxy.address, retry=PATIENT, interceptors=[SyncRecorder(sent)]) as kv:
        kv.put("warm-up", b"x")
        proxy.cut()
        # Two callers hold both batch slots (retrying): "short" gives up after 1 s and
        # hands its slot to the oldest caller queued, "patient", whose batch takes along
        # the put of A queued behind it.
        results: dict[str, object] = {}

        def put(name: str, timeout: float) -> None:
            try:
                results[name] = kv.put(name, b"v", timeout=timeout)
            except Exception as err:
                results[name] = err

        short = threading.Thread(target=put, args=("short", 1.0))
        long = threading.Thread(target=put, args=("long", 30))
        for thread in (short, long):
            thread.start()
        until(lambda: sent.carrying(b"short") > 0 and sent.carrying(b"long") > 0)
        patient = threading.Thread(target=put, args=("patient", 30))
        patient.start()
        time.sleep(0.2)  # "patient" is queued first
        with pytest.raises(DeadlineExceeded):
            kv.put(KEY, b"A", timeout=2.5)
        gave_up = time.monotonic()
        assert sent.carrying(KEY) >= 2, "A travelled in the retried batch of 'patient'"
        with Client(cluster.router.address) as direct:
            direct.put(KEY, b"B")  # the caller's next put: acknowledged
        proxy.heal()
        for thread in (short, long, patient):
            thread.join(40)
    assert isinstance(results["patient"], int) and isinstance(results["long"], int), results
    with Client(cluster.router.address) as direct:
        assert direct.get(KEY) == b"B", "the put that timed out landed after the later one"
    assert sent.carrying(b"patient", after=gave_up) >= 1, "the batch was retried afterwards"
    assert sent.carrying(KEY, after=gave_up) == 0, "A was sent after its caller gave up"


@pytest.mark.timeout(90)
def test_async_retry_over_frames_never_resends_a_put_whose_caller_gave_up(
    cluster: Cluster,
) -> None:
    """The same scenario with the SDK's KV calls as frames on the router's exchange port
    (no interceptor: frames), both of the router's ports behind the proxy."""
    port, exchange = free_port(), free_port()
    proxy = FaultProxy(f"127.0.0.1:{port}", f"127.0.0.1:{exchange}").start()
    advertised = proxy.addresses[1].rpartition(":")[2]
    extra = ["--exchange-port", str(exchange), "--advertise-exchange-port", advertised]
    cluster.routers.append(router_proc(cluster.base, cluster.config, "r2", port=port, extra=extra))
    cluster.routers[-1].start()

    async def scenario() -> None:
        async with AsyncClient(proxy.address, retry=PATIENT) as kv:
            await kv.put("warm-up", b"x")
            assert kv.frames_answered == 1, "the put went as a frame, through the proxy"
            proxy.cut()
            patient = asyncio.ensure_future(kv.put("patient", b"v", timeout=30))
            with pytest.raises(DeadlineExceeded):
                await kv.put(KEY, b"A", timeout=1.0)
            with Client(cluster.router.address) as direct:
                direct.put(KEY, b"B")  # the caller's next put: acknowledged
            proxy.heal()
            assert isinstance(await patient, int)
            assert kv.frames_answered >= 2, "the retried batch went as a frame"

    try:
        asyncio.run(scenario())
    finally:
        proxy.stop()
    with Client(cluster.router.address) as direct:
        assert direct.get(KEY) == b"B", "the put that timed out landed after the later one"
