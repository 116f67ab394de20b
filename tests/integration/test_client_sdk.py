"""The SDK's behaviour, one suite run against both Client and AsyncClient, on a real shardd
and on a real cluster (3 nodes + router)."""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import Cluster, Proc, free_port, shardd_proc, start_cluster
from shardkv.client import (
    AsyncClient,
    Client,
    Consistency,
    DeadlineExceeded,
    InvalidArgument,
    Record,
    RetryPolicy,
)
from shardkv.common.limits import DEFAULT_LIMITS


class AsyncFacade:
    """Drives an AsyncClient from test code: each method runs on an event loop in a thread.

    Coroutines are awaited and async iterators collected, so one test body serves both
    shells; the AsyncClient itself is created inside that loop, as its docs require.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

        async def make() -> AsyncClient:
            return AsyncClient(*args, **kwargs)

        self._client = self._run(make())

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(30)

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self._client, name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            result = method(*args, **kwargs)
            if inspect.isawaitable(result):
                return await result
            if hasattr(result, "__aiter__"):
                return iter([item async for item in result])
            return result

        return lambda *args, **kwargs: self._run(call(*args, **kwargs))

    def close(self) -> None:
        self._run(self._client.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


ClientFactory = Callable[..., Any]


@pytest.fixture(params=["sync", "async"])
def make_client(request: pytest.FixtureRequest) -> Iterator[ClientFactory]:
    """Builds Client or AsyncClient (behind AsyncFacade) and closes them after the test."""
    made: list[Any] = []

    def factory(*args: Any, **kwargs: Any) -> Any:
        client = (
            Client(*args, **kwargs) if request.param == "sync" else AsyncFacade(*args, **kwargs)
        )
        made.append(client)
        return client

    yield factory
    for client in made:
        client.close()


@pytest.fixture(scope="module", params=["node", "cluster"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The address of a single shardd, or of the router of a 3-node cluster (N=3, R=W=2)."""
    base = tmp_path_factory.mktemp(request.param)
    if request.param == "node":
        proc: Proc | Cluster = shardd_proc(base, "n1").start()
        address = proc.address
    else:
        proc = start_cluster(Path(base))
        address = proc.router.address
    try:
        yield address
    finally:
        proc.stop()


@pytest.fixture
def kv(server: str, make_client: ClientFactory) -> Any:
    return make_client(server)


@pytest.fixture
def ns(request: pytest.FixtureRequest) -> str:
    """A key prefix of this test alone: tests share one server per module."""
    return f"{request.node.name}/"


def test_put_get_delete(kv: Any, ns: str) -> None:
    version = kv.put(ns + "greeting", b"hello")
    assert version > 0
    assert kv.get(ns + "greeting") == b"hello"
    assert kv.get((ns + "greeting").encode()) == b"hello", "str keys are their UTF-8 bytes"
    assert kv.get_record(ns + "greeting") == Record((ns + "greeting").encode(), b"hello", version)
    assert kv.put(ns + "greeting", "héllo") > version, "str values are UTF-8, versions grow"
    assert kv.get(ns + "greeting") == "héllo".encode()
    assert kv.put(ns + "empty", b"") > 0
    assert kv.get(ns + "empty") == b"", "an empty value is a value, not a missing key"
    tombstone = kv.delete(ns + "greeting")
    assert tombstone > version
    assert kv.get(ns + "greeting") is None
    assert kv.get_record(ns + "greeting") is None
    assert kv.get(ns + "never-written") is None
    assert kv.delete(ns + "never-written") > 0, "deleting a missing key succeeds"


def test_batches_larger_than_the_server_limit_are_split(kv: Any, ns: str) -> None:
    count = DEFAULT_LIMITS.max_batch_items * 2 + 10
    items = {f"{ns}{i:05d}": f"v{i}".encode() for i in range(count)}
    versions = kv.put_many(items)
    assert set(versions) == {key.encode() for key in items}
    assert all(version > 0 for version in versions.values())
    wanted = [*items, ns + "missing-1", ns + "missing-2"]
    found = kv.get_many(wanted)
    assert found == {key.encode(): value for key, value in items.items()}
    assert kv.get_many([]) == {}
    assert kv.put_many({}) == {}


