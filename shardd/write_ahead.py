"""Durable writes as one sequential append: the journal in front of LMDB, and the records it
holds that LMDB does not hold yet.

Why: a durable LMDB commit of random keys writes back every B-tree page they touch and
waits for the disk to take them. In bare py-lmdb loops on this project's 2-core VM, three
processes each committing 400 random keys at a time into a 100,000-key store took 14 ms a
commit and 7.8 µs of system time a key (27,000 keys/s each); appending the same groups to a
journal with one fdatasync each, and committing them into LMDB 16,000 at a time on another
thread, took 3-4 ms a group and 2 µs of system time a key (85,000-95,000 keys/s each).
benchmarks/HISTORY.md (*Durable writes through a journal*) has what it did to the
cluster. etcd works the same way (a WAL, its B-tree committed every 100 ms), as does
Cassandra (commit log and memtable).

How: a write's records (every record but a restore's) are journaled
(shardkv.shardd.journal) and then made visible in ``active``, a dict of key -> LMDB value;
once ``active`` holds max_records or max_bytes it is frozen, appends go to the other
journal file, and the checkpoint thread commits the frozen records into LMDB (one durable
transaction), empties their file and drops them. So a key's newest value is in
``active``, else ``frozen``, else LMDB. A checkpoint holds what ``active`` gathered while
the previous one ran, up to BACKLOG times the bounds (the writes wait beyond), while
``active`` may gather as much again: at most 2 * BACKLOG times them in memory, active and
frozen together, and as much in the two journal files for a replay. ``pending`` (the two
dicts) is replaced as one tuple when a checkpoint starts or ends, and ``active`` grows in
place by whole appends. Readers take ``pending`` before they open their LMDB transaction:
a reader that got the frozen dict reads it whatever the checkpoint did since, and one that
came after it was dropped begins after the commit that holds its records. (A read of
many keys racing an append may see some of its records and not others: reads are per
key, as everywhere in shardkv.)

Everything else that reads or writes records in LMDB (scans and walks, digests, hint reads,
purges, hint deletes, restores, copies for backups) first calls flush(), which
checkpoints what is pending and waits for it, then works on LMDB alone; a write's hints
and markers go to LMDB beside its journaled records (Store._journaled).

Replay after a crash is last-writer-wins like every write, so a frame replayed twice, or
after its records reached LMDB, changes nothing; a file is emptied before any purge can
run (flush), so replay never brings back a purged record.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, TypeVar

from shardkv.shardd.gate import StoreClosed
from shardkv.shardd.journal import Journal, JournalBroken
from shardkv.shardd.lookup import Pending

log = logging.getLogger(__name__)
T = TypeVar("T")

# Records the active dict holds, and bytes journaled for it (keys, values, their lengths),
# before it is checkpointed. A checkpoint writes back each B-tree leaf its keys touch once,
# so where keys share leaves (100,000 keys fill a few thousand) the more records one
# carries the less each costs: at 65,536 rather than 16,384, a node spent ~0.4 µs less
# system time a key of batches of 100 written into 100,000 keys (1.1-1.4 -> 0.7-0.9), for
# ~25 MiB more memory in that run. The records bound is what holds small records (~230
# bytes of Python objects each beside their bytes) to 2 * BACKLOG * MAX_RECORDS, some 115
# MiB at worst, below what the bytes bound allows larger ones (128 MiB of journaled bytes).
MAX_RECORDS: Final = 65536
MAX_BYTES: Final = 16 << 20
# While a checkpoint runs, the active dict may grow to this many times those bounds; a
# write beyond waits for the checkpoint (the disk sets the pace, memory stays bounded).
BACKLOG: Final = 4


@dataclass(frozen=True)
class JournalStats:
    """What the journal holds and did, for metrics (Store.stats)."""

    # Records journaled and not yet in LMDB (a checkpoint's count them until it ends).
    records: int
    # Of them, keys LMDB holds no record of (Store.stats adds them to its entries).
    new_keys: int
    # Checkpoints committed into LMDB since the store opened.
    checkpoints: int


NO_JOURNAL = JournalStats(0, 0, 0)


class WriteAhead:
    """The journal of one store and the records it holds beyond LMDB. append() runs on the
    store's one writing thread (the commit thread); flush() and beside() on any thread."""

    def __init__(
        self,
        journal: Journal,
        checkpoint: Callable[[dict[bytes, bytes]], None],
        *,
        max_records: int = MAX_RECORDS,
        max_bytes: int = MAX_BYTES,
    ) -> None:
        self._journal = journal
        self._checkpoint = checkpoint
        self._max_records = max_records
        self._max_bytes = max_bytes
        self._lock = threading.Condition()
        # (active, frozen): read without the lock by readers, replaced whole under it.
        self.pending: Pending = ({}, {})
        self._active_bytes = 0
        # Keys of each dict that LMDB and the older dict did not hold (Store.stats).
        self._new = [0, 0]
        self._checkpointing = False
        self._failure: Exception | None = None
        self._closing = False
        self._thread: threading.Thread | None = None
        self.checkpoints = 0
        # Callers waiting for the checkpoint running now (flush, beside): no new one
        # starts meanwhile, so each waits for one at most.
        self._waiting = 0

    def append(self, winners: dict[bytes, bytes], new_keys: int) -> None:
        """Journals winners (key -> LMDB value, each beating what the key holds) durably,
        then makes them visible; new_keys of them are keys held nowhere before."""
        with self._lock:
            self._check()
            while self._checkpointing and self._full(BACKLOG):
                self._lock.wait()
                self._check()
            try:
                journaled = self._journal.append(winners)
            except JournalBroken as exc:
                # Nothing may be written after a frame of unknown fate: a later write or
                # purge of its keys could be undone by its replay (journal.py).
                self._failure = exc
                raise
            self.pending[0].update(winners)
            self._active_bytes += journaled
            self._new[0] += new_keys
            if not (self._checkpointing or self._waiting) and self._full(1):
                self._freeze()

    def flush(self) -> None:
        """Returns once LMDB holds every record journaled before the call: after the
        checkpoint running now, if any, and one of what active holds."""
        with self._lock:
            self._settle()
            if self.pending[0]:
                self._freeze()
                self._settle()

    def beside(self, read: Callable[[], T]) -> tuple[T, JournalStats]:
        """read() (of LMDB) and the journal's figures as one state: taken with no
        checkpoint running, so none commits in between."""
        with self._lock:
            self._settle(check=False)
            active, frozen = self.pending
            new_keys = self._new[0] + self._new[1]
            return read(), JournalStats(len(active) + len(frozen), new_keys, self.checkpoints)

    def close(self) -> None:
        """Checkpoints everything, stops the checkpoint thread and closes the files (after
        a failure, the files keep what LMDB does not hold, for the replay at restart)."""
        try:
            with self._lock:
                if self._closing:
                    return
                try:
                    if self._failure is None:
                        self.flush()
                finally:
                    self._closing = True
                    self._lock.notify_all()
            if self._thread is not None:
                self._thread.join()
        finally:
            self._journal.close()

    def _full(self, factor: int) -> bool:
        """Whether active holds factor times the bounds."""
        return (
            len(self.pending[0]) >= factor * self._max_records
            or self._active_bytes >= factor * self._max_bytes
        )

    def _check(self) -> None:
        if self._closing:
            raise StoreClosed(f"the store at {self._journal.directory} is closing")
        if self._failure is not None:
            raise JournalBroken(
                f"the journal in {self._journal.directory} failed ({self._failure});"
                " no write is taken until the node restarts and replays it"
            )

    def _settle(self, *, check: bool = True) -> None:
        """Under the lock: waits for the running checkpoint, if any, raising if it failed
        (unless not check); no other starts meanwhile."""
        self._waiting += 1
        try:
            while self._checkpointing:
                self._lock.wait()
        finally:
            self._waiting -= 1
        if check:
            self._check()

    def _freeze(self) -> None:
        """Under the lock, no checkpoint running: hands active to the checkpoint thread."""
        active, frozen = self.pending
        assert not frozen
        self._journal.switch()
        self.pending = ({}, active)
        self._new = [0, self._new[0]]
        self._active_bytes = 0
        self._checkpointing = True
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._serve, name="shardd-checkpoint", daemon=True
            )
            self._thread.start()
        self._lock.notify_all()

    def _serve(self) -> None:
        """The checkpoint thread: commits each frozen dict into LMDB, then empties its file."""
        while True:
            with self._lock:
                while not self._checkpointing and not self._closing:
                    self._lock.wait()
                if not self._checkpointing:
                    return
                frozen = self.pending[1]
                done = 1 - self._journal.current
            try:
                self._checkpoint(frozen)
                with self._lock:
                    self._new[1] = 0  # LMDB counts them now (frozen stays readable)
                self._journal.clear(done)
            except Exception as exc:
                log.error(
                    "journal checkpoint failed path=%s records=%d error=%r",
                    self._journal.directory,
                    len(frozen),
                    exc,
                )
                with self._lock:
                    self._failure = exc
                    self._checkpointing = False
                    self._lock.notify_all()
                return
            with self._lock:
                self.pending = (self.pending[0], {})
                self.checkpoints += 1
                self._checkpointing = False
                self._lock.notify_all()
