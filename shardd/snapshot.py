"""Snapshots for backups: a compacted copy of the store, streamed batch by batch.

``copy_store`` (LMDB's ``env.copy(compact=True)``, like ``mdb_copy -c``, run by a child
process) writes a consistent copy of the whole environment at disk speed under one read
transaction; the records are then streamed from that private copy at the reader's pace.
So a slow backup client never keeps a read transaction of the live store open, which would
pin old pages and make the live file grow. The copy sits in a ``.snapshot-*`` directory
inside the data directory (same filesystem, no extra configuration).

Each copy costs as much disk as the store, so they are bounded and never outlive their
stream:

- At most ``MAX_COPIES`` exist at once. The directories on disk are counted, so a copy
  still being written or removed for a stream that already ended counts too. One more
  Snapshot waits up to ``BUSY_WAIT_S`` for a place (a stream just cancelled takes some
  milliseconds to remove its copy), then is refused (``SnapshotsBusy``,
  RESOURCE_EXHAUSTED) naming the bound.
- A copy is removed when its stream ends, however it ends: completion, cancellation,
  deadline, error. A stream that ends while LMDB is still writing its copy (the copy cannot
  be interrupted) has the copy removed as soon as it is written.
- Copies a crash left behind are removed when the node starts (``remove_leftovers``).

Every LMDB call runs on a worker thread, never on the event loop's.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import shutil
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

from shardkv.shardd.records import Record
from shardkv.shardd.store import Store

log = logging.getLogger(__name__)

# Snapshots (copies of the store) at once on one node: a backup copies nodes one after
# another, so two leave room for a second backup or a retry while one is stalled.
MAX_COPIES = 2
# How long one more snapshot waits for a place before it is refused.
BUSY_WAIT_S = 5.0
PREFIX = ".snapshot-"


class SnapshotsBusy(Exception):
    """As many snapshots as the bound allows are in progress; retry when one has ended."""


def _batches(copy: Store, batch_size: int, max_bytes: int) -> Iterator[tuple[str, list[Record]]]:
    """("", records) for the node's own records in key order, then (target, hints) for
    the hints parked for each other node."""
    for batch in copy.iter_range(b"", b"", batch_size, max_bytes=max_bytes):
        yield "", batch
    for target in sorted(copy.hint_summary()):
        for batch in copy.iter_hints(target, batch_size, max_bytes=max_bytes):
            yield target, batch


def _copies(data_dir: Path) -> list[Path]:
    return sorted(path for path in data_dir.glob(PREFIX + "*") if not path.is_symlink())


async def _reserve(store: Store, max_copies: int, wait_s: float) -> Path:
    """An empty directory for one more copy, once fewer than max_copies exist (waiting up
    to wait_s), or SnapshotsBusy. No await comes between the last count and the creation,
    so two calls cannot both take the last place."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    while (copies := len(_copies(store.path))) >= max_copies:
        if loop.time() >= deadline:
            raise SnapshotsBusy(
                f"{copies} snapshots of this node are in progress and at most {max_copies} run"
                f" at once (each is a full copy of the store); none ended within {wait_s:g} s,"
                " retry when one has ended"
            )
        await asyncio.sleep(0.05)
    return Path(tempfile.mkdtemp(prefix=PREFIX, dir=store.path))


def _open_copy(store: Store, directory: Path) -> Store:
    copy_store(store, directory)
    return Store(directory, sync=False)


def _remove(directory: Path, copy: Store | None) -> None:
    if copy is not None:
        copy.close()
    shutil.rmtree(directory, ignore_errors=True)


def _remove_when_written(
    loop: asyncio.AbstractEventLoop, directory: Path, opening: asyncio.Future[Store]
) -> None:
    """Done-callback of a copy whose stream ended first: removes it on a worker thread."""
    failed = opening.cancelled() or opening.exception() is not None
    loop.run_in_executor(None, _remove, directory, None if failed else opening.result())


async def snapshot_batches(
    store: Store,
    *,
    batch_size: int,
    max_bytes: int,
    max_copies: int = MAX_COPIES,
    wait_s: float = BUSY_WAIT_S,
) -> AsyncIterator[tuple[str, list[Record]]]:
    """Every record and hint of a consistent copy of store, as (hint target or "",
    records) batches of at most batch_size records and about max_bytes. Raises
    SnapshotsBusy when max_copies copies exist for wait_s."""
    directory = await _reserve(store, max_copies, wait_s)
    loop = asyncio.get_running_loop()
    opening = loop.run_in_executor(None, _open_copy, store, directory)
    try:
        # Shielded: a cancellation ends this stream, not the thread writing the copy.
        copy = await asyncio.shield(opening)
    except BaseException:
        opening.add_done_callback(functools.partial(_remove_when_written, loop, directory))
        raise
    try:
        batches = _batches(copy, batch_size, max_bytes)
        while (batch := await asyncio.to_thread(next, batches, None)) is not None:
            yield batch
    finally:
        # Runs to the end on its thread even if this stream is cancelled again meanwhile.
        await asyncio.shield(loop.run_in_executor(None, _remove, directory, copy))


def remove_leftovers(data_dir: Path) -> list[tuple[Path, int]]:
    """Removes the copies in data_dir that no stream owns (a crash or SIGKILL left them);
    call before serving. Logs and returns each one's path and size in bytes."""
    removed = []
    for path in _copies(data_dir):
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        shutil.rmtree(path, ignore_errors=True)
        log.info("snapshot_leftover_removed path=%s bytes=%d", path, size)
        removed.append((path, size))
    return removed


# What the child process runs: argv = the store's directory, the copy's, a map size.
_COPY = """
import sys, lmdb
env = lmdb.open(sys.argv[1], readonly=True, map_size=int(sys.argv[3]), subdir=True)
env.copy(sys.argv[2], compact=True)
"""


def copy_store(store: Store, directory: Path) -> None:
    """Writes a consistent, compacted copy of store's environment (records and hints)
    into the empty directory, from a child process that opens the environment read-only.

    Why a child process: the copy holds one read transaction for as long as it writes,
    and in this process nothing may hold one while the map grows. Under the gate
    (Store's shared side), a write that had to grow the map waited for the whole copy,
    and every read and write queued behind that waiting growth (gate.py). Without the
    gate it is no better: py-lmdb's set_mapsize invalidates this process's open
    transactions, and its copy holds a lock that set_mapsize and the abort of any write
    transaction (a MapFullError's, a refused write's) wait for (py-lmdb 3.0.0). Growing
    the map ahead of the copy would leave only a guessed headroom. A reader in another
    process is LMDB's ordinary multi-process use (its own map, its own reader slot in
    lock.mdb): the node grows its map and commits meanwhile, stalled by nothing. The
    child maps up to the store's maximum map size, so a map grown before its transaction
    begins stays readable. It costs a Python start (tens of milliseconds) per snapshot.
    Raises OSError if the copy fails."""
    store.flush()  # the copy reads LMDB alone: the journal's records first (write_ahead)
    size = str(store.stats().max_map_size)
    argv = [sys.executable, "-c", _COPY, str(store.path), str(directory), size]
    done = subprocess.run(argv, capture_output=True, check=False)
    if done.returncode:
        error = done.stderr.decode(errors="replace").strip().splitlines()[-3:]
        raise OSError(
            f"copying the store into {directory} failed (exit {done.returncode}): {error}"
        )
