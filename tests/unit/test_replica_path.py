"""The node's fast replica paths against the plain conversions they replace, on real LMDB.

Apply converts and checks records in one pass (convert.records_from_pb), Read builds its
answer from the LMDB values (convert.stored_fields, read_response), reads run on the event
loop (NodeStorage.read_entries) and the clock checks only a call's newest version
(NodeStorage.apply): each must answer exactly what the slower path did.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from shardkv.common.hlc import HybridClock, VersionAhead
from shardkv.common.limits import LimitExceeded, Limits
from shardkv.shardd.convert import (
    missing_pb,
    read_response,
    record_from_pb,
    record_to_pb,
    records_from_pb,
    stored_fields,
)
from shardkv.shardd.node import NodeStorage
from shardkv.shardd.records import Hint, Record, Restored
from shardkv.shardd.store import Store
from shardkv.shardd.validate import check_record
from shardkv.v1 import replica_pb2

LIMITS = Limits(max_key_bytes=16, max_value_bytes=32)
NOW_MS = 1_800_000_000_000


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store(tmp_path / "db", sync=False)
    try:
        yield opened
    finally:
        opened.close()


messages = st.builds(
    replica_pb2.Record,
    key=st.binary(max_size=20),
    value=st.binary(max_size=40),
    version=st.sampled_from([0, 1, 2**63, 2**64 - 1]),
    writer=st.integers(0, 2**32 - 1),
    tombstone=st.booleans(),
    restore=st.booleans(),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(messages, max_size=4))
def test_records_from_pb_checks_and_converts_as_check_record_and_record_from_pb(
    batch: list[replica_pb2.Record],
) -> None:
    expected: list[Record] | str
    try:
        for message in batch:
            check_record(LIMITS, message)
        expected = [record_from_pb(m) for m in batch]
    except LimitExceeded as exc:
        expected = str(exc)
    try:
        got: list[Record] | str = records_from_pb(batch, LIMITS)
    except LimitExceeded as exc:
        got = str(exc)
    assert got == expected
    if isinstance(got, list) and isinstance(expected, list):
        assert [type(r) for r in got] == [type(r) for r in expected]


def test_a_restored_record_stays_apart_by_type_not_by_equality() -> None:
    [plain, restored] = records_from_pb(
        [
            replica_pb2.Record(key=b"k", value=b"v", version=5, writer=1),
            replica_pb2.Record(key=b"k", value=b"v", version=5, writer=1, restore=True),
        ],
        LIMITS,
    )
    assert type(plain) is Record and type(restored) is Restored
    assert restored._replace(version=6) == Restored(b"k", b"v", 6, 1)
    assert type(restored._replace(version=6)) is Restored


@settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(st.sampled_from([b"a", b"b", b"dead", b"none", b"", b"x" * 600]), max_size=8),
    st.sampled_from([0, 1, 60, 200]),
)
def test_the_read_answer_built_from_lmdb_values_is_the_one_built_from_records(
    store: Store, keys: list[bytes], max_bytes: int
) -> None:
    store.apply(
        [
            Record(b"a", b"value-a" * 5, 10, 1),
            Record(b"b", b"", 11, 2),
            Record(b"dead", b"", 12, 3, tombstone=True),
        ]
    )
    records = store.read(keys, max_bytes=max_bytes)
    expected = replica_pb2.ReadResponse(
        records=[
            missing_pb(key) if record is None else record_to_pb(record)
            for key, record in zip(keys, records, strict=False)
        ],
        resume_at=len(records) if len(records) < len(keys) else 0,
    )
    entries = store.read_entries(keys, stored_fields, max_bytes=max_bytes)
    assert len(entries) == len(records)
    resume_at = len(entries) if len(entries) < len(keys) else 0
    got = read_response(keys, entries, resume_at)
    assert got.SerializeToString() == expected.SerializeToString()


@pytest.mark.timeout(30)
def test_a_small_read_never_blocks_the_event_loop_while_the_map_grows(store: Store) -> None:
    """A read that would wait for the store's gate (held here as map growth holds it) goes
    to a read thread: the loop keeps running, and the read answers once the gate opens."""
    store.apply([Record(b"k", b"v", 1, 1)])
    storage = NodeStorage(store, node_id="n1", clock=HybridClock())
    held = threading.Event()
    release = threading.Event()

    def grow() -> None:
        with store._gate.exclusive():  # what Store._grow holds while set_mapsize runs
            held.set()
            release.wait(10)

    async def main() -> tuple[list[Record | None], int]:
        grower = threading.Thread(target=grow)
        grower.start()
        assert held.wait(10)
        read = asyncio.create_task(storage.read([b"k"]))
        ticks = 0
        while not read.done() and ticks < 20:
            await asyncio.sleep(0.01)
            ticks += 1
        assert not read.done(), "the read did not wait for the gate"
        release.set()
        records = await asyncio.wait_for(read, 10)
        grower.join(10)
        await storage.close()
        return records, ticks

    records, ticks = asyncio.run(main())
    assert ticks == 20, "the event loop stalled while the gate was held"
    assert records == [Record(b"k", b"v", 1, 1)]


def test_try_shared_holds_the_gate_only_when_it_is_free(store: Store) -> None:
    gate = store._gate
    with gate.try_shared() as held:
        assert held
        with gate.try_shared() as again:  # shared holders do not exclude each other
            assert again
    done = threading.Event()

    def exclusive() -> None:
        with gate.exclusive():
            done.set()

    with gate.shared():
        waiter = threading.Thread(target=exclusive)
        waiter.start()
        deadline = time.monotonic() + 10
        while not gate._waiting_exclusive and time.monotonic() < deadline:
            time.sleep(0.001)
        with gate.try_shared() as held:  # an exclusive holder waits: do not queue ahead
            assert not held
    waiter.join(10)
    assert done.is_set()


@pytest.mark.timeout(30)
def test_a_version_ahead_anywhere_in_the_call_refuses_all_of_it(store: Store) -> None:
    clock = HybridClock(wall=lambda: NOW_MS / 1000, max_offset_ms=500)
    storage = NodeStorage(store, node_id="n1", clock=clock)
    now = NOW_MS << 16
    ahead = (NOW_MS + 10_000) << 16

    async def main() -> None:
        with pytest.raises(VersionAhead, match="b'late'"):
            await storage.apply([Record(b"ok", b"v", now, 1), Record(b"late", b"v", ahead, 1)])
        with pytest.raises(VersionAhead, match="b'hinted'"):
            await storage.apply(
                [Record(b"ok", b"v", now, 1)], [Hint("n2", Record(b"hinted", b"v", ahead, 1))]
            )
        assert await storage.read([b"ok", b"late"]) == [None, None]
        # The clock moves past the newest version of a call, wherever it sits in it.
        newest = now + 7
        applied = await storage.apply(
            [
                Record(b"a", b"v", now + 1, 1),
                Record(b"b", b"v", newest, 1),
                Record(b"c", b"v", now, 1),
            ]
        )
        assert applied == [True, True, True]
        assert clock.now() > newest
        await storage.close()

    asyncio.run(main())
