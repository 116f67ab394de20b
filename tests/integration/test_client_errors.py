"""What the SDK raises, and when: after close, for calls in flight at close, for bad
timeouts and consistency levels, and with which key and router. Against a real shardd or
cluster (or a port where nothing listens), with both Client and AsyncClient."""

from __future__ import annotations

import asyncio
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import Cluster, free_port, shardd_proc
from shardkv.client import (
    AsyncClient,
    Cancelled,
    Client,
    InvalidArgument,
    RetryPolicy,
    ShardKVError,
    Unavailable,
)
from shardkv.client.base import MAX_TIMEOUT_S

FLAVOURS = ["sync", "async"]


@pytest.fixture(scope="module")
def shardd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    proc = shardd_proc(Path(tmp_path_factory.mktemp("errors")), "n1").start()
    try:
        yield proc.address
    finally:
        proc.stop()


def _run(flavour: str, target: str, body: Callable[[Any], Any], **options: Any) -> Any:
    """body(client) with a Client, or with an AsyncClient (body returns a coroutine then)."""
    if flavour == "sync":
        return body(Client(target, **options))

    async def main() -> Any:
        return await body(AsyncClient(target, **options))

    return asyncio.run(main())


def _closed_calls(kv: Any) -> list[tuple[str, Callable[[], Any]]]:
    return [
        ("put", lambda: kv.put("k", b"v")),
        ("get", lambda: kv.get("k")),
        ("delete", lambda: kv.delete("k")),
        ("get_many", lambda: kv.get_many(["k", "l"])),
        ("put_many", lambda: kv.put_many({"k": b"v"})),
        ("topology", lambda: kv.topology()),
    ]


@pytest.mark.timeout(60)
def test_calls_after_close_raise_client_closed_sync(shardd: str) -> None:
    kv = Client(shardd, timeout=3)
    kv.put("k", b"v")
    kv.close()
    for name, call in [*_closed_calls(kv), ("scan", lambda: list(kv.scan(prefix="k")))]:
        with pytest.raises(Cancelled, match="closed") as raised:
            call()
        print(f"sync {name} after close: {type(raised.value).__name__}: {raised.value}")
        assert isinstance(raised.value, ShardKVError)
    kv.close()  # twice is fine


@pytest.mark.timeout(60)
def test_calls_after_close_raise_client_closed_async(shardd: str) -> None:
    async def main() -> None:
        kv = AsyncClient(shardd, timeout=3)
        await kv.put("k", b"v")
        await kv.close()
        for name, call in _closed_calls(kv):
            with pytest.raises(Cancelled, match="closed") as raised:
                await call()
            print(f"async {name} after close: {type(raised.value).__name__}: {raised.value}")
        with pytest.raises(Cancelled, match="closed"):
            _ = [r async for r in kv.scan(prefix="k")]
        await kv.close()

    asyncio.run(main())


@pytest.mark.timeout(60)
def test_calls_in_flight_at_close_fail_with_cancelled_sync(shardd: str) -> None:
    kv = Client(shardd, timeout=30)
    raised: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            for j in range(10**6):
                if j % 2:
                    kv.put(f"race-{i}-{j % 5}", b"x")
                else:
                    kv.get(f"race-{i}-{j % 5}", timeout=30 if i % 2 else 0.5)
        except BaseException as err:
            raised.append(err)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(16)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)
    kv.close()
    for thread in threads:
        thread.join(5)
    assert not any(thread.is_alive() for thread in threads), "every call ends at close"
    kinds = sorted({f"{type(e).__module__}.{type(e).__name__}: {e}"[:120] for e in raised})
    print("\n".join(kinds))
    assert all(isinstance(err, Cancelled) for err in raised), kinds


