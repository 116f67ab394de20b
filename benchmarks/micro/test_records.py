"""Encoding and decoding one stored record (the LMDB value layout of shardd)."""

from __future__ import annotations

import pytest
from pytest_benchmark.fixture import BenchmarkFixture
from shardkv.shardd.records import Record, decode, encode


@pytest.mark.parametrize("value_bytes", [100, 1024])
def test_encode(benchmark: BenchmarkFixture, value_bytes: int) -> None:
    record = Record(b"user:00000042", b"x" * value_bytes, version=1 << 40, writer=7)
    raw = benchmark(encode, record)
    assert decode(record.key, raw) == record


@pytest.mark.parametrize("value_bytes", [100, 1024])
def test_decode(benchmark: BenchmarkFixture, value_bytes: int) -> None:
    record = Record(b"user:00000042", b"x" * value_bytes, version=1 << 40, writer=7)
    raw = encode(record)
    assert benchmark(decode, record.key, raw) == record
