"""The node's LMDB store: versioned records with last-write-wins, hints, markers, digests.

One LMDB environment per node. User records live in the named database "data"; what the
node keeps for other nodes that missed a write (hints parked as a fallback, markers kept
as an owner) lives in per-target databases described in shardkv.shardd.parked. Every
method is synchronous and opens and closes its own transaction, so callers run it on a
worker thread, or on an event loop only for a small read (shardkv.shardd.node); a commit
never runs on an event loop.

The map grows (doubling) when a commit finds it full, up to max_map_size; beyond that a
write raises StoreFull while reads keep working. Durable (unless sync=False): a write of
records alone is journaled first and reaches LMDB in a later, larger commit
(shardkv.shardd.write_ahead); every other write is an fsync'd LMDB commit after the
journal's records; the data directory's entries are fsync'd once created
(shardkv.shardd.durable_dir).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

import lmdb
from shardkv.shardd.gate import StoreClosed
from shardkv.shardd.journal import clear_files, replay
from shardkv.shardd.lookup import NOTHING_PENDING, Entry, layered, page, read_within, record_or_none
from shardkv.shardd.lww import put_if_newer, put_records, winners_of
from shardkv.shardd.parked import Marker, Opened, Parked, Resume, TooManyTargets, check_target
from shardkv.shardd.records import Hint, Record, Restored, decode, digest_bytes, stamp_of
from shardkv.shardd.store_env import (
    DEFAULT_MAP_SIZE,
    DEFAULT_MAX_MAP_SIZE,
    StoreEnv,
    StoreFull,
    StoreOpenError,
    StoreStats,
)
from shardkv.shardd.watermark import PurgeWatermark
from shardkv.shardd.write_ahead import WriteAhead

log = logging.getLogger(__name__)

# Bytes of records one scan page or streamed batch holds at most (one record may overshoot).
DEFAULT_PAGE_BYTES = 8 << 20
# Distinct nodes one store keeps hints or markers for (two LMDB databases each at most).
MAX_TARGETS = 64
# Records one transaction of a digest reads at most (Store.digest).
DIGEST_PAGE = 1000
_DATA_DB = b"data"

T = TypeVar("T")


__all__ = [
    "Marker",
    "Store",
    "StoreClosed",
    "StoreFull",
    "StoreOpenError",
    "StoreStats",
    "TooManyTargets",
    "check_target",
]


class Store(StoreEnv):
    """Records and hints of one node in one LMDB environment at path."""

    def __init__(
        self,
        path: str | Path,
        *,
        sync: bool = True,
        map_size: int = DEFAULT_MAP_SIZE,
        max_map_size: int = DEFAULT_MAX_MAP_SIZE,
        max_dbs: int = 1024,
        max_readers: int = 126,
        max_targets: int = MAX_TARGETS,
    ) -> None:
        super().__init__(
            path,
            sync=sync,
            map_size=map_size,
            max_map_size=max_map_size,
            max_dbs=max_dbs,
            max_readers=max_readers,
        )
        with self._env.begin(write=True) as txn:
            self._data = self._env.open_db(_DATA_DB, txn=txn, create=True)
            self._meta = self._env.open_db(b"meta", txn=txn, create=True)  # shardd.identity
            self._parked = Parked(self._env, txn, max_targets)
            self._watermark = PurgeWatermark(self._env, txn)
        self._replay()
        self._ahead: WriteAhead | None = None
        if self._journal is not None:
            self._ahead = WriteAhead(self._journal, self._checkpoint)

    # -- writes ---------------------------------------------------------------------------

    def apply(
        self,
        records: Sequence[Record],
        hints: Sequence[Hint] = (),
        markers: Sequence[Marker] = (),
    ) -> list[bool | None]:
        """Stores each record that is newer than the stored one, parks each hint that is
        newer than the parked one and keeps each marker of a key it holds, all in one
        durable transaction. Returns, per record, whether it was stored; None for a
        Restored record refused as possibly deleted (shardkv.shardd.watermark)."""
        max_key = self._max_key
        for record in records:
            if not 0 < len(record.key) <= max_key:
                self._check_key(record.key)
        for hint in hints:
            check_target(hint.target)
            self._check_key(hint.record.key)
        for marker in markers:
            check_target(marker.target)
            self._check_key(marker.key)
        if self._ahead is not None:
            journaled = not (hints or markers) and all(type(r) is not Restored for r in records)
            if journaled and not self._short_of_room():
                return self._journaled(self._ahead, records)
            self._ahead.flush()  # a Restored record is judged by LMDB's watermark
        targets = {h.target for h in hints} | {m.target for m in markers}

        def body(txn: lmdb.Transaction, opened: Opened) -> list[bool | None]:
            self._parked.check_targets(targets)  # under the write lock: exact
            applied = put_records(txn, self._data, records, self._watermark)
            self._parked.park(txn, hints, opened, put_if_newer)
            self._parked.mark(txn, [m for m in markers if txn.get(m.key, db=self._data)], opened)
            return applied

        return self._write(body)

    def delete_hints(self, target: str, records: Sequence[Record]) -> int:
        """Removes the hints and markers for target that the handed-back records satisfy:
        those whose (version, writer) is not above the record's, so one parked or marked
        for a newer write meanwhile survives. Returns how many were removed."""
        valid = [r for r in records if 0 < len(r.key) <= self._max_key]
        self.flush()

        def body(txn: lmdb.Transaction, opened: Opened) -> int:
            return self._parked.delete(txn, target, valid)

        return self._write(body)

    def purge(self, records: Sequence[Record], watermark: int = 0) -> int:
        """Removes each stored record whose (version, writer) still equals the given one's,
        so a key rewritten since it was picked survives (tombstone GC, ranges given away
        after a move). A tombstone some owner still waits for (a marker) stays until it is
        handed over; a live record goes with its markers. Returns how many were removed.
        The purge watermark rises to watermark (tombstone GC's bound) in the same commit."""
        self.flush()

        def body(txn: lmdb.Transaction, opened: Opened) -> int:
            self._watermark.raise_to(txn, watermark)
            purged = 0
            for record in records:
                if not record.key or len(record.key) > self._max_key:
                    continue
                raw = txn.get(record.key, db=self._data)
                if raw is None or stamp_of(raw) != record.stamp:
                    continue
                if self._parked.marked(txn, record.key):
                    if decode(record.key, raw).tombstone:
                        continue
                    self._parked.unmark(txn, record.key)
                txn.delete(record.key, db=self._data)
                purged += 1
            return purged

        return self._write(body)

    def flush(self) -> None:
        """Returns once LMDB holds every record written before the call (write_ahead)."""
        if self._ahead is not None:
            self._ahead.flush()

    def _checkpoint(self, entries: dict[bytes, bytes]) -> None:
        """Commits journaled records into LMDB, durably. Plain puts: each beat what LMDB
        held when it was journaled, and LMDB changes only through this thread or after a
        flush (every other writer flushes first)."""

        def body(txn: lmdb.Transaction, opened: Opened) -> None:
            put, data = txn.put, self._data
            for key in sorted(entries):
                put(key, entries[key], db=data)

        self._write(body, acknowledged=True)

    def _journaled(self, ahead: WriteAhead, records: Sequence[Record]) -> list[bool | None]:
        """apply() of records alone, through the journal (shardkv.shardd.write_ahead)."""
        pending = ahead.pending  # before the transaction begins: lookup.layered
        with self._gate.shared(), self._env.begin() as txn:
            winners, applied, new_keys = winners_of(records, layered(txn, self._data, pending))
        if winners:
            ahead.append(winners, new_keys)
        return list(applied)

    def _replay(self) -> None:
        """Commits what the journal files hold (a crash left them), last-writer-wins, then
        empties them, durably even without sync: frames left by a store opened with sync
        would else come back at its next start with sync, after later writes and purges."""
        records = [decode(key, raw) for key, raw in replay(self.path)]
        if records:
            data, mark = self._data, self._watermark
            self._write(lambda txn, _: put_records(txn, data, records, mark), acknowledged=True)
            self._env.sync(True)
            log.info("journal replayed path=%s records=%d", self.path, len(records))
        clear_files(self.path)

    def _write(
        self, body: Callable[[lmdb.Transaction, Opened], T], *, acknowledged: bool = False
    ) -> T:
        """Runs body in one write transaction, growing the map and retrying when it is
        full (past its maximum for acknowledged records: StoreEnv._grow), and dropping
        emptied hint databases and retrying once when a target is one too many."""
        reclaimed = False
        while True:
            seen = self._map_size
            opened = Opened()
            try:
                with self._gate.shared():
                    with self._env.begin(write=True) as txn:
                        result = body(txn, opened)
                    # Handles opened in a transaction are valid only once it committed.
                    self._parked.adopt(opened)
                return result
            except lmdb.MapFullError:
                self._grow(seen, past_max=acknowledged)
            except (TooManyTargets, lmdb.DbsFullError) as exc:
                if reclaimed or not self._reclaim_targets():
                    if isinstance(exc, TooManyTargets):
                        raise
                    raise TooManyTargets(f"hint targets: database limit reached ({exc})") from exc
                reclaimed = True

    def _reclaim_targets(self) -> bool:
        """Drops the databases of targets with no hint or marker left (Parked.drop_empty);
        returns whether any target stopped counting."""
        with self._gate.exclusive(), self._env.begin(write=True) as txn:
            gone = self._parked.drop_empty(txn)
        if gone:
            log.info("hint targets reclaimed path=%s targets=%s", self.path, ",".join(gone))
        return bool(gone)

    # -- reads ----------------------------------------------------------------------------

    def read(self, keys: Sequence[bytes], *, max_bytes: int = 0) -> list[Record | None]:
        """The stored record of each key (tombstones included); None where there is none.
        With max_bytes, only the prefix of keys whose entries fit (lookup.read_within)."""
        return self.read_entries(keys, record_or_none, max_bytes=max_bytes)

    def read_entries(
        self, keys: Sequence[bytes], entry: Entry[T], *, max_bytes: int = 0
    ) -> list[T]:
        """As read, with each key's entry built by entry from its LMDB value (lookup)."""
        with self._gate.shared():
            return self._read(keys, entry, max_bytes)

    def read_entries_now(
        self, keys: Sequence[bytes], entry: Entry[T], *, max_bytes: int = 0
    ) -> list[T] | None:
        """read_entries, or None without reading when that would wait (the map is about to
        grow or the store to close): for a caller that must not block, an event loop."""
        with self._gate.try_shared() as held:
            return self._read(keys, entry, max_bytes) if held else None

    def _read(self, keys: Sequence[bytes], entry: Entry[T], max_bytes: int) -> list[T]:
        pending = self._ahead.pending if self._ahead is not None else NOTHING_PENDING
        with self._env.begin(buffers=True) as txn:
            get = layered(txn, self._data, pending)
            return read_within(get, keys, entry, max_key=self._max_key, max_bytes=max_bytes)

    def scan(
        self, start: bytes, end: bytes, limit: int, *, max_bytes: int = DEFAULT_PAGE_BYTES
    ) -> tuple[list[Record], bytes]:
        """Up to limit records of [start, end) (end b"" = open) in key order, tombstones
        included, stopping early once max_bytes are collected. Returns the records and the
        key the next page starts at, b"" when the range is exhausted."""
        if limit < 1:
            raise ValueError(f"scan limit must be positive, got {limit}")
        self.flush()
        with self._gate.shared(), self._env.begin() as txn:
            return page(txn, self._data, start, end, limit, max_bytes, max_key=self._max_key)

    def iter_range(
        self, start: bytes, end: bytes, batch_size: int, *, max_bytes: int = DEFAULT_PAGE_BYTES
    ) -> Iterator[list[Record]]:
        """Every record of [start, end) in batches; each batch is read in its own short
        transaction, so no transaction stays open while the consumer holds a batch."""
        while True:
            batch, start = self.scan(start, end, batch_size, max_bytes=max_bytes)
            if batch:
                yield batch
            if not start:
                return

    def digest(self, start: bytes, end: bytes) -> tuple[bytes, int]:
        """SHA-256 over every record of [start, end) in key order, and how many there are.

        Read in pages, each in its own short transaction (iter_range): a walk of the whole
        store in one transaction held the gate's shared side to its end, so a write that
        had to grow the map waited for it, and every read and write behind that waiting
        growth (gate.py). A record written during the walk is counted or not, as if it
        had come a moment earlier or later; a quiet range digests the same either way."""
        hasher = hashlib.sha256()
        count = 0
        for batch in self.iter_range(start, end, DIGEST_PAGE):
            for record in batch:
                hasher.update(digest_bytes(record))
            count += len(batch)
        return hasher.digest(), count

    def hint_summary(self) -> dict[str, int]:
        """How many hints and markers wait for each target (targets with none left out)."""
        with self._gate.shared():
            handles = self._parked.handles()  # before begin(): shardkv.shardd.parked
            with self._env.begin() as txn:
                return handles.summary(txn)

    def read_hints(
        self, target: str, limit: int, *, max_bytes: int = DEFAULT_PAGE_BYTES
    ) -> list[Record]:
        """Up to limit records for target: the hints parked for it in key order, then this
        node's current record of each key it keeps a marker for."""
        self.flush()
        with self._gate.shared():
            handles = self._parked.handles()
            with self._env.begin() as txn:
                records, _ = handles.page(txn, self._data, target, limit, max_bytes)
        return records

    def iter_hints(
        self, target: str, batch_size: int, *, max_bytes: int = DEFAULT_PAGE_BYTES
    ) -> Iterator[list[Record]]:
        """Every record read_hints would hand target, in batches, each read in its own short
        transaction."""
        start: Resume | None = (b"", b"")
        while start is not None:
            self.flush()
            with self._gate.shared():
                handles = self._parked.handles()
                with self._env.begin() as txn:
                    batch, start = handles.page(
                        txn, self._data, target, batch_size, max_bytes, start=start
                    )
            if batch:
                yield batch

    def meta(self, key: bytes, value: bytes | None = None) -> bytes | None:
        """The "meta" database's entry of key (None: absent); with value, stores it first."""
        if value is not None:
            self._write(lambda txn, _: txn.put(key, value, db=self._meta))
        with self._gate.shared(), self._env.begin() as txn:
            return txn.get(key, db=self._meta)

    def stats(self) -> StoreStats:
        """Record and hint counts, map sizes and the purge watermark; cheap (reads database
        headers and one key only). Records still only in the journal count too."""
        if self._ahead is None:
            return self._stats()
        stats, journal = self._ahead.beside(self._stats)
        return dataclasses.replace(stats, entries=stats.entries + journal.new_keys, journal=journal)

    def _stats(self) -> StoreStats:
        with self._gate.shared():
            handles = self._parked.handles()
            with self._env.begin() as txn:
                entries = int(txn.stat(self._data)["entries"])
                hints = handles.count(txn)
                watermark = self._watermark.get(txn)
                info = self._env.info()
        return StoreStats(
            entries=entries,
            hints=hints,
            map_size=int(info["map_size"]),
            max_map_size=self._max_map_size,
            used_bytes=(int(info["last_pgno"]) + 1) * self._page_size,
            purge_watermark=watermark,
        )

    # -- lifecycle ------------------------------------------------------------------------

    def close(self) -> None:
        """Commits the journal's records, waits for open transactions, then closes the
        environment (idempotent)."""
        if self._ahead is not None:
            self._ahead.close()
        try:
            with self._gate.exclusive():
                self._gate.close()
                self._env.close()
        except StoreClosed:
            return
