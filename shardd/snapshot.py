"""Snapshots for backups: a compacted copy of the store, streamed batch by batch.

``Store.copy`` (LMDB's ``env.copy(compact=True)``, like ``mdb_copy -c``) writes a
consistent copy of the whole environment at disk speed under one read transaction; the
records are then streamed from that private copy at the reader's pace. So a slow backup
client never keeps a read transaction of the live store open, which would pin old pages
and make the live file grow. The copy sits in a ``.snapshot-*`` directory inside the data
directory (same filesystem, no extra configuration) and is removed when the stream ends,
however it ends; one left by a crash can be deleted by hand.

Every LMDB call runs on a worker thread, never on the event loop's.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

from shardkv.shardd.records import Record
from shardkv.shardd.store import Store


def _batches(copy: Store, batch_size: int, max_bytes: int) -> Iterator[tuple[str, list[Record]]]:
    """("", records) for the node's own records in key order, then (target, hints) for
    the hints parked for each other node."""
    for batch in copy.iter_range(b"", b"", batch_size, max_bytes=max_bytes):
        yield "", batch
    for target in sorted(copy.hint_summary()):
        for batch in copy.iter_hints(target, batch_size, max_bytes=max_bytes):
            yield target, batch


def _open_copy(store: Store) -> tuple[Path, Store]:
    directory = Path(tempfile.mkdtemp(prefix=".snapshot-", dir=store.path))
    try:
        store.copy(directory)
        return directory, Store(directory, sync=False)
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise


def _discard(directory: Path, copy: Store) -> None:
    copy.close()
    shutil.rmtree(directory, ignore_errors=True)


async def snapshot_batches(
    store: Store, *, batch_size: int, max_bytes: int
) -> AsyncIterator[tuple[str, list[Record]]]:
    """Every record and hint of a consistent copy of store, as (hint target or "",
    records) batches of at most batch_size records and about max_bytes."""
    directory, copy = await asyncio.to_thread(_open_copy, store)
    try:
        batches = _batches(copy, batch_size, max_bytes)
        while (batch := await asyncio.to_thread(next, batches, None)) is not None:
            yield batch
    finally:
        await asyncio.to_thread(_discard, directory, copy)
