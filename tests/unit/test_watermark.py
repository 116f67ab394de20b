"""The purge watermark (shardd.watermark): raised durably by tombstone GC, and what a restored
record may write back under it; other records are never judged by it."""

from __future__ import annotations

from pathlib import Path

from shardkv.shardd.records import Record, Restored
from shardkv.shardd.store import Marker, Store


def rec(key: bytes, version: int, tombstone: bool = False) -> Record:
    return Record(key, b"" if tombstone else b"v%d" % version, version, 1, tombstone)


def restored(key: bytes, version: int) -> Restored:
    return Restored(key, b"v%d" % version, version, 1)


def test_a_restored_record_below_the_watermark_of_an_absent_key_is_refused(store: Store) -> None:
    store.apply([rec(b"gone", 20, tombstone=True), rec(b"live", 5)])
    assert store.purge([rec(b"gone", 20, tombstone=True)], 30) == 1  # GC up to 30
    applied = store.apply(
        [
            restored(b"gone", 10),  # absent, below 30: maybe deleted after the backup
            restored(b"live", 10),  # held older: last write wins as always
            restored(b"new", 30),  # absent, at the watermark: nothing newer was purged
        ]
    )
    assert applied == [None, True, True]
    assert store.read([b"gone", b"live", b"new"]) == [None, rec(b"live", 10), rec(b"new", 30)]
    # A plain record (repair, hand-off, read repair) is copied however old it is.
    assert store.apply([rec(b"gone", 10)]) == [True]


def test_the_watermark_only_rises_and_survives_a_reopen(tmp_path: Path) -> None:
    store = Store(tmp_path / "db")
    store.purge([], 30)
    store.purge([], 20)  # a later purge with a lower bound leaves it at 30
    store.close()
    store = Store(tmp_path / "db")
    try:
        assert store.apply([restored(b"k", 29), restored(b"j", 30)]) == [None, True]
    finally:
        store.close()


def test_a_refused_restore_keeps_no_marker(store: Store) -> None:
    store.purge([], 30)
    record = restored(b"k", 10)
    assert store.apply([record], markers=[Marker(b"k", "n3", record.stamp)]) == [None]
    assert store.hint_summary() == {}
    kept = restored(b"j", 40)
    assert store.apply([kept], markers=[Marker(b"j", "n3", kept.stamp)]) == [True]
    assert store.hint_summary() == {"n3": 1}
