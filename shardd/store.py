"""The node's LMDB store: versioned records with last-write-wins, hints, markers, digests.

One LMDB environment per node. User records live in the named database "data"; what the
node keeps for other nodes that missed a write (hints parked as a fallback, markers kept
as an owner) lives in per-target databases described in shardkv.shardd.parked. Every
method is synchronous and opens and closes its own transaction, so callers run it on a
worker thread, or on an event loop for reads of keys from memory (shardkv.shardd.node,
shardkv.shardd.read_place); a commit never runs on an event loop.

The map grows (doubling) when a commit finds it full, up to max_map_size; beyond that a
write raises StoreFull while reads keep working. Durable (unless sync=False): a write's
records are journaled and reach LMDB in a later, larger commit (shardkv.shardd.write_ahead),
its hints and markers in an fsync'd LMDB commit; a restore, purge or hint delete is an
fsync'd LMDB commit after the journal's records; the data directory's entries are fsync'd
once created (shardkv.shardd.durable_dir). Reads are in shardkv.shardd.store_reads.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import lmdb
from shardkv.shardd.gate import StoreClosed
from shardkv.shardd.journal import clear_files, replay
from shardkv.shardd.lookup import layered
from shardkv.shardd.lww import put_if_newer, put_records, winners_of
from shardkv.shardd.parked import Marker, Opened, TooManyTargets, check_target
from shardkv.shardd.records import Hint, Record, Restored, decode, stamp_of
from shardkv.shardd.store_env import (
    DEFAULT_MAP_SIZE,
    DEFAULT_MAX_MAP_SIZE,
    StoreFull,
    StoreOpenError,
    StoreStats,
)
from shardkv.shardd.store_reads import StoreReads
from shardkv.shardd.write_ahead import WriteAhead

log = logging.getLogger(__name__)

# Distinct nodes one store keeps hints or markers for (two LMDB databases each at most).
MAX_TARGETS = 64

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


class Store(StoreReads):
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
        self._open_databases(max_targets)
        self._replay()
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
        newer than the parked one and keeps each marker of a key it holds, durably before
        it returns. Returns, per record, whether it was stored; None for a Restored record
        refused as possibly deleted (shardkv.shardd.watermark). From one thread at a time
        (the node's commit thread): the journal's winners are decided before its append."""
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
        targets = {h.target for h in hints} | {m.target for m in markers}
        if self._ahead is not None and all(type(r) is not Restored for r in records):
            applied = self._journaled(self._ahead, records, targets, hints, markers)
            if applied is not None:
                return applied
        self.flush()  # LMDB alone decides: a Restored record by its purge watermark

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

    def _checkpoint(self, entries: dict[bytes, bytes]) -> None:
        """Commits journaled records into LMDB, durably. Plain puts: each beat what LMDB
        held when it was journaled, and LMDB changes only through this thread or after a
        flush (every other writer flushes first)."""

        def body(txn: lmdb.Transaction, opened: Opened) -> None:
            put, data = txn.put, self._data
            for key in sorted(entries):
                put(key, entries[key], db=data)

        self._write(body, acknowledged=True)

    def _journaled(
        self,
        ahead: WriteAhead,
        records: Sequence[Record],
        targets: set[str],
        hints: Sequence[Hint],
        markers: Sequence[Marker],
    ) -> list[bool | None] | None:
        """apply() with the records journaled (write_ahead); None, having done nothing,
        when the map is too close to its maximum (store_env.JOURNAL_HEADROOM). Hints and
        markers are committed first, so one too many targets fails before anything is
        journaled; a marker is kept for a key held already or won by these records."""
        pending = ahead.pending  # before the transaction begins: lookup.layered
        with self._gate.shared():
            if self._short_of_room():
                return None
            with self._env.begin() as txn:
                winners, applied, new_keys = winners_of(records, layered(txn, self._data, pending))

        def keep(txn: lmdb.Transaction, opened: Opened) -> None:
            self._parked.check_targets(targets)  # under the write lock: exact
            self._parked.park(txn, hints, opened, put_if_newer)
            held = layered(txn, self._data, pending)
            kept = [m for m in markers if m.key in winners or held(m.key)]
            self._parked.mark(txn, kept, opened)

        if hints or markers:
            self._write(keep)
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
        if self._journal is None:
            clear_files(self.path)
        else:
            self._journal.clear_all()

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

    # -- meta ----------------------------------------------------------------------------

    def meta(self, key: bytes, value: bytes | None = None) -> bytes | None:
        """The "meta" database's entry of key (None: absent); with value, stores it first."""
        if value is not None:
            self._write(lambda txn, _: txn.put(key, value, db=self._meta))
        with self._gate.shared(), self._env.begin() as txn:
            return txn.get(key, db=self._meta)

    # -- lifecycle ------------------------------------------------------------------------

    def close(self) -> None:
        """Commits the journal's records, waits for open transactions, then closes the
        environment (idempotent)."""
        try:
            if self._ahead is not None:
                self._ahead.close()  # raises if its last checkpoint failed (replayed later)
        finally:
            try:
                with self._gate.exclusive():
                    self._gate.close()
                    self._env.close()
            except StoreClosed:
                pass
