"""Last-writer-wins puts: a record is stored only where it beats what its key holds.

Every replica of every write passes through ``put_records``, so its loop spells the common
case out (one get, one comparison, one put) instead of reaching it through a call or two
per record; a Restored record goes through the purge watermark (shardkv.shardd.watermark).
"""

from __future__ import annotations

from collections.abc import Sequence

import lmdb
from shardkv.shardd.lookup import Get
from shardkv.shardd.records import HEADER, STAMP, TOMBSTONE, Record, Restored, encode
from shardkv.shardd.watermark import PurgeWatermark

_Db = lmdb._Database


def put_if_newer(txn: lmdb.Transaction, db: _Db, record: Record) -> bool:
    """Stores record in db unless what its key holds wins (Record.beats); returns whether
    it stored it."""
    raw = txn.get(record.key, db=db)
    if not record.beats(raw):
        return False
    txn.put(record.key, encode(record), db=db)
    return True


def put_records(
    txn: lmdb.Transaction, db: _Db, records: Sequence[Record], watermark: PurgeWatermark
) -> list[bool | None]:
    """put_if_newer of each record into db, in order; a Restored record as the watermark
    allows (None: refused as possibly deleted). Returns what each put did."""
    get = txn.get
    put = txn.put
    applied: list[bool | None] = []
    for record in records:
        if type(record) is Restored:
            applied.append(watermark.put(txn, db, record, put_if_newer))
            continue
        key = record.key
        raw = get(key, db=db)
        if raw is None or record.beats(raw):
            put(key, encode(record), db=db)
            applied.append(True)
        else:
            applied.append(False)
    return applied


def winners_of(records: Sequence[Record], get: Get) -> tuple[dict[bytes, bytes], list[bool], int]:
    """put_records for the journal (shardkv.shardd.write_ahead), deciding without writing:
    the LMDB value of each key whose record beats what it holds (get: lookup.layered), the
    last winner of a key named twice; what each put did; and how many winners are keys
    held nowhere before. Record.beats and encode are spelled out for the common case (a
    record unpacked once, the stored stamp compared as a tuple): every replica of every
    journaled write passes here (0.51 -> 0.41 µs a record)."""
    winners: dict[bytes, bytes] = {}
    applied: list[bool] = []
    new_keys = 0
    stamp_of = STAMP.unpack_from
    pack = HEADER.pack
    for record in records:
        key, value, version, writer, tombstone = record
        raw = winners.get(key) or get(key)
        if raw is None:
            new_keys += 1
        else:
            held = stamp_of(raw)
            if held > (version, writer) or (held == (version, writer) and not record.beats(raw)):
                applied.append(False)
                continue
        winners[key] = (
            pack(version, writer, TOMBSTONE) if tombstone else pack(version, writer, 0) + value
        )
        applied.append(True)
    return winners, applied, new_keys
