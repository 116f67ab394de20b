"""Owner-held markers in the LMDB store (shardd.parked): kept in the record's own commit,
handed over as the holder's current record, removed only once what they stood for is
handed over, counted with hints, and never letting tombstone GC drop what an owner waits
for."""

from __future__ import annotations

from pathlib import Path

from shardkv.shardd.records import Hint, Record
from shardkv.shardd.store import Marker, Store


def rec(key: bytes, value: bytes = b"v", version: int = 10, tombstone: bool = False) -> Record:
    return Record(key, b"" if tombstone else value, version, 1, tombstone)


def mark(record: Record, target: str) -> Marker:
    return Marker(record.key, target, record.stamp)


def test_a_marker_hands_over_the_holders_current_record(store: Store) -> None:
    first = rec(b"k", b"first", version=5)
    assert store.apply([first], markers=[mark(first, "n3")]) == [True]
    assert store.hint_summary() == {"n3": 1}
    assert store.stats().hints == 1
    assert store.read_hints("n3", 10) == [first]
    # A newer write the target did acknowledge: the holder hands over what it holds now.
    store.apply([rec(b"k", b"second", version=6)])
    assert store.read_hints("n3", 10) == [rec(b"k", b"second", version=6)]
    assert store.read_hints("n2", 10) == []


def test_a_marker_is_kept_even_when_the_record_was_not_newer(store: Store) -> None:
    store.apply([rec(b"k", b"newer", version=9)])
    older = rec(b"k", b"older", version=3)
    assert store.apply([older], markers=[mark(older, "n3")]) == [False]
    assert store.read_hints("n3", 10) == [rec(b"k", b"newer", version=9)]


def test_markers_are_removed_only_once_the_target_holds_what_they_stood_for(
    store: Store,
) -> None:
    old = rec(b"k", b"old", version=5)
    store.apply([old], markers=[mark(old, "n3")])
    handed = store.read_hints("n3", 10)
    newer = rec(b"k", b"newer", version=7)
    store.apply([newer], markers=[mark(newer, "n3")])  # marked again meanwhile
    assert store.delete_hints("n3", handed) == 0, "the newer marked write still waits"
    assert store.delete_hints("n3", store.read_hints("n3", 10)) == 1
    assert store.hint_summary() == {}


def test_hints_and_markers_for_one_target_page_together(store: Store) -> None:
    records = [rec(b"m%02d" % i, version=5) for i in range(7)]
    store.apply(
        records,
        [Hint("n3", rec(b"h%02d" % i, version=4)) for i in range(5)],
        [mark(r, "n3") for r in records],
    )
    assert store.hint_summary() == {"n3": 12}
    assert [r.key for r in store.read_hints("n3", 8)] == [
        *(b"h%02d" % i for i in range(5)),
        *(b"m%02d" % i for i in range(3)),
    ]
    batches = list(store.iter_hints("n3", 4))
    assert [len(b) for b in batches] == [4, 4, 4]
    assert [r.key for b in batches for r in b] == [
        *(b"h%02d" % i for i in range(5)),
        *(b"m%02d" % i for i in range(7)),
    ]


def test_markers_survive_a_reopen(tmp_path: Path) -> None:
    store = Store(tmp_path / "db")
    record = rec(b"k")
    store.apply([record], markers=[mark(record, "n2"), mark(record, "n3")])
    store.close()
    reopened = Store(tmp_path / "db")
    try:
        assert reopened.hint_summary() == {"n2": 1, "n3": 1}
        assert reopened.read_hints("n2", 10) == [record]
    finally:
        reopened.close()


def test_a_marked_tombstone_is_not_purged_and_a_purged_record_takes_its_markers(
    store: Store,
) -> None:
    tombstone = rec(b"gone", version=5, tombstone=True)
    live = rec(b"moved", version=5)
    store.apply([tombstone, live], markers=[mark(tombstone, "n3"), mark(live, "n3")])
    assert store.purge([tombstone, live]) == 1
    assert store.read([b"gone", b"moved"]) == [tombstone, None]
    assert store.read_hints("n3", 10) == [tombstone]
    store.delete_hints("n3", [tombstone])
    assert store.purge([tombstone]) == 1
    assert store.hint_summary() == {}
