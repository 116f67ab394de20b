"""What a node keeps for other nodes that missed a write: hints and owner-held markers.

Two kinds, one named LMDB database per kind and target (a target's id and a key together
could exceed LMDB's 511-byte key limit in one database):

- ``hints:<target>``: a full record parked here by a fallback node, which is not an owner of
  the key (sloppy quorum). Value: the record, encoded as in the data database.
- ``marks:<target>``: a (key, target) marker kept by a node that owns the key itself, for
  an owner that did not acknowledge the record (in a 3-node N=3 cluster no other node
  exists to park a hint on). Value: the (version, writer) of the record it was kept for;
  the record itself is the node's own, in the data database, written in the same
  transaction. Hand-off sends the node's current record of the key, which is that one or
  newer.

Both are handed back the same way (``page``), removed once the target holds what they
stood for (``delete``), and counted together (``summary``): anti-entropy purges no
tombstone of a range while any of them waits for one of its replicas. Every function
runs inside a transaction its caller (``store.Store``) opened.

Reads use ``Handles``, a copy of the handles taken before their transaction begins. The
commit thread adopts the handle of a database it created once that commit is done, and a
read transaction that began before the commit cannot use it: LMDB answers EINVAL
(``mdb_stat``, ``mdb_cursor_open``: Invalid argument). Every handle in a copy taken before
begin() names a database committed before the transaction began. Write transactions use
the live maps: one runs at a time, and a handle is adopted only after its commit.

A target's databases are dropped once nothing is left in them, when a write would
otherwise name one target too many (``drop_empty``), so the bound counts nodes that
still wait for something rather than every node hints were ever parked for. A dropped
handle is invalid everywhere, so the drop runs with the store held alone, and readers
take their copy while they hold the store's gate, before begin().
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import lmdb
from shardkv.common.limits import LimitExceeded
from shardkv.shardd.records import STAMP, Hint, Record, Stamp, decode, stamp_of

_Db = lmdb._Database
HINT_PREFIX = b"hints:"
MARK_PREFIX = b"marks:"
# The longest target id a hints or marks database name holds.
MAX_TARGET_BYTES = 255

# Stores a record in a database unless what it holds wins; returns whether it stored it.
PutIfNewer = Callable[[lmdb.Transaction, _Db, Record], bool]
# Where a page of hints starts: in the hints, then in the markers (None: that walk is done).
Resume = tuple[bytes | None, bytes | None]


def check_target(target: str) -> None:
    """Raises LimitExceeded unless target can name a hint database."""
    if not target:
        raise LimitExceeded("hint target must not be empty")
    if len(target.encode()) > MAX_TARGET_BYTES:
        raise LimitExceeded(
            f"hint target {target[:64]!r} exceeds the limit of {MAX_TARGET_BYTES} bytes"
        )


@dataclass(frozen=True, slots=True)
class Marker:
    """Keep handing this node's record of key to target until target holds one at least
    as new as stamp (the (version, writer) of the record the marker was written with)."""

    key: bytes
    target: str
    stamp: Stamp


@dataclass(slots=True)
class Opened:
    """Databases a write transaction created: valid for others only once it committed."""

    hints: dict[str, _Db] = field(default_factory=dict)
    marks: dict[str, _Db] = field(default_factory=dict)


class TooManyTargets(Exception):
    """A write would keep hints or markers for more distinct nodes than the store allows."""


class Parked:
    """The handles of every hints:<target> and marks:<target> database of one store, and
    the bound on how many targets they may name."""

    def __init__(self, env: lmdb.Environment, txn: lmdb.Transaction, max_targets: int) -> None:
        """Opens the databases that exist (txn: a write transaction on the main database)."""
        self._env = env
        self._max_targets = max_targets
        self._hints: dict[str, _Db] = {}
        self._marks: dict[str, _Db] = {}
        names = [bytes(key) for key, _ in txn.cursor()]
        for name in names:
            if not name.startswith((HINT_PREFIX, MARK_PREFIX)):
                continue
            kind = self._hints if name.startswith(HINT_PREFIX) else self._marks
            kind[name.split(b":", 1)[1].decode()] = env.open_db(name, txn=txn, create=False)
        self._targets = self.targets()

    def targets(self) -> set[str]:
        """Every node a hints or marks database exists for."""
        return set(self._hints) | set(self._marks)

    def check_targets(self, targets: Iterable[str]) -> None:
        """Raises TooManyTargets when keeping hints or markers for targets would make the
        store hold databases for more than max_targets distinct nodes. Reads no LMDB page."""
        new = set(targets) - self._targets
        if new and len(self._targets) + len(new) > self._max_targets:
            raise TooManyTargets(
                f"hint targets: this node keeps hints or markers for {len(self._targets)}"
                f" nodes; {len(new)} more ({', '.join(sorted(new)[:3])[:200]}) would exceed"
                f" its limit of {self._max_targets} distinct targets"
            )

    def drop_empty(self, txn: lmdb.Transaction) -> list[str]:
        """Drops the databases of targets with nothing left (every hint handed over), so
        the bound counts nodes that still wait for something, not every node hints were
        ever parked for. The caller must hold the store alone (no transaction may hold
        a dropped handle: Gate.exclusive); returns the targets that no longer count."""
        for kind in (self._hints, self._marks):
            for target, db in list(kind.items()):
                if not txn.stat(db)["entries"]:
                    txn.drop(db, delete=True)
                    del kind[target]
        gone = sorted(self._targets - self.targets())
        self._targets = self.targets()
        return gone

    def handles(self) -> Handles:
        """The handles adopted so far, for a read transaction that begins after this call
        (module docstring)."""
        return Handles(dict(self._hints), dict(self._marks))

    def adopt(self, opened: Opened) -> None:
        """Makes databases created by a committed transaction visible to later calls."""
        self._hints.update(opened.hints)
        self._marks.update(opened.marks)
        self._targets.update(opened.hints, opened.marks)

    # -- writes ---------------------------------------------------------------------------

    def park(
        self, txn: lmdb.Transaction, hints: Sequence[Hint], opened: Opened, put: PutIfNewer
    ) -> None:
        """Parks each hint that is newer than the one parked for its target and key (put:
        the store's own last-write-wins put)."""
        for hint in hints:
            db = self._db_for_write(txn, HINT_PREFIX, hint.target, self._hints, opened.hints)
            put(txn, db, hint.record)

    def mark(self, txn: lmdb.Transaction, markers: Sequence[Marker], opened: Opened) -> None:
        """Keeps each marker, or raises the stamp of the one already kept for key and target."""
        for marker in markers:
            db = self._db_for_write(txn, MARK_PREFIX, marker.target, self._marks, opened.marks)
            raw = txn.get(marker.key, db=db)
            if raw is None or marker.stamp > stamp_of(raw):
                txn.put(marker.key, STAMP.pack(*marker.stamp), db=db)

    def delete(self, txn: lmdb.Transaction, target: str, records: Sequence[Record]) -> int:
        """Removes target's hints and markers of the records' keys whose (version, writer) is
        not above the record's: the target now holds that record, so it holds what they
        stood for. One parked or marked for a newer write meanwhile survives. Returns how
        many were removed."""
        deleted = 0
        # A hint's value starts with its record's (version, writer), a marker's is nothing
        # else: stamp_of reads both.
        for db in (self._hints.get(target), self._marks.get(target)):
            if db is None:
                continue
            for record in records:
                raw = txn.get(record.key, db=db)
                if raw is not None and stamp_of(raw) <= record.stamp:
                    txn.delete(record.key, db=db)
                    deleted += 1
        return deleted

    def _db_for_write(
        self,
        txn: lmdb.Transaction,
        prefix: bytes,
        target: str,
        known: dict[str, _Db],
        opened: dict[str, _Db],
    ) -> _Db:
        db = known.get(target) or opened.get(target)
        if db is None:
            db = opened[target] = self._env.open_db(prefix + target.encode(), txn=txn, create=True)
        return db

    def marked(self, txn: lmdb.Transaction, key: bytes) -> bool:
        """Whether some target still waits for this node's record of key."""
        return any(txn.get(key, db=db) is not None for db in list(self._marks.values()))

    def unmark(self, txn: lmdb.Transaction, key: bytes) -> None:
        """Drops every marker of key (the node no longer holds a record of it)."""
        for db in list(self._marks.values()):
            txn.delete(key, db=db)


@dataclass(frozen=True, slots=True)
class Handles:
    """The hints and marks databases as of one moment, for reads (module docstring)."""

    hints: dict[str, _Db]
    marks: dict[str, _Db]

    def summary(self, txn: lmdb.Transaction) -> dict[str, int]:
        """Hints plus markers waiting per target (targets with none left out)."""
        counts: dict[str, int] = {}
        for kind in (self.hints, self.marks):
            for target, db in kind.items():
                entries = int(txn.stat(db)["entries"])
                if entries:
                    counts[target] = counts.get(target, 0) + entries
        return counts

    def count(self, txn: lmdb.Transaction) -> int:
        return sum(self.summary(txn).values())

    def page(
        self,
        txn: lmdb.Transaction,
        data: _Db,
        target: str,
        limit: int,
        max_bytes: int,
        *,
        start: Resume = (b"", b""),
    ) -> tuple[list[Record], Resume | None]:
        """Up to limit records for target (about max_bytes): its parked hints in key order,
        then, for each marker, this node's current record of the key. start is where the
        page begins in the hints and in the markers (None: that walk is done); returns the
        records and where the next page starts (None when both walks are exhausted)."""
        records: list[Record] = []
        size = 0
        walks = (
            (self.hints.get(target), start[0], False),
            (self.marks.get(target), start[1], True),
        )
        for index, (db, begin, resolve) in enumerate(walks):
            if db is None or begin is None:
                continue
            for key, raw in _walk(txn, db, begin):
                if len(records) >= limit or size >= max_bytes:
                    return records, ((key, start[1]) if index == 0 else (None, key))
                record = _current(txn, data, key) if resolve else decode(key, raw)
                if record is not None:  # a marked key always has a record (see Store.purge)
                    records.append(record)
                    size += record.size()
        return records, None


def _current(txn: lmdb.Transaction, data: _Db, key: bytes) -> Record | None:
    raw = txn.get(key, db=data)
    return None if raw is None else decode(key, raw)


def _walk(txn: lmdb.Transaction, db: _Db, start: bytes) -> Iterator[tuple[bytes, bytes]]:
    with txn.cursor(db) as cursor:
        positioned = cursor.set_range(start) if start else cursor.first()
        while positioned:
            yield bytes(cursor.key()), bytes(cursor.value())
            positioned = cursor.next()
