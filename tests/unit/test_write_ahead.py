"""The journal in front of LMDB (shardd/write_ahead.py, journal.py) on real files: a write
acknowledged by the journal alone is read back at once and survives a crash, replay keeps
last-writer-wins and ignores a torn tail, and everything that reads LMDB in bulk sees the
journal's records."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from shardkv.shardd import store_env
from shardkv.shardd.gate import StoreClosed
from shardkv.shardd.journal import FILES, JournalBroken
from shardkv.shardd.records import Hint, Record
from shardkv.shardd.store import Marker, Store, TooManyTargets
from shardkv.shardd.write_ahead import JournalStats, WriteAhead


def rec(key: bytes, version: int = 10, value: bytes = b"v", tombstone: bool = False) -> Record:
    return Record(key, b"" if tombstone else value, version, 1, tombstone)


def small_journal(store: Store, max_records: int) -> None:
    """Checkpoints every max_records records instead of every MAX_RECORDS."""
    assert store._ahead is not None and store._journal is not None
    store._ahead = WriteAhead(store._journal, store._checkpoint, max_records=max_records)


def crash_copy(store: Store, into: Path) -> Store:
    """A store opened on a copy of the files as they are now, as a node restarted after
    SIGKILL finds them (the page cache holds every write that returned)."""
    shutil.copytree(store.path, into)
    (into / "lock.mdb").unlink()
    return Store(into)


def journal_bytes(store: Store) -> int:
    """Bytes of frames in the store's journal files (the zeros after them are none)."""
    return sum(frames_end((store.path / name).read_bytes()) for name in FILES)


def frames_end(data: bytes) -> int:
    """Where a journal file's frames end (its zeros begin): each frame is a u32 length,
    a u32 CRC and the payload (journal.py)."""
    offset = 0
    while length := int.from_bytes(data[offset : offset + 4], "little"):
        offset += 8 + length
    return offset


def test_a_journaled_write_is_read_back_before_any_checkpoint(store: Store) -> None:
    assert store.apply([rec(b"a"), rec(b"b", value=b"2")]) == [True, True]
    assert journal_bytes(store) > 0
    assert store.read([b"a", b"b", b"c"]) == [rec(b"a"), rec(b"b", value=b"2"), None]
    assert store.apply([rec(b"a", version=9, value=b"old")]) == [False]
    assert store.apply([rec(b"a", version=11, tombstone=True)]) == [True]
    assert store.read([b"a"]) == [rec(b"a", version=11, tombstone=True)]
    assert store.stats().entries == 2


def test_acknowledged_writes_survive_a_crash_and_replay_empties_the_journal(
    store: Store, tmp_path: Path
) -> None:
    records = [rec(b"k%05d" % i, version=10 + i) for i in range(500)]
    store.apply(records)
    store.apply([rec(b"k00000", version=99, tombstone=True)])
    restarted = crash_copy(store, tmp_path / "copy")
    try:
        assert restarted.read([r.key for r in records[1:]]) == records[1:]
        assert restarted.read([b"k00000"]) == [rec(b"k00000", version=99, tombstone=True)]
        assert journal_bytes(restarted) == 0  # replayed into LMDB, durably
        assert restarted.stats().entries == 500
    finally:
        restarted.close()


def test_writes_after_a_restart_survive_the_next_crash(store: Store, tmp_path: Path) -> None:
    """A restarted store writes its journal from the start of files its replay emptied;
    a second crash finds the writes of both lives, the newer ones winning."""
    store.apply([rec(b"a", version=1, value=b"x" * 3000), rec(b"b", version=1)])
    first = crash_copy(store, tmp_path / "first")
    try:
        first.apply([rec(b"a", version=2, value=b"after")])
        first.apply([rec(b"c", version=2)])
        second = crash_copy(first, tmp_path / "second")
    finally:
        first.close()
    try:
        found = second.read([b"a", b"b", b"c"])
        assert found == [rec(b"a", 2, b"after"), rec(b"b", 1), rec(b"c", 2)]
    finally:
        second.close()


