"""What a Store reads: records by key (the journal's first), pages of key ranges, digests,
hints and markers, and its counters.

The base of shardkv.shardd.store's Store, which adds the writes: it opens the store's
databases in the environment (shardkv.shardd.store_env) and reads them. Bulk reads (pages,
walks, digests, hints) first flush the journal (shardkv.shardd.write_ahead), so they read
LMDB alone; point reads look in the journal's records before LMDB (lookup.layered).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import TypeVar

from shardkv.shardd.lookup import (
    NOTHING_PENDING,
    Answer,
    Entry,
    digest_pages,
    layered,
    page,
    read_within,
    record_or_none,
)
from shardkv.shardd.parked import Parked, Resume
from shardkv.shardd.records import Record
from shardkv.shardd.store_env import StoreEnv, StoreStats
from shardkv.shardd.watermark import PurgeWatermark
from shardkv.shardd.write_ahead import WriteAhead

# Bytes of records one scan page or streamed batch holds at most (one record may overshoot).
DEFAULT_PAGE_BYTES = 8 << 20
# Records one transaction of a digest reads at most (StoreReads.digest).
DIGEST_PAGE = 1000
_DATA_DB = b"data"

T = TypeVar("T")


class StoreReads(StoreEnv):
    """The databases of one store and every read of them."""

    def _open_databases(self, max_targets: int) -> None:
        """Opens (creating) the store's databases once the environment is open."""
        with self._env.begin(write=True) as txn:
            self._data = self._env.open_db(_DATA_DB, txn=txn, create=True)
            self._meta = self._env.open_db(b"meta", txn=txn, create=True)  # shardd.identity
            self._parked = Parked(self._env, txn, max_targets)
            self._watermark = PurgeWatermark(self._env, txn)
        # Set by Store once the journal is replayed (None without sync: no journal).
        self._ahead: WriteAhead | None = None

    def flush(self) -> None:
        """Returns once LMDB holds every record written before the call (write_ahead)."""
        if self._ahead is not None:
            self._ahead.flush()

    def read(self, keys: Sequence[bytes], *, max_bytes: int = 0) -> list[Record | None]:
        """The stored record of each key (tombstones included); None where there is none.
        With max_bytes, only the prefix of keys whose entries fit (lookup.read_within)."""
        return self.read_entries(keys, record_or_none, max_bytes=max_bytes)

    def read_entries(
        self,
        keys: Sequence[bytes],
        entry: Entry[T],
        *,
        max_bytes: int = 0,
        answer: Answer[T] | None = None,
    ) -> list[T]:
        """As read, with each key's entry built by entry from its LMDB value; answer: the
        answer these keys continue, read in slices (lookup.read_within)."""
        with self._gate.shared():
            return self._read(keys, entry, max_bytes, answer)

    def read_entries_now(
        self,
        keys: Sequence[bytes],
        entry: Entry[T],
        *,
        max_bytes: int = 0,
        answer: Answer[T] | None = None,
    ) -> list[T] | None:
        """read_entries, or None without reading when that would wait (the map is about to
        grow or the store to close): for a caller that must not block, an event loop."""
        with self._gate.try_shared() as held:
            return self._read(keys, entry, max_bytes, answer) if held else None

    def _read(
        self, keys: Sequence[bytes], entry: Entry[T], max_bytes: int, answer: Answer[T] | None
    ) -> list[T]:
        pending = self._ahead.pending if self._ahead is not None else NOTHING_PENDING
        with self._env.begin(buffers=True) as txn:
            get = layered(txn, self._data, pending)
            return read_within(
                get, keys, entry, max_key=self._max_key, max_bytes=max_bytes, answer=answer
            )

    def scan(
        self, start: bytes, end: bytes, limit: int, *, max_bytes: int = DEFAULT_PAGE_BYTES
    ) -> tuple[list[Record], bytes]:
        """Up to limit records of [start, end) (end b"" = open) in key order, tombstones
        included, stopping early once max_bytes are collected. Returns the records and the
        key the next page starts at, b"" when the range is exhausted."""
        if limit < 1:
            raise ValueError(f"scan limit must be positive, got {limit}")
        self.flush()
        return self._page(start, end, limit, max_bytes)

    def _page(
        self, start: bytes, end: bytes, limit: int, max_bytes: int
    ) -> tuple[list[Record], bytes]:
        """One page of scan, in its own transaction, the journal left alone."""
        with self._gate.shared(), self._env.begin() as txn:
            return page(txn, self._data, start, end, limit, max_bytes, max_key=self._max_key)

    def iter_range(
        self, start: bytes, end: bytes, batch_size: int, *, max_bytes: int = DEFAULT_PAGE_BYTES
    ) -> Iterator[list[Record]]:
        """Every record of [start, end) in batches; each batch is read in its own short
        transaction, so no transaction stays open while the consumer holds a batch. The
        journal is flushed once, before the first: what is written during the walk is
        read or not, as if it had come a moment earlier or later."""
        self.flush()
        while True:
            batch, start = self._page(start, end, batch_size, max_bytes)
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
        return digest_pages(self.iter_range(start, end, DIGEST_PAGE))

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
        self.flush()  # once, as iter_range
        start: Resume | None = (b"", b"")
        while start is not None:
            with self._gate.shared():
                handles = self._parked.handles()
                with self._env.begin() as txn:
                    batch, start = handles.page(
                        txn, self._data, target, batch_size, max_bytes, start=start
                    )
            if batch:
                yield batch

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
