"""The SDK within the message limit: batches of the largest values allowed (1 MiB) are cut
by bytes as well as by items, a read whose answer would be too large is asked again in
smaller batches, and put_many sends every batch and names exactly the keys not written.
Against a real cluster (3 nodes + router), with both Client and AsyncClient."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from harness import Cluster, start_cluster
from shardkv.client import AsyncClient, Client, InvalidArgument, ShardKVError
from shardkv.common.limits import DEFAULT_LIMITS
from shardkv.v1 import kv_pb2

BIG = b"x" * DEFAULT_LIMITS.max_value_bytes  # the largest value allowed
COUNT = 40  # 40 MiB of values: over the 32 MiB message limit in one batch


@pytest.fixture(scope="module")
def router(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    cluster: Cluster = start_cluster(Path(tmp_path_factory.mktemp("limits")))
    try:
        yield cluster.router.address
    finally:
        cluster.stop()


def _errors(results: list[Any]) -> list[str]:
    return [f"{type(r).__name__}: {str(r)[:160]}" for r in results if isinstance(r, Exception)]


def _threads(call: Callable[[int], Any]) -> list[Any]:
    """call(i) for i in range(COUNT), each on a thread of its own, all at once."""
    results: list[Any] = [None] * COUNT

    def one(i: int) -> None:
        try:
            results[i] = call(i)
        except Exception as err:
            results[i] = err

    threads = [threading.Thread(target=one, args=(i,)) for i in range(COUNT)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


@pytest.mark.timeout(120)
def test_concurrent_single_calls_of_the_largest_values_sync(router: str) -> None:
    keys = [f"sync-single-{i}" for i in range(COUNT)]
    with Client(router, timeout=30) as kv:
        puts = _threads(lambda i: kv.put(keys[i], BIG))
        assert _errors(puts) == [], "40 concurrent puts of 1 MiB values"
        gets = _threads(lambda i: kv.get(keys[i]))
        assert _errors(gets) == [], "40 concurrent gets of 1 MiB values"
        assert all(value == BIG for value in gets)


@pytest.mark.timeout(120)
def test_concurrent_single_calls_of_the_largest_values_async(router: str) -> None:
    keys = [f"async-single-{i}" for i in range(COUNT)]

    async def main() -> None:
        async with AsyncClient(router, timeout=30) as kv:
            puts = await asyncio.gather(*(kv.put(k, BIG) for k in keys), return_exceptions=True)
            assert _errors(puts) == [], "40 concurrent puts of 1 MiB values"
            gets = await asyncio.gather(*(kv.get(k) for k in keys), return_exceptions=True)
            assert _errors(gets) == [], "40 concurrent gets of 1 MiB values"
            assert all(value == BIG for value in gets)

    asyncio.run(main())


@pytest.mark.timeout(120)
@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_many_calls_of_the_largest_values(router: str, flavour: str) -> None:
    items = {f"{flavour}-many-{i}".encode(): BIG for i in range(COUNT)}
    if flavour == "sync":
        with Client(router, timeout=30) as kv:
            versions = kv.put_many(items)
            found = kv.get_many(items)
    else:

        async def main() -> tuple[dict[bytes, int], dict[bytes, bytes]]:
            async with AsyncClient(router, timeout=30) as kv:
                return await kv.put_many(items), await kv.get_many(items)

        versions, found = asyncio.run(main())
    assert set(versions) == set(items)
    assert found == items


def _poisoned(request: Any, poisoned: list[list[bytes]]) -> Any:
    """A BatchWrite holding a key starting b"poison" gets a mutation with an empty key as
    well, which the router refuses for the whole call (INVALID_ARGUMENT)."""
    if not isinstance(request, kv_pb2.BatchWriteRequest):
        return request
    keys = [m.key for m in request.mutations]
    if not any(key.startswith(b"poison") for key in keys):
        return request
    poisoned.append(keys)
    bad = kv_pb2.BatchWriteRequest()
    bad.CopyFrom(request)
    bad.mutations.add(key=b"", value=b"v")
    return bad


class SyncPoison(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    def __init__(self) -> None:
        self.poisoned: list[list[bytes]] = []

    def intercept_unary_unary(
        self, continuation: Callable[[Any, Any], Any], details: Any, request: Any
    ) -> Any:
        return continuation(details, _poisoned(request, self.poisoned))


class AsyncPoison(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    def __init__(self) -> None:
        self.poisoned: list[list[bytes]] = []

    async def intercept_unary_unary(
        self, continuation: Callable[[Any, Any], Awaitable[Any]], details: Any, request: Any
    ) -> Any:
        return await continuation(details, _poisoned(request, self.poisoned))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_put_many_sends_every_batch_and_names_the_keys_not_written(
    router: str, flavour: str
) -> None:
    """Three batches; the router refuses the first whole. The other two are still sent and
    written, and the one error names exactly the keys of the first."""
    count = DEFAULT_LIMITS.max_batch_items * 2 + 10
    items = {b"poison-" + flavour.encode(): b"p"}
    items.update({f"pm-{flavour}-{i:05d}".encode(): b"v" for i in range(count - 1)})
    if flavour == "sync":
        sync_poison = SyncPoison()
        with Client(router, timeout=20, interceptors=[sync_poison]) as kv:
            with pytest.raises(InvalidArgument) as raised:
                kv.put_many(items)
            found = kv.get_many(items)
        poisoned = sync_poison.poisoned
    else:
        async_poison = AsyncPoison()

        async def main() -> tuple[ShardKVError, dict[bytes, bytes]]:
            async with AsyncClient(router, timeout=20, interceptors=[async_poison]) as kv:
                try:
                    await kv.put_many(items)
                except ShardKVError as err:
                    return err, await kv.get_many(items)
                raise AssertionError("put_many did not fail")

        err, found = asyncio.run(main())
        assert isinstance(err, InvalidArgument), err
        poisoned = async_poison.poisoned
    error = raised.value if flavour == "sync" else err
    print(f"{flavour}: {type(error).__name__} keys={len(error.keys)}: {str(error)[:200]}")
    assert len(poisoned) == 1, "one batch was refused"
    not_written = set(poisoned[0])
    assert set(error.keys) == not_written, "the error names exactly the keys not written"
    assert len(error.keys) == len(not_written)
    written = set(items) - not_written
    assert set(found) == written, f"{len(written - set(found))} keys of the other batches missing"
