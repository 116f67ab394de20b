"""Where a node reads (shardd/read_place.py, NodeStorage.read_entries): on the event loop in
slices while the store answers from memory, on read threads after a read that waited for
the disk; a read in slices answers what one transaction would."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path

import pytest
from shardkv.common.hlc import HybridClock
from shardkv.shardd import node as node_module
from shardkv.shardd.convert import stored_fields
from shardkv.shardd.node import NodeStorage
from shardkv.shardd.read_place import PROBE_KEYS, ReadPlace
from shardkv.shardd.records import Record
from shardkv.shardd.store import Store


def _records(count: int, value_bytes: int) -> list[Record]:
    return [
        Record(b"k%06d" % i, os.urandom(value_bytes), 10 + i, 1, tombstone=i % 7 == 0)
        for i in range(count)
    ]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("max_bytes", [0, 1, 100, 600, 1000, 2500, 10_000])
def test_a_read_in_slices_answers_what_one_transaction_would(store: Store, max_bytes: int) -> None:
    store.apply(_records(40, 50))
    # Missing keys, a key named twice across slices, an empty key (none can be stored).
    keys = [b"k%06d" % i for i in range(0, 60, 3)] + [b"k000003", b"", b"k000001"]
    expected = store.read_entries(keys, stored_fields, max_bytes=max_bytes)
    storage = NodeStorage(store, node_id="n1", clock=HybridClock(), read_slice_keys=4)

    async def main() -> list[object]:
        try:
            return await storage.read_entries(keys, stored_fields, max_bytes=max_bytes)
        finally:
            await storage.close()

    assert asyncio.run(main()) == expected


@pytest.mark.timeout(60)
def test_a_read_from_memory_runs_on_the_loop_which_serves_between_slices(store: Store) -> None:
    store.apply(_records(300, 20))
    keys = [b"k%06d" % i for i in range(300)]
    storage = NodeStorage(store, node_id="n1", clock=HybridClock(), read_slice_keys=100)
    seen: list[tuple[int, bool]] = []
    other_ran = threading.Event()

    def entry(key: bytes, raw: bytes | memoryview | None) -> bytes:
        seen.append((threading.get_ident(), other_ran.is_set()))
        return key

    async def other() -> None:
        other_ran.set()

    async def main() -> tuple[int, list[bytes]]:
        try:
            loop_thread = threading.get_ident()
            asyncio.get_running_loop().call_soon(lambda: asyncio.ensure_future(other()))
            return loop_thread, await storage.read_entries(keys, entry)
        finally:
            await storage.close()

    loop_thread, read = asyncio.run(main())
    assert read == keys
    assert {thread for thread, _ in seen} == {loop_thread}, "a read from memory left the loop"
    assert not seen[0][1] and seen[-1][1], "the loop served nothing between the slices"
    assert storage.read_place.disk_waits == 0


@pytest.mark.timeout(120)
def test_a_read_that_waited_for_the_disk_sends_reads_to_the_threads(tmp_path: Path) -> None:
    """A store whose pages left the page cache: the first read on the loop page-faults, and
    the next read runs on a read thread (as every read would on a store larger than
    memory), answering the same."""
    path = tmp_path / "db"
    written = _records(20_000, 1000)  # 20 MB: far more pages than one read ahead brings
    first = Store(path)
    try:
        for start in range(0, len(written), 2000):
            first.apply(written[start : start + 2000])
        first.flush()
    finally:
        first.close()
    data = os.open(path / "data.mdb", os.O_RDONLY)
    try:
        os.fsync(data)
        os.posix_fadvise(data, 0, 0, os.POSIX_FADV_DONTNEED)  # out of the page cache
    finally:
        os.close(data)
    store = Store(path)
    storage = NodeStorage(store, node_id="n1", clock=HybridClock())
    keys = [record.key for record in written[::157]]
    threads: list[int] = []

    def entry(key: bytes, raw: bytes | memoryview | None) -> bytes | None:
        threads.append(threading.get_ident())
        return None if raw is None else bytes(raw)

    async def main() -> tuple[int, list[bytes | None], list[bytes | None]]:
        try:
            loop_thread = threading.get_ident()
            cold = await storage.read_entries(keys, entry)
            assert storage.read_place.disk_waits >= 1, "the read from the disk went unseen"
            threads.clear()
            return loop_thread, cold, await storage.read_entries(keys, entry)
        finally:
            await storage.close()

    loop_thread, cold, again = asyncio.run(main())
    assert cold == again and len(again) == len(keys)
    assert threads and loop_thread not in threads, "the next read stayed on the loop"


def test_reads_go_back_to_the_loop_once_the_hold_has_passed() -> None:
    now = [100.0]
    place = ReadPlace(hold_s=2.0, clock=lambda: now[0])
    assert place.on_loop()
    place.read_faulted()
    assert not place.on_loop() and place.disk_waits == 1
    now[0] = 101.9
    assert not place.on_loop()
    now[0] = 102.0
    assert place.on_loop()


@pytest.mark.timeout(60)
def test_a_read_between_its_slices_goes_to_the_threads_once_another_read_faulted(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two reads take turns on the loop; when one's slice waits for the disk (a fault
    simulated on one key: a real one cannot be placed on a chosen key), the other's next
    slice runs on a thread, not on the loop during the hold."""
    store.apply([Record(key, b"v", 1, 1) for key in (b"a0", b"a1", b"bad", b"b1")])
    storage = NodeStorage(store, node_id="n1", clock=HybridClock(), read_slice_keys=1)
    faults = [0]
    where: dict[bytes, int] = {}
    monkeypatch.setattr(node_module, "major_faults", lambda: faults[0])

    def entry(key: bytes, raw: bytes | memoryview | None) -> bytes:
        where[key] = threading.get_ident()
        if key == b"bad":
            faults[0] += 1
        return key

    async def main() -> int:
        try:
            storage.read_place.read_clean()  # past the probe: slices of read_slice_keys
            reads = (
                storage.read_entries([b"a0", b"a1"], entry),
                storage.read_entries([b"bad", b"b1"], entry),
            )
            await asyncio.gather(*reads)
            return threading.get_ident()
        finally:
            await storage.close()

    loop_thread = asyncio.run(main())
    assert where[b"a0"] == where[b"bad"] == loop_thread
    assert where[b"a1"] != loop_thread, "a slice ran on the loop while reads were held off it"
    assert where[b"b1"] != loop_thread
    assert storage.read_place.disk_waits == 1


