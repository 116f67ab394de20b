"""Reading the records of many keys within a byte budget, each key once.

An answer holds one entry per key asked for, in order; a caller that names one large key
a thousand times must not make the node copy its value a thousand times, nor read values
past what one answer can carry. So a value's size is checked before it is copied (with
``buffers=True`` LMDB hands out a view of its page, and the length of the view costs
nothing), reading stops before the first entry that would take the answer past the
budget, and a key named again reuses the Record read the first time.
"""

from __future__ import annotations

from collections.abc import Sequence

import lmdb
from shardkv.shardd.records import HEADER, Record, decode

# Bytes an answered entry takes beside its key and value bytes (as Record.size()).
ENTRY_BYTES = 32


def read_within(
    txn: lmdb.Transaction,
    db: lmdb._Database,
    keys: Sequence[bytes],
    *,
    max_key: int,
    max_bytes: int,
) -> list[Record | None]:
    """The stored record of each key (None where there is none) in a transaction opened
    with buffers=True. With max_bytes > 0, stops before the first entry that would take
    the answer past it, found or not (the first entry is always read): the list is then a
    prefix of keys. Entries of a key named more than once share one Record."""
    out: list[Record | None] = []
    seen: dict[bytes, Record | None] = {}
    size = 0
    for key in keys:
        if key in seen:
            record = seen[key]
            entry = len(key) + (len(record.value) if record else 0) + ENTRY_BYTES
        else:
            # LMDB rejects empty and oversized keys; no such key can be stored.
            raw = txn.get(key, db=db) if 0 < len(key) <= max_key else None
            value_bytes = 0 if raw is None else max(0, len(raw) - HEADER.size)
            entry = len(key) + value_bytes + ENTRY_BYTES
            if max_bytes and out and size + entry > max_bytes:
                return out
            # decode copies the value out of the page: the only copy made.
            record = None if raw is None else decode(key, raw)
            seen[key] = record
        if max_bytes and out and size + entry > max_bytes:
            return out
        size += entry
        out.append(record)
    return out
