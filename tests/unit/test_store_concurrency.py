"""The LMDB store under concurrent readers and writers, on real files: a read that began
before a commit created a database, and long walks beside a map that must grow."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lmdb
import pytest
from shardkv.shardd.records import Hint, Record
from shardkv.shardd.snapshot import copy_store
from shardkv.shardd.store import Store


def rec(key: bytes, value: bytes = b"v", version: int = 10) -> Record:
    return Record(key, value, version, 1)


class _CommitAfterBegin:
    """Stands in for a store's environment: right after the next read transaction begins,
    runs commit on another thread and waits for it (a commit thread's write landing while
    a reader is between its begin and its first use of a database handle)."""

    def __init__(self, env: lmdb.Environment, commit: Callable[[], object]) -> None:
        self._env = env
        self._commit: Callable[[], object] | None = commit

    def begin(self, **kwargs: Any) -> lmdb.Transaction:
        txn = self._env.begin(**kwargs)
        commit, self._commit = self._commit, None
        if commit is not None and not kwargs.get("write"):
            worker = threading.Thread(target=commit)
            worker.start()
            worker.join()
        return txn

    def __getattr__(self, name: str) -> Any:
        return getattr(self._env, name)


READS: dict[str, Callable[[Store], object]] = {
    "hint_summary": lambda store: store.hint_summary(),
    "stats": lambda store: store.stats(),
    "read_hints": lambda store: store.read_hints("new", 10),
    "iter_hints": lambda store: list(store.iter_hints("new", 10)),
}


@pytest.mark.timeout(30)
@pytest.mark.parametrize("read", sorted(READS))
def test_a_read_never_uses_a_database_created_after_its_transaction_began(
    tmp_path: Path, read: str
) -> None:
    """A commit parks the first hint for a new target while a read transaction is open:
    the read answers from its own snapshot. Before, the read picked up the new database's
    handle and LMDB refused it in the older transaction (mdb_stat / mdb_cursor_open:
    Invalid argument), failing HintSummary, Stats, metrics and hint reads."""
    store = Store(tmp_path / "db", sync=False)
    try:
        store.apply([], [Hint("old", rec(b"h-old"))])
        real = store._env
        store._env = _CommitAfterBegin(  # type: ignore[assignment]
            real, lambda: store.apply([], [Hint("new", rec(b"h-new"))])
        )
        try:
            READS[read](store)  # the snapshot it reads predates the "new" target
        finally:
            store._env = real
        assert store.hint_summary() == {"old": 1, "new": 1}
        assert store.read_hints("new", 10) == [rec(b"h-new")]
        assert store.stats().hints == 2
    finally:
        store.close()


def _digest(store: Store, _: Path) -> object:
    return store.digest(b"", b"")


def _copy(store: Store, into: Path) -> object:
    into.mkdir()
    return copy_store(store, into)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("walk", [_digest, _copy], ids=["digest", "copy"])
def test_a_whole_store_walk_never_holds_up_map_growth_and_reads(
    tmp_path: Path, walk: Callable[[Store, Path], object]
) -> None:
    """While a digest of the whole store (Replica.Digest) or a snapshot's copy runs, a
    write that must grow the map does, and a 1-key read after it is answered, both before
    the walk ends. Before, the walk held one read transaction and the gate's shared side
    to its end: the growth waited for it, and every read and write queued behind the
    waiting growth."""
    store = Store(tmp_path / "db", sync=False, map_size=256 << 20)
    try:
        for b in range(20):  # 200 MB for the copy, 300,000 records for the digest
            store.apply([rec(b"big%07d" % (b * 100 + i), b"x" * 100_000) for i in range(100)])
        for b in range(30):
            store.apply([rec(b"k%07d" % (b * 10_000 + i), b"v" * 20) for i in range(10_000)])
        stats = store.stats()  # the map all but full: the next 8 MB must grow it
        store.apply([rec(b"pad", b"p" * (stats.map_size - stats.used_bytes - (4 << 20)))])
        trigger = rec(b"trigger", b"y" * (8 << 20))
        began = time.monotonic()
        at: dict[str, float] = {}

        def walker() -> None:
            walk(store, tmp_path / "copy")
            at["walk ended"] = time.monotonic() - began

        def grower() -> None:
            store.apply([trigger])
            at["map grown"] = time.monotonic() - began

        threads = [threading.Thread(target=walker), threading.Thread(target=grower)]
        threads[0].start()
        time.sleep(0.05)
        threads[1].start()
        while not at:  # the growth or the walk, whichever ends first
            time.sleep(0.001)
        assert store.read([b"k0000001"]) == [rec(b"k0000001", b"v" * 20)]
        at["1-key read answered"] = time.monotonic() - began
        for thread in threads:
            thread.join()
        order = sorted(at, key=at.__getitem__)
        assert order[-1] == "walk ended", ", ".join(f"{e} at {at[e] * 1000:.0f} ms" for e in order)
        assert store.stats().map_size > stats.map_size
    finally:
        store.close()
