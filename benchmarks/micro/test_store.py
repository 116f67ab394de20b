"""shardd's LMDB store: reads, and durable (fsync'd) writes of one record and of 1000 in
one transaction; a real store in a temp dir on the machine's disk."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
from pytest_benchmark.fixture import BenchmarkFixture
from shardkv.shardd.records import Record
from shardkv.shardd.store import Store

KEYS = 10_000
VALUE = b"v" * 100


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store(tmp_path / "store")
    try:
        opened.apply([Record(b"key:%06d" % i, VALUE, 1, 1) for i in range(KEYS)])
        yield opened
    finally:
        opened.close()


def test_get_one(benchmark: BenchmarkFixture, store: Store) -> None:
    keys = itertools.cycle([b"key:%06d" % i for i in range(0, KEYS, 7)])
    found = benchmark(lambda: store.read([next(keys)]))
    assert found[0] is not None


def test_get_100(benchmark: BenchmarkFixture, store: Store) -> None:
    keys = [b"key:%06d" % i for i in range(0, KEYS, KEYS // 100)]
    found = benchmark(store.read, keys)
    assert all(r is not None for r in found)


def test_put_one_durable(benchmark: BenchmarkFixture, store: Store) -> None:
    versions = itertools.count(2)

    def put() -> list[bool]:
        version = next(versions)
        return store.apply([Record(b"key:%06d" % (version % KEYS), VALUE, version, 1)])

    assert benchmark(put) == [True]


def test_put_1000_durable(benchmark: BenchmarkFixture, store: Store) -> None:
    versions = itertools.count(2)

    def put() -> list[bool]:
        version = next(versions)
        return store.apply([Record(b"key:%06d" % i, VALUE, version, 1) for i in range(1000)])

    assert all(benchmark(put))