@pytest.mark.timeout(60)
@pytest.mark.parametrize("frames", [True, False])
def test_calls_in_flight_at_close_fail_with_cancelled_async(shardd: str, frames: bool) -> None:
    async def main() -> list[BaseException]:
        kv = AsyncClient(shardd, timeout=30, frames=frames)
        await kv.put("arace", b"x")

        async def worker(i: int) -> None:
            for j in range(10**6):
                if j % 2:
                    await kv.put(f"arace-{i}-{j % 5}", b"x")
                else:
                    await kv.get(f"arace-{i}-{j % 5}")

        tasks = [asyncio.create_task(worker(i)) for i in range(32)]
        await asyncio.sleep(1.0)
        await kv.close()
        done, pending = await asyncio.wait(tasks, timeout=5)
        for task in pending:
            task.cancel()
        assert not pending, f"{len(pending)} tasks still running 5 s after close"
        return [task.exception() for task in done if task.exception() is not None]

    raised = asyncio.run(main())
    kinds = sorted({f"{type(e).__module__}.{type(e).__name__}: {e}"[:120] for e in raised})
    print("\n".join(kinds))
    assert len(raised) == 32
    assert all(isinstance(err, Cancelled) for err in raised), kinds


BAD_TIMEOUTS = [math.inf, math.nan, 0.0, -1.0, 1e10, MAX_TIMEOUT_S * 2]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("flavour", FLAVOURS)
def test_timeouts_are_checked_in_one_place(shardd: str, flavour: str) -> None:
    """Not finite, not positive or over MAX_TIMEOUT_S: ValueError naming the value and the
    bound, from the constructor and from a call; MAX_TIMEOUT_S itself works, alone and
    coalesced."""
    for bad in BAD_TIMEOUTS:
        with pytest.raises(ValueError, match=f"timeout.*{bad}.*{MAX_TIMEOUT_S:g}"):
            Client(shardd, timeout=bad) if flavour == "sync" else AsyncClient(shardd, timeout=bad)

    async def calls_async(kv: AsyncClient) -> list[Any]:
        async with kv:
            for bad in BAD_TIMEOUTS:
                with pytest.raises(ValueError, match=f"{MAX_TIMEOUT_S:g}"):
                    await kv.put("t", b"v", timeout=bad)
                with pytest.raises(ValueError, match=f"{MAX_TIMEOUT_S:g}"):
                    kv.scan(timeout=bad)  # when called, not when first iterated
            await kv.put("t", b"v")
            return await asyncio.gather(*(kv.get(f"t-{i}") for i in range(32)))

    def calls_sync(kv: Client) -> list[Any]:
        with kv:
            for bad in BAD_TIMEOUTS:
                with pytest.raises(ValueError, match=f"{MAX_TIMEOUT_S:g}"):
                    kv.put("t", b"v", timeout=bad)
                with pytest.raises(ValueError, match=f"{MAX_TIMEOUT_S:g}"):
                    kv.scan(timeout=bad)  # when called, not when first iterated
            kv.put("t", b"v")
            results: list[Any] = []
            threads = [
                threading.Thread(target=lambda i=i: results.append(kv.get(f"t-{i}")))
                for i in range(32)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(10)
            return results

    body = calls_sync if flavour == "sync" else calls_async
    assert _run(flavour, shardd, body, timeout=MAX_TIMEOUT_S) == [None] * 32


@pytest.mark.timeout(30)
@pytest.mark.parametrize("flavour", FLAVOURS)
def test_bad_consistency_names_the_levels(flavour: str) -> None:
    target = f"127.0.0.1:{free_port()}"
    for level in (5, "QUORUM"):
        with pytest.raises(InvalidArgument, match="ONE, QUORUM, ALL"):
            Client(target, consistency=level) if flavour == "sync" else AsyncClient(
                target, consistency=level
            )

    async def calls_async(kv: AsyncClient) -> None:
        for level in (5, "QUORUM"):
            for call in (kv.get("k", consistency=level), kv.put("k", b"v", consistency=level)):
                with pytest.raises(InvalidArgument, match="ONE, QUORUM, ALL"):
                    await call
            with pytest.raises(InvalidArgument, match="ONE, QUORUM, ALL"):
                kv.scan(consistency=level)

    def calls_sync(kv: Client) -> None:
        for level in (5, "QUORUM"):
            for call in (
                lambda level=level: kv.get("k", consistency=level),
                lambda level=level: kv.put("k", b"v", consistency=level),
                lambda level=level: kv.get_many(["k"], consistency=level),
                lambda level=level: kv.scan(consistency=level),
            ):
                with pytest.raises(InvalidArgument, match="ONE, QUORUM, ALL"):
                    call()

    _run(flavour, target, calls_sync if flavour == "sync" else calls_async)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("flavour", FLAVOURS)
def test_whole_call_errors_name_the_callers_key(flavour: str) -> None:
    """A router that is not there: the call fails whole (UNAVAILABLE), and each caller's
    error names its own key."""
    target = f"127.0.0.1:{free_port()}"

    def calls_sync(kv: Client) -> list[ShardKVError]:
        errors = []
        for call in (lambda: kv.put("user:42", b"v"), lambda: kv.get("user:42")):
            with pytest.raises(ShardKVError) as raised:
                call()
            errors.append(raised.value)
        return errors

    async def calls_async(kv: AsyncClient) -> list[ShardKVError]:
        errors = []
        for call in (kv.put("user:42", b"v"), kv.get("user:42")):
            with pytest.raises(ShardKVError) as raised:
                await call
            errors.append(raised.value)
        return errors

    body = calls_sync if flavour == "sync" else calls_async
    options = {"timeout": 2.0, "retry": RetryPolicy(max_attempts=1)}
    for err in _run(flavour, target, body, **options):
        print(f"{flavour}: {type(err).__name__} keys={err.keys} {err}")
        assert err.keys == (b"user:42",)
        assert "user:42" in str(err)
        assert err.target == target


@pytest.mark.timeout(90)
def test_an_unavailable_write_says_it_may_be_stored(cluster: Cluster) -> None:
    """Two of three nodes paused: the write reaches one replica of the W=2 it needs, fails
    UNAVAILABLE, and was stored there all the same (it spreads once the nodes resume)."""
    assert Unavailable.__doc__ is not None
    doc = " ".join(Unavailable.__doc__.split())
    assert "may have been stored" in doc, doc
    paused = [cluster.node("n2"), cluster.node("n3")]
    with Client(cluster.router.address, timeout=4) as kv:
        kv.put("unk-k", b"old")
        for node in paused:
            node.signal(signal.SIGSTOP)
        try:
            time.sleep(1.5)
            with pytest.raises(Unavailable) as raised:
                kv.put("unk-k", b"NEW")
        finally:
            for node in paused:
                node.signal(signal.SIGCONT)
        err = raised.value
        print(f"{type(err).__name__} target={err.target} keys={err.keys}: {err}")
        assert err.target == cluster.router.address
        assert err.keys == (b"unk-k",)
        time.sleep(3)
        print("value after the nodes resumed:", kv.get("unk-k"))


# One router that is not there and a long back-off: a call is asleep in it when closed.
SLOW_BACKOFF = RetryPolicy(max_attempts=3, initial_backoff=4.0, max_backoff=4.0, jitter=False)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("flavour", ["sync", "async-frames", "async-grpc"])
def test_close_ends_a_call_sleeping_in_its_back_off(flavour: str) -> None:
    """The call fails with ClientClosed at once, not when its 4 s back-off ends."""
    dead = f"127.0.0.1:{free_port()}"
    ended: list[float] = []

    def sync() -> BaseException:
        kv = Client(dead, timeout=20, retry=SLOW_BACKOFF)
        raised: list[BaseException] = []

        def call() -> None:
            with pytest.raises(ShardKVError) as info:
                kv.get("k")
            raised.append(info.value)

        thread = threading.Thread(target=call)
        thread.start()
        time.sleep(0.5)  # the first attempt was refused: asleep in its back-off
        ended.append(time.monotonic())
        kv.close()
        thread.join(10)
        ended.append(time.monotonic())
        return raised[0]

    async def aio() -> BaseException:
        kv = AsyncClient(dead, timeout=20, retry=SLOW_BACKOFF, frames=flavour == "async-frames")
        call = asyncio.create_task(kv.get("k"))
        await asyncio.sleep(0.5)
        ended.append(time.monotonic())
        await kv.close()
        with pytest.raises(ShardKVError) as raised:
            await asyncio.wait_for(call, 10)
        ended.append(time.monotonic())
        return raised.value

    err = sync() if flavour == "sync" else asyncio.run(aio())
    print(f"{flavour}: returned {ended[1] - ended[0]:.2f} s after close(): {err!r}")
    assert isinstance(err, Cancelled) and "closed" in str(err), repr(err)
    assert ended[1] - ended[0] < 1.0, "close() wakes a call in its back-off"
