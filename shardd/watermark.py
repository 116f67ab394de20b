"""The purge watermark: how far tombstone GC has reached on this node, and what a restore may
write back under it.

Tombstone GC (PurgeTokenRanges with tombstones_before) removes tombstones older than a
bound; once one is gone, nothing on the node tells that its key was deleted. So every purge
raises a watermark, kept in the store's "meta" database in the purge's own transaction: the
highest bound the node has purged under. A restored record (records.Restored) is then
stored only where the node holds an older record of its key, or holds none and the record
is at or above the watermark. A record below it whose key is absent may be one deleted
after the backup whose tombstone is gone: it is refused, and the caller reports it. Only
restores are judged so: repair, hint hand-off and read repair copy what replicas hold,
however old.
"""

from __future__ import annotations

import struct

import lmdb
from shardkv.shardd.parked import PutIfNewer
from shardkv.shardd.records import Record, Restored

_Db = lmdb._Database
_META_DB = b"meta"
_KEY = b"purge_watermark"
_VERSION = struct.Struct(">Q")


class PurgeWatermark:
    """The watermark of one store, in its "meta" database."""

    def __init__(self, env: lmdb.Environment, txn: lmdb.Transaction) -> None:
        """Opens (or creates) the database; txn: a write transaction."""
        self._db = env.open_db(_META_DB, txn=txn, create=True)

    def get(self, txn: lmdb.Transaction) -> int:
        """The highest tombstones_before purged under; 0 when the node never purged."""
        raw = txn.get(_KEY, db=self._db)
        return 0 if raw is None else int(_VERSION.unpack(raw)[0])

    def raise_to(self, txn: lmdb.Transaction, before: int) -> None:
        """Raises the watermark to before (a purge in txn removes tombstones below it)."""
        if before > self.get(txn):
            txn.put(_KEY, _VERSION.pack(before), db=self._db)

    def put(self, txn: lmdb.Transaction, data: _Db, record: Record, put: PutIfNewer) -> bool | None:
        """Stores record as put does (last write wins), unless it is Restored, its key is
        absent and its version is below the watermark: then None (possibly deleted)."""
        if (
            type(record) is Restored
            and txn.get(record.key, db=data) is None
            and record.version < self.get(txn)
        ):
            return None
        return put(txn, data, record)