def test_replay_ignores_a_torn_tail_and_never_lets_an_older_record_win(
    store: Store, tmp_path: Path
) -> None:
    store.apply([rec(b"x", version=5, value=b"journaled")])
    store.apply([rec(b"y", version=5)])
    copy = tmp_path / "copy"
    shutil.copytree(store.path, copy)
    (copy / "lock.mdb").unlink()
    with (copy / FILES[0]).open("r+b") as journal:  # where the next frame would go
        journal.seek(frames_end(journal.read()))
        journal.write(b"\x40\x00\x00\x00\x00\x00\x00\x00half a frame")
    restarted = Store(copy)
    try:
        assert restarted.read([b"x", b"y"]) == [rec(b"x", 5, b"journaled"), rec(b"y", 5)]
        # A newer record reaches LMDB; a later crash replays nothing older over it.
        restarted.apply([rec(b"x", version=6, value=b"newer")])
        restarted.flush()
    finally:
        restarted.close()
    again = Store(copy)
    try:
        assert again.read([b"x"]) == [rec(b"x", 6, b"newer")]
    finally:
        again.close()


def test_checkpoints_move_records_into_lmdb_and_empty_the_journal(store: Store) -> None:
    small_journal(store, max_records=100)
    store.apply([rec(b"k%03d" % i, version=9) for i in range(50)])
    assert store.stats().journal == JournalStats(records=50, new_keys=50, checkpoints=0)
    for round_ in range(10):
        store.apply([rec(b"k%03d" % i, version=10 + round_) for i in range(150)])
    store.flush()
    assert journal_bytes(store) == 0
    assert store.stats().entries == 150
    journal = store.stats().journal
    assert (journal.records, journal.new_keys) == (0, 0) and journal.checkpoints >= 2
    assert {r.version for r in store.read([b"k%03d" % i for i in range(150)]) if r} == {19}


def test_bulk_reads_and_other_writes_see_the_journal(store: Store) -> None:
    store.apply([rec(b"a"), rec(b"b", tombstone=True), rec(b"c")])
    records, _ = store.scan(b"", b"", 10)
    assert [r.key for r in records] == [b"a", b"b", b"c"]
    assert store.digest(b"", b"")[1] == 3
    # A marker is kept only for a key the node holds: one only journaled counts.
    store.apply([rec(b"d")])
    store.apply([], markers=[Marker(b"d", "n2", (10, 1))])
    assert store.hint_summary() == {"n2": 1}
    # Tombstone GC finds the journaled tombstone by its stamp.
    assert store.purge([rec(b"b", tombstone=True)]) == 1
    assert store.read([b"b"]) == [None]


def test_readers_never_miss_a_write_while_checkpoints_run(store: Store) -> None:
    small_journal(store, max_records=64)
    keys = [b"r%02d" % i for i in range(40)]
    store.apply([rec(k, version=1) for k in keys])
    stop = threading.Event()
    errors: list[str] = []

    def reader() -> None:
        seen = dict.fromkeys(keys, 1)
        while not stop.is_set():
            for key, record in zip(keys, store.read(keys), strict=True):
                if record is None or record.version < seen[key]:
                    errors.append(f"{key!r}: {record} after version {seen[key]}")
                    return
                seen[key] = record.version

    readers = [threading.Thread(target=reader) for _ in range(3)]
    for thread in readers:
        thread.start()
    try:
        for version in range(2, 400):
            store.apply([rec(k, version=version) for k in keys[version % 7 :: 3]])
    finally:
        stop.set()
        for thread in readers:
            thread.join()
    assert errors == []


_SHORT_WRITER = """
import resource, signal, sys
from shardkv.shardd.journal import RESERVE_BYTES
from shardkv.shardd.records import Record
from shardkv.shardd.store import Store
store = Store(sys.argv[1])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (RESERVE_BYTES + 4096, resource.RLIM_INFINITY))
for i in range(20):
    try:
        store.apply([Record(b"key%d" % i, b"v" * 100_000, 10, 1)])
    except OSError as exc:
        print("refused", i, exc, flush=True)
        break
    print("acknowledged", i, flush=True)
signal.raise_signal(signal.SIGKILL)
"""


def test_a_frame_the_disk_took_only_part_of_is_not_acknowledged(tmp_path: Path) -> None:
    """A file size limit cuts a write short as a full disk does: the write that did not
    fit (the journal's next step of zeros, taken only in part) fails, and every one
    acknowledged before it is there after the crash."""
    path = tmp_path / "db"
    Store(path).close()
    child = subprocess.run(
        [sys.executable, "-c", _SHORT_WRITER, str(path)], capture_output=True, timeout=60
    )
    lines = child.stdout.decode().splitlines()
    acknowledged = [int(line.split()[1]) for line in lines if line.startswith("acknowledged")]
    assert acknowledged and any(line.startswith("refused") for line in lines), lines
    restarted = Store(path)
    try:
        found = restarted.read([b"key%d" % i for i in acknowledged])
        assert [r is not None for r in found] == [True] * len(acknowledged), lines
    finally:
        restarted.close()