@pytest.mark.timeout(60)
def test_a_key_named_twice_reads_once_even_across_slices(store: Store) -> None:
    """One answer holds one record per key, as one transaction would: a write between two
    slices does not give a key named in both two versions, and the key is read once."""
    store.apply([Record(b"k", b"old", 1, 1)])
    storage = NodeStorage(store, node_id="n1", clock=HybridClock(), read_slice_keys=1)
    calls: list[bytes] = []

    def entry(key: bytes, raw: bytes | memoryview | None) -> bytes | None:
        calls.append(key)
        return None if raw is None else bytes(raw)

    async def main() -> list[bytes | None]:
        try:
            storage.read_place.read_clean()
            read = asyncio.create_task(storage.read_entries([b"k", b"x", b"k"], entry))
            await asyncio.sleep(0)  # the read's first slice, then it yields
            store.apply([Record(b"k", b"new", 2, 1)])
            return await read
        finally:
            await storage.close()

    first, _, again = asyncio.run(main())
    assert first == again, "one answer held two versions of one key"
    assert calls == [b"k", b"x"]


@pytest.mark.timeout(30)
def test_reads_probe_with_a_small_slice_until_one_reads_from_memory() -> None:
    """A slice that faults stalls the loop for every page it waits for; the first slice on
    the loop (at start, after a hold) is small, the full size only once one read clean."""
    now = [100.0]
    place = ReadPlace(hold_s=2.0, clock=lambda: now[0])
    assert place.slice_keys(128) == PROBE_KEYS < 128
    place.read_clean()
    assert place.slice_keys(128) == 128
    place.read_faulted()
    now[0] = 102.0
    assert place.on_loop() and place.slice_keys(128) == PROBE_KEYS


def test_a_slice_of_no_keys_is_refused(store: Store) -> None:
    with pytest.raises(ValueError, match="read_slice_keys"):
        NodeStorage(store, node_id="n1", clock=HybridClock(), read_slice_keys=0)