def test_scan_pages_through_prefix_and_range(kv: Any, ns: str) -> None:
    kv.put_many({f"{ns}k{i:02d}": str(i) for i in range(25)})
    kv.put(ns + "other", b"x")
    kv.delete(f"{ns}k13")
    keys = [r.key for r in kv.scan(prefix=ns + "k", page_size=4)]
    expected = [f"{ns}k{i:02d}".encode() for i in range(25) if i != 13]
    assert keys == expected, "seven pages of four, in order, without the deleted key"
    ranged = list(kv.scan(start=f"{ns}k05", end=f"{ns}k10", page_size=2))
    assert [r.key for r in ranged] == [f"{ns}k{i:02d}".encode() for i in range(5, 10)]
    assert all(isinstance(r, Record) and r.version > 0 for r in ranged)
    assert ranged[0].value == b"5"
    limited = list(kv.scan(prefix=ns + "k", page_size=3, limit=7))
    assert [r.key for r in limited] == expected[:7]
    assert list(kv.scan(prefix=ns + "nothing-here")) == []


def test_consistency_and_timeout_arguments(
    kv: Any, ns: str, server: str, make_client: ClientFactory
) -> None:
    # Pairs with R + W > N, so each read is guaranteed to see the write before it.
    pairs = [
        (Consistency.ONE, Consistency.ALL),
        (Consistency.QUORUM, Consistency.QUORUM),
        (Consistency.ALL, Consistency.ONE),
    ]
    key = (ns + "c").encode()
    for write, read in pairs:
        value = f"{write.name}/{read.name}".encode()
        version = kv.put(key, value, consistency=write, timeout=3.0)
        assert kv.get_record(key, consistency=read, timeout=3.0) == Record(key, value, version)
        assert kv.get_many([key], consistency=read, timeout=3.0) == {key: value}
        assert [r.value for r in kv.scan(prefix=ns, consistency=read)] == [value]
    strict = make_client(server, consistency=Consistency.ALL, timeout=2.0)
    assert strict.get(key) == b"ALL/ONE", "the client's default level"
    with pytest.raises(DeadlineExceeded):
        kv.put(key, b"late", timeout=1e-6)
    with pytest.raises(DeadlineExceeded):
        kv.get(key, timeout=1e-6)


def test_limits_fail_fast_without_a_round_trip(make_client: ClientFactory) -> None:
    """Against a port where nothing listens: only a local check can answer InvalidArgument."""
    kv = make_client(f"127.0.0.1:{free_port()}", retry=RetryPolicy(max_attempts=1))
    too_big = b"v" * (DEFAULT_LIMITS.max_value_bytes + 1)
    with pytest.raises(InvalidArgument, match="exceeds the limit"):
        kv.put("k", too_big)
    with pytest.raises(InvalidArgument, match="exceeds the limit"):
        kv.put_many({"a": b"ok", "b": too_big})
    with pytest.raises(InvalidArgument, match="key of 512 bytes"):
        kv.get(b"k" * (DEFAULT_LIMITS.max_key_bytes + 1))
    with pytest.raises(InvalidArgument, match="empty"):
        kv.delete("")
    with pytest.raises(InvalidArgument, match="empty"):
        kv.get_many(["ok", ""])
    with pytest.raises(InvalidArgument, match=r"key of 512 bytes .* starts b'kkkk"):
        kv.get_many(["ok", b"k" * (DEFAULT_LIMITS.max_key_bytes + 1)])
    with pytest.raises(TypeError, match="key must be bytes or str, not int"):
        kv.get_many(["ok", 3])
    with pytest.raises(InvalidArgument, match="prefix cannot be combined"):
        kv.scan(prefix="a", start="b")
    with pytest.raises(InvalidArgument, match="must sort before"):
        kv.scan(start="b", end="a")
    with pytest.raises(InvalidArgument, match="page size"):
        kv.scan(page_size=DEFAULT_LIMITS.max_page_size + 1)
    with pytest.raises(TypeError, match="key must be bytes or str"):
        kv.get(42)