def test_a_store_opened_without_sync_replays_the_journal_first(
    store: Store, tmp_path: Path
) -> None:
    store.apply([rec(b"k", version=10, value=b"v1")])
    copy = tmp_path / "copy"
    shutil.copytree(store.path, copy)
    (copy / "lock.mdb").unlink()
    unsynced = Store(copy, sync=False)
    try:
        assert unsynced.read([b"k"]) == [rec(b"k", 10, b"v1")]
        tombstone = rec(b"k", version=11, tombstone=True)
        unsynced.apply([tombstone])
        assert unsynced.purge([tombstone]) == 1
    finally:
        unsynced.close()
    synced = Store(copy)
    try:
        assert synced.read([b"k"]) == [None]  # the old frame did not come back
    finally:
        synced.close()


def test_after_a_failed_journal_sync_nothing_is_written_until_a_restart(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = os.fdatasync

    def failing(fd: int) -> None:
        monkeypatch.setattr(os, "fdatasync", real)
        raise OSError(errno.EIO, "injected I/O error")

    store.apply([rec(b"k", version=10)])
    monkeypatch.setattr(os, "fdatasync", failing)
    with pytest.raises(JournalBroken):
        store.apply([rec(b"k", version=15, value=b"unknown fate")])
    tombstone = rec(b"k", version=20, tombstone=True)
    for write in (
        lambda: store.apply([rec(b"j")]),
        lambda: store.apply([tombstone], [Hint("n2", tombstone)]),
        lambda: store.purge([rec(b"k", version=10)]),
    ):
        with pytest.raises(JournalBroken):
            write()
    assert store.read([b"k"]) == [rec(b"k", version=10)]


def test_acknowledged_records_are_checkpointed_past_the_maximum_map_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The maximum refuses new writes; records the journal acknowledged already must reach
    LMDB however full it is."""
    monkeypatch.setattr(store_env, "JOURNAL_HEADROOM", 0)
    small = Store(tmp_path / "db", map_size=1 << 20, max_map_size=1 << 20)
    try:
        records = [rec(b"k%05d" % i, value=b"x" * 1000) for i in range(3000)]
        for start in range(0, len(records), 500):
            small.apply(records[start : start + 500])
        small.flush()
        assert small.stats().map_size > 1 << 20
        assert small.read([r.key for r in records]) == records
    finally:
        small.close()


def test_a_write_with_markers_stays_journaled_and_keeps_its_markers(tmp_path: Path) -> None:
    """A degraded cluster sends markers with most writes: they must not force the records
    into LMDB (a checkpoint per write), and one target too many refuses the whole write
    before anything is journaled."""
    store = Store(tmp_path / "db", max_targets=1)
    try:
        assert store.apply([rec(b"m")], markers=[Marker(b"m", "n2", (10, 1))]) == [True]
        assert store.hint_summary() == {"n2": 1}
        journal = store.stats().journal
        assert (journal.records, journal.checkpoints) == (1, 0)
        with pytest.raises(TooManyTargets):
            store.apply([rec(b"x")], markers=[Marker(b"x", "n3", (10, 1))])
        assert store.read([b"x"]) == [None]
    finally:
        store.close()


def test_a_walk_flushes_the_journal_once(store: Store) -> None:
    store.apply([rec(b"k%02d" % i) for i in range(10)])
    pages = store.iter_range(b"", b"", 2)
    walked = list(next(pages))
    for i, page in enumerate(pages):
        walked += page
        store.apply([rec(b"z%02d" % i)])  # written during the walk: read or not
    assert [r.key for r in walked[:10]] == [b"k%02d" % i for i in range(10)]
    journal = store.stats().journal
    assert journal.checkpoints == 1 and journal.records > 0


def test_a_store_whose_last_checkpoint_failed_still_closes(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing(entries: dict[bytes, bytes]) -> None:
        raise OSError(errno.EIO, "injected I/O error")

    assert store._ahead is not None
    monkeypatch.setattr(store._ahead, "_checkpoint", failing)
    store.apply([rec(b"kept")])
    with pytest.raises(JournalBroken):
        store.close()  # its checkpoint fails
    with pytest.raises(StoreClosed):
        store.read([b"kept"])
    reopened = Store(store.path)  # the journal kept the record for the replay
    try:
        assert reopened.read([b"kept"]) == [rec(b"kept")]
    finally:
        reopened.close()
