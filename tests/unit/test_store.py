"""The LMDB store on real files: last-write-wins, paging, map growth, hints, digests."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from shardkv.common.hlc import precedes
from shardkv.common.limits import LimitExceeded
from shardkv.shardd.gate import StoreClosed
from shardkv.shardd.records import Hint, Record
from shardkv.shardd.store import Store, StoreFull, StoreOpenError

W1, W2 = 1, 2


def rec(
    key: bytes, value: bytes = b"v", version: int = 10, writer: int = W1, tombstone: bool = False
) -> Record:
    return Record(key, b"" if tombstone else value, version, writer, tombstone)


def test_put_get_delete_round_trip(store: Store) -> None:
    assert store.apply([rec(b"a", b"1"), rec(b"b", b"2")]) == [True, True]
    assert store.read([b"a", b"b", b"missing"]) == [rec(b"a", b"1"), rec(b"b", b"2"), None]
    assert store.apply([rec(b"a", version=11, tombstone=True)]) == [True]
    [deleted] = store.read([b"a"])
    assert deleted is not None and deleted.tombstone and deleted.value == b""
    assert store.stats().entries == 2  # the tombstone stays until it is purged


def test_empty_value_and_binary_keys(store: Store) -> None:
    keys = [b"\x00", b"\xff" * 511, bytes(range(256))]
    store.apply([rec(k, b"") for k in keys])
    assert [r and r.value for r in store.read(keys)] == [b"", b"", b""]


def test_older_never_overwrites_newer(store: Store) -> None:
    store.apply([rec(b"k", b"new", version=20)])
    assert store.apply([rec(b"k", b"old", version=19, writer=999)]) == [False]
    assert store.apply([rec(b"k", b"old", version=19, tombstone=True)]) == [False]
    assert store.read([b"k"])[0] == rec(b"k", b"new", version=20)


def test_newer_tombstone_hides_value_and_older_write_cannot_resurrect(store: Store) -> None:
    store.apply([rec(b"k", b"v", version=5)])
    store.apply([rec(b"k", version=6, tombstone=True)])
    assert store.apply([rec(b"k", b"zombie", version=5, writer=W2)]) == [False]
    [stored] = store.read([b"k"])
    assert stored is not None and stored.tombstone


def test_equal_versions_are_ordered_by_writer(store: Store) -> None:
    store.apply([rec(b"k", b"w2", version=7, writer=W2)])
    assert store.apply([rec(b"k", b"w1", version=7, writer=W1)]) == [False]
    assert store.apply([rec(b"k", b"w3", version=7, writer=3)]) == [True]
    assert store.apply([rec(b"k", b"again", version=7, writer=3)]) == [False]  # equal: kept
    assert store.read([b"k"])[0] == rec(b"k", b"w3", version=7, writer=3)


def test_same_key_twice_in_one_apply_keeps_the_newer(store: Store) -> None:
    assert store.apply([rec(b"k", b"b", version=9), rec(b"k", b"a", version=8)]) == [True, False]
    assert store.read([b"k"])[0] == rec(b"k", b"b", version=9)


def test_key_limits_are_enforced(store: Store) -> None:
    with pytest.raises(LimitExceeded, match="512 bytes"):
        store.apply([rec(b"x" * 512)])
    with pytest.raises(LimitExceeded):
        store.apply([rec(b"")])
    assert store.read([b"", b"x" * 600]) == [None, None]


def test_scan_pages_with_limit_and_resume(store: Store) -> None:
    store.apply([rec(b"k%03d" % i, b"%d" % i) for i in range(25)])
    store.apply([rec(b"k005", version=11, tombstone=True)])
    seen: list[bytes] = []
    start = b"k002"
    pages = 0
    while True:
        page, start = store.scan(start, b"k020", 7)
        assert len(page) <= 7
        seen += [r.key for r in page]
        pages += 1
        if not start:
            break
    assert seen == [b"k%03d" % i for i in range(2, 20)]  # tombstones included
    assert pages == 3  # 18 records: 7 + 7 + 4, and no empty trailing page


def test_scan_open_end_and_byte_budget(store: Store) -> None:
    store.apply([rec(b"k%d" % i, b"x" * 1000) for i in range(10)])
    page, nxt = store.scan(b"", b"", 100, max_bytes=2500)
    assert len(page) == 3 and nxt == page[-1].key + b"\x00"
    page, nxt = store.scan(nxt, b"", 100)
    assert len(page) == 7 and nxt == b""


def test_scan_resumes_after_a_maximal_key(store: Store) -> None:
    big = b"m" * 511
    store.apply([rec(big), rec(b"n")])
    page, nxt = store.scan(b"", b"", 1)
    assert page[0].key == big and len(nxt) == 512
    page, nxt = store.scan(nxt, b"", 10)
    assert [r.key for r in page] == [b"n"] and nxt == b""


def test_iter_range_yields_every_record_in_batches(store: Store) -> None:
    store.apply([rec(b"k%03d" % i) for i in range(50)])
    batches = list(store.iter_range(b"k010", b"", 16))
    assert [len(b) for b in batches] == [16, 16, 8]
    assert [r.key for b in batches for r in b] == [b"k%03d" % i for i in range(10, 50)]


def test_map_grows_from_a_tiny_map(tmp_path: Path) -> None:
    store = Store(tmp_path / "db", map_size=64 << 10, sync=False)
    try:
        value = b"v" * 4000
        for batch in range(20):  # 4 MB in all, 64 times the first map
            store.apply([rec(b"k%02d-%03d" % (batch, i), value) for i in range(50)])
        stats = store.stats()
        assert stats.entries == 1000
        assert stats.map_size >= 4 << 20 and stats.used_bytes <= stats.map_size
        assert store.read([b"k19-049"])[0] == rec(b"k19-049", value)
        # A single commit larger than twice the map still fits: the map doubles repeatedly.
        store.apply([rec(b"huge", b"h" * (stats.map_size * 3))])
        assert store.read([b"huge"])[0] is not None
    finally:
        store.close()


def test_store_full_at_the_maximum_and_reads_keep_working(tmp_path: Path) -> None:
    store = Store(tmp_path / "db", map_size=64 << 10, max_map_size=256 << 10, sync=False)
    try:
        store.apply([rec(b"first", b"1")])
        with pytest.raises(StoreFull, match="262144"):
            for i in range(1000):
                store.apply([rec(b"k%04d" % i, b"x" * 4000)])
        assert store.read([b"first"])[0] == rec(b"first", b"1")
        assert store.scan(b"", b"", 5)[0]
        assert store.stats().map_size == 256 << 10
    finally:
        store.close()


def test_data_survives_close_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "db"
    store = Store(path, map_size=64 << 10)
    store.apply(
        [rec(b"k%d" % i, b"x" * 1000) for i in range(200)], [Hint("n2", rec(b"h", b"hint"))]
    )
    grown = store.stats().map_size
    store.close()
    reopened = Store(path, map_size=64 << 10)
    try:
        assert reopened.stats().entries == 200
        assert reopened.stats().map_size >= grown // 2  # LMDB maps at least the file size
        assert reopened.read([b"k199"])[0] == rec(b"k199", b"x" * 1000)
        assert reopened.hint_summary() == {"n2": 1}
    finally:
        reopened.close()


def test_closed_store_refuses_calls(tmp_path: Path) -> None:
    store = Store(tmp_path / "db")
    store.close()
    store.close()
    with pytest.raises(StoreClosed):
        store.read([b"k"])


def test_data_dir_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(StoreOpenError, match="not a directory"):
        Store(tmp_path / "file")


def test_hints_are_lww_per_target_and_key(store: Store) -> None:
    store.apply(
        [], [Hint("n2", rec(b"a", b"1", version=5)), Hint("n3", rec(b"a", b"x", version=1))]
    )
    store.apply(
        [], [Hint("n2", rec(b"a", b"old", version=4)), Hint("n2", rec(b"b", b"2", version=5))]
    )
    assert store.hint_summary() == {"n2": 2, "n3": 1}
    assert store.read_hints("n2", 10) == [rec(b"a", b"1", version=5), rec(b"b", b"2", version=5)]
    assert store.read_hints("n2", 1) == [rec(b"a", b"1", version=5)]
    assert store.read_hints("nobody", 10) == []
    assert store.read([b"a"]) == [None]  # hints are not the node's own data


def test_delete_hints_only_where_unchanged(store: Store) -> None:
    store.apply([], [Hint("n2", rec(b"a", version=5)), Hint("n2", rec(b"b", version=5))])
    handed_back = store.read_hints("n2", 10)
    store.apply([], [Hint("n2", rec(b"b", b"newer", version=6))])  # re-parked meanwhile
    assert store.delete_hints("n2", handed_back) == 1
    assert store.read_hints("n2", 10) == [rec(b"b", b"newer", version=6)]
    assert store.delete_hints("unknown", handed_back) == 0
    assert store.hint_summary() == {"n2": 1}


def test_digest_equal_for_equal_data_and_differs_on_any_field(tmp_path: Path) -> None:
    records = [rec(b"k%d" % i, b"v%d" % i) for i in range(20)]
    variants = {
        "value": rec(b"k7", b"other"),
        "version": rec(b"k7", b"v7", version=11),
        "writer": rec(b"k7", b"v7", writer=W2),
        "tombstone": rec(b"k7", version=11, tombstone=True),
    }
    stores = {name: Store(tmp_path / name, sync=False) for name in ["a", "b", *variants]}
    try:
        for name, store in stores.items():
            variant = variants.get(name)
            store.apply([variant if variant and r.key == variant.key else r for r in records])
        digest_a, count_a = stores["a"].digest(b"", b"")
        assert (digest_a, count_a) == stores["b"].digest(b"", b"") and count_a == 20
        for name in variants:
            assert stores[name].digest(b"", b"")[0] != digest_a, name
            assert stores[name].digest(b"k8", b"")[0] == stores["a"].digest(b"k8", b"")[0]
        assert stores["a"].digest(b"k1", b"k2")[1] == 11  # k1, k10..k19
    finally:
        for store in stores.values():
            store.close()


_keys = st.binary(min_size=1, max_size=8)
_ops = st.lists(
    st.tuples(_keys, st.binary(max_size=16), st.integers(1, 50), st.booleans()), max_size=60
)


@pytest.mark.parametrize("sync", [False, True])  # True: decided by the journal (lww.winners_of)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ops=_ops,
    bounds=st.tuples(st.binary(max_size=3), st.binary(max_size=3)),
    limit=st.integers(1, 7),
)
def test_scan_equals_a_sorted_lww_model(
    sync: bool, ops: list[tuple[bytes, bytes, int, bool]], bounds: tuple[bytes, bytes], limit: int
) -> None:
    model: dict[bytes, Record] = {}
    for key, value, version, tombstone in ops:
        record = rec(key, value, version=version, tombstone=tombstone)
        if key not in model or precedes(model[key], record):
            model[key] = record
    start, end = sorted(bounds)
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(tmp, sync=sync, map_size=1 << 20)
        try:
            for chunk in range(0, len(ops), 7):  # several commits, out of version order
                store.apply(
                    [rec(k, v, version=n, tombstone=t) for k, v, n, t in ops[chunk : chunk + 7]]
                )
            got: list[Record] = []
            cursor = start
            while True:
                page, cursor = store.scan(cursor, end, limit)
                got += page
                if not cursor:
                    break
            expected = [model[k] for k in sorted(model) if k >= start and (not end or k < end)]
            assert got == expected
            assert store.digest(start, end)[1] == len(expected)
        finally:
            store.close()
