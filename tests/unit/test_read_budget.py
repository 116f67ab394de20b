"""Reads within a byte budget (issue 14 item 3), without servers: the node's store reads a
prefix that fits, each key once; the router's coalescer sends what a node left unanswered
in its next call; a request's budget drops replies beyond it; an answer too large for one
message is named with its limit."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from shardkv.common.limits import Limits
from shardkv.router.requests.coalescer import Coalescer, NodeFailure
from shardkv.router.requests.read_budget import (
    ENTRY_BYTES,
    ReadBudget,
    answer_budget,
    may_exceed,
    too_large,
)
from shardkv.router.requests.replica_answers import ReplicaAnswers, answers_of, split
from shardkv.shardd.records import Record
from shardkv.shardd.store import Store
from shardkv.v1 import replica_pb2

MIB = 1 << 20


@pytest.fixture
def store(tmp_path: Path) -> Store:
    store = Store(tmp_path / "db", sync=False)
    store.apply(
        [
            Record(b"big", b"b" * MIB, 1, 1),
            Record(b"small", b"s", 1, 1),
            Record(b"gone", b"", 2, 1, tombstone=True),
        ]
    )
    return store


def test_store_reads_a_key_named_many_times_once_and_stops_at_the_budget(store: Store) -> None:
    entry = len(b"big") + MIB + ENTRY_BYTES
    records = store.read([b"big"] * 1000, max_bytes=10 * entry)
    assert len(records) == 10
    assert all(r is records[0] for r in records)  # one Record, one copy of the value
    assert records[0] is not None and records[0].value == b"b" * MIB
    # Without a budget every key is answered, in order, missing ones as None.
    got = store.read([b"small", b"nothing", b"gone", b"big"])
    assert [r.key if r else None for r in got] == [b"small", None, b"gone", b"big"]


def test_store_budget_counts_every_entry_and_always_answers_the_first(store: Store) -> None:
    assert len(store.read([b"big", b"small"], max_bytes=100)) == 1  # the first, though large
    small = len(b"small") + 1 + ENTRY_BYTES
    missing = len(b"nothing") + ENTRY_BYTES
    assert len(store.read([b"small", b"nothing", b"big"], max_bytes=small + missing)) == 2
    assert len(store.read([b"small", b"nothing"], max_bytes=small + missing - 1)) == 1
    assert len(store.read([b"big", b"small"], max_bytes=0)) == 2  # 0: no budget


@pytest.mark.timeout(10)
def test_resumable_coalescer_sends_the_unanswered_rest_next() -> None:
    async def scenario() -> None:
        batches: list[list[int]] = []

        async def send(items: list[int], timeout: float) -> list[int]:
            batches.append(items)
            return [item * 10 for item in items[:3]]  # a node that stops after three

        failures: list[NodeFailure] = []
        c: Coalescer[int, int] = Coalescer(
            "n1",
            send,
            on_failure=lambda failure, timeout: failures.append(failure),
            max_items=100,
            max_bytes=1 << 20,
            max_in_flight=1,
            call_timeout_s=1.0,
            size_of=lambda item: 1,
            resumable=True,
        )
        got: dict[int, int | NodeFailure] = {}
        done = asyncio.Event()

        def deliver(index: int, result: int | NodeFailure) -> None:
            got[index] = result
            if len(got) == 8:
                done.set()

        deadline = asyncio.get_running_loop().time() + 5
        c.submit([(i, lambda r, i=i: deliver(i, r)) for i in range(8)], deadline)
        await asyncio.wait_for(done.wait(), 5)
        assert got == {i: i * 10 for i in range(8)}
        assert batches == [list(range(8)), list(range(3, 8)), [6, 7]]
        assert not failures

    asyncio.run(scenario())


@pytest.mark.timeout(10)
def test_resumable_coalescer_fails_an_empty_answer() -> None:
    async def scenario() -> None:
        async def send(items: list[int], timeout: float) -> list[int]:
            return []

        failures: list[NodeFailure] = []
        c: Coalescer[int, int] = Coalescer(
            "n1",
            send,
            on_failure=lambda failure, timeout: failures.append(failure),
            max_items=100,
            max_bytes=1 << 20,
            max_in_flight=1,
            call_timeout_s=1.0,
            size_of=lambda item: 1,
            resumable=True,
        )
        got: list[int | NodeFailure] = []
        c.submit([(1, got.append)], asyncio.get_running_loop().time() + 5)
        while not got:
            await asyncio.sleep(0.01)
        assert isinstance(got[0], NodeFailure) and got[0].code == grpc.StatusCode.INTERNAL
        assert failures

    asyncio.run(scenario())


def test_read_budget_drops_replies_beyond_it_and_says_why() -> None:
    budget = ReadBudget(2 * MIB, message_limit=32 * MIB)
    got: list[replica_pb2.Record | NodeFailure] = []
    asks = budget.watch("n2", [(b"a", got.append), (b"b", got.append), (b"c", got.append)])
    for (key, deliver), size in zip(asks, (MIB, MIB, 10), strict=True):
        deliver(replica_pb2.Record(key=key, value=b"v" * (size - len(key)), version=1))
    assert isinstance(got[0], replica_pb2.Record) and isinstance(got[1], replica_pb2.Record)
    dropped = got[2]
    assert isinstance(dropped, NodeFailure) and dropped.node_id == "n2"
    assert dropped.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "message limit of 33554432 bytes" in dropped.message
    assert budget.spent and budget.held == 2 * MIB
    failure = NodeFailure("n3", grpc.StatusCode.UNAVAILABLE, "down")
    asks[0][1](failure)
    assert got[-1] is failure  # failures pass through untouched


def test_small_reads_need_no_budget_and_answers_name_the_limit() -> None:
    limits = Limits()
    fits = answer_budget(limits) // (limits.max_key_bytes + limits.max_value_bytes + ENTRY_BYTES)
    assert not may_exceed(limits, fits) and may_exceed(limits, fits + 1)
    assert ReadBudget.for_read(limits, fits, 4) is None
    budget = ReadBudget.for_read(limits, 1000, 4)
    assert budget is not None and budget.max_bytes == 4 * answer_budget(limits)
    size = answers(b"big", MIB).size
    assert too_large(limits, 20, 1, 20 * size, None) is None
    problem = too_large(limits, 1000, 1, 1000 * size, None)
    assert problem is not None
    assert "of 1000 keys (1 distinct)" in problem
    assert "message limit of 33554432 bytes (max_message_bytes)" in problem


def answers(key: bytes, value_bytes: int) -> ReplicaAnswers:
    """A node's answer of key holding a value of value_bytes."""
    record = replica_pb2.Record(key=key, value=b"v" * value_bytes, version=1)
    [chunk] = split([answers_of([key], replica_pb2.ReadResponse(records=[record]))], [1])
    return chunk
