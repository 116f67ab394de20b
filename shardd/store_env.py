"""The LMDB environment a Store works in: opening it in a data directory, its map and how
the map grows, the key size LMDB accepts, and the journal files beside it.

Kept apart from shardkv.shardd.store, which holds what the node stores (records, hints,
markers) on top of it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import lmdb
from shardkv.common.limits import LimitExceeded
from shardkv.shardd.durable_dir import make_directories, sync_entries
from shardkv.shardd.gate import Gate
from shardkv.shardd.journal import Journal
from shardkv.shardd.write_ahead import BACKLOG, MAX_BYTES, NO_JOURNAL, JournalStats

log = logging.getLogger(__name__)

DEFAULT_MAP_SIZE = 1 << 30
DEFAULT_MAX_MAP_SIZE = 64 << 30
# Room the map must have left to take a write through the journal: what the journal may
# hold (2 * BACKLOG times MAX_BYTES, active and frozen: write_ahead.py) with LMDB's page
# overhead, and more. With less, writes go to LMDB directly, so StoreFull refuses them
# before they are acknowledged.
JOURNAL_HEADROOM = 4 * (BACKLOG + 1) * MAX_BYTES


class StoreOpenError(OSError):
    """The data directory cannot hold a store (not writable, not a directory, damaged)."""


class StoreFull(Exception):
    """The map reached its configured maximum size: writes fail, reads keep working."""


@dataclass(frozen=True)
class StoreStats:
    """Cheap counters for admin and metrics."""

    entries: int
    # Hints parked for other nodes plus markers kept for other owners.
    hints: int
    map_size: int
    max_map_size: int
    used_bytes: int
    # The highest bound tombstone GC purged under (shardkv.shardd.watermark).
    purge_watermark: int
    journal: JournalStats = NO_JOURNAL


class StoreEnv:
    """One LMDB environment at path, opened for a Store; with sync, durable commits and
    the journal files (shardkv.shardd.journal) created beside data.mdb."""

    def __init__(
        self,
        path: str | Path,
        *,
        sync: bool,
        map_size: int,
        max_map_size: int,
        max_dbs: int,
        max_readers: int,
    ) -> None:
        if map_size > max_map_size:
            raise ValueError(f"map_size {map_size} exceeds max_map_size {max_map_size}")
        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            raise StoreOpenError(f"cannot open the store in {self.path}: not a directory")
        try:
            created = make_directories(self.path)
            self._env = lmdb.open(
                str(self.path),
                map_size=map_size,
                max_dbs=max_dbs,
                max_readers=max_readers,
                sync=sync,
                metasync=sync,
                subdir=True,
            )
            self._journal = Journal(self.path) if sync else None
            if sync:
                sync_entries(self.path, created)
        except (OSError, lmdb.Error) as exc:
            raise StoreOpenError(f"cannot open the store in {self.path}: {exc}") from exc
        stale = self._env.reader_check()
        if stale:
            log.warning("cleared stale reader slots path=%s count=%d", self.path, stale)
        self._gate = Gate()
        # An existing file may already be larger than map_size; LMDB then maps the file.
        self._map_size = int(self._env.info()["map_size"])
        self._max_map_size = max(max_map_size, self._map_size)
        self._page_size = int(self._env.stat()["psize"])
        self._max_key = int(self._env.max_key_size())
        self._said_short = False

    def _grow(self, seen: int, *, past_max: bool = False) -> None:
        """Doubles the map (up to the maximum) unless another writer grew it since seen.
        past_max: for records already acknowledged (the journal's), which the maximum
        must not turn away; it refuses new writes only."""
        with self._gate.exclusive():
            if self._map_size != seen:
                return
            if seen >= self._max_map_size and not past_max:
                raise StoreFull(
                    f"store at {self.path} is full: map size {seen} bytes reached the"
                    f" configured maximum of {self._max_map_size} bytes"
                )
            size = seen * 2 if past_max else min(self._max_map_size, seen * 2)
            self._env.set_mapsize(size)
            self._map_size = int(self._env.info()["map_size"])
        if self._map_size > self._max_map_size:
            log.warning(
                "map grown past its maximum for acknowledged records path=%s to=%d",
                self.path,
                self._map_size,
            )
        else:
            log.info("map grown path=%s from=%d to=%d", self.path, seen, self._map_size)

    def _short_of_room(self) -> bool:
        """Whether the map is too close to its maximum to take a write through the journal
        (under the gate: the map may be growing). Said once in the log, since every write
        then costs an LMDB commit."""
        left = self._max_map_size - (int(self._env.info()["last_pgno"]) + 1) * self._page_size
        if left >= JOURNAL_HEADROOM:
            return False
        if not self._said_short:
            self._said_short = True
            log.warning(
                "writes go to LMDB directly, not through the journal: path=%s has %d bytes"
                " left below its maximum map size of %d, under the %d the journal needs"
                " (raise --max-map-size)",
                self.path,
                left,
                self._max_map_size,
                JOURNAL_HEADROOM,
            )
        return True

    def _check_key(self, key: bytes) -> None:
        if not key or len(key) > self._max_key:
            raise LimitExceeded(
                f"key of {len(key)} bytes is outside 1..{self._max_key} bytes"
                f" (key starts {key[:32]!r})"
            )
