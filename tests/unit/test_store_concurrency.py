"""The LMDB store under concurrent readers and writers, on real files: a read that began
before a commit created a database, and long walks beside a map that must grow."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lmdb
import pytest
from shardkv.shardd.records import Hint, Record
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
