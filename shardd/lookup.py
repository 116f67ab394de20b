"""Reading records: of many keys within a byte budget, each key once; of a key range in order.

An answer holds one entry per key asked for, in order; a caller that names one large key
a thousand times must not make the node copy its value a thousand times, nor read values
past what one answer can carry. So a value's size is checked before it is copied (with
``buffers=True`` LMDB hands out a view of its page, and the length of the view costs
nothing), reading stops before the first entry that would take the answer past the
budget, and a key named again reuses the entry built the first time.

What an entry is the caller decides (``Entry``): a Record for the node's own API, or the
Replica API's wire message built straight from the LMDB value (shardkv.shardd.convert),
so a replica read makes no Record it would only convert.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import lmdb
from shardkv.common.limits import after
from shardkv.shardd.records import HEADER, RECORD_BYTES, Record, decode, digest_bytes

T = TypeVar("T")
# Builds the entry of a key from its LMDB value (None: no record); it must copy what it
# keeps out of the value, a view valid only inside the transaction.
Entry = Callable[[bytes, bytes | memoryview | None], T]
# The stored value of a key (None: no record).
Get = Callable[[bytes], bytes | memoryview | None]
# Records journaled and not yet in LMDB: (active, frozen), key -> LMDB value.
Pending = tuple[dict[bytes, bytes], dict[bytes, bytes]]
NOTHING_PENDING: Pending = ({}, {})


def record_or_none(key: bytes, raw: bytes | memoryview | None) -> Record | None:
    """The entry of Store.read: the stored record, None where there is none."""
    return None if raw is None else decode(key, raw)


def layered(txn: lmdb.Transaction, db: lmdb._Database, pending: Pending) -> Get:
    """The value lookup of a read: the journal's records (shardkv.shardd.write_ahead), newest
    first, before LMDB's. pending must be taken before txn began (write_ahead says why)."""
    active, frozen = pending
    lmdb_get = txn.get
    if not (active or frozen):
        return lambda key: lmdb_get(key, db=db)
    return lambda key: active.get(key) or frozen.get(key) or lmdb_get(key, db=db)


@dataclass(slots=True)
class Answer(Generic[T]):
    """An answer read so far, when it is read in slices, each in its own transaction
    (NodeStorage.read_entries): the bytes its entries take, and the entry of each key read,
    which a key named again reuses, so one answer holds one record per key."""

    size: int = 0
    seen: dict[bytes, tuple[T, int]] = field(default_factory=dict)


def read_within(
    get: Get,
    keys: Sequence[bytes],
    entry: Entry[T],
    *,
    max_key: int,
    max_bytes: int,
    answer: Answer[T] | None = None,
) -> list[T]:
    """The entry of each key, built by entry from its stored value (get: layered, in a
    transaction opened with buffers=True). With max_bytes > 0, stops before the first
    entry that would take the answer past it, found or not (the first entry of an answer
    is always read): the list is then a prefix of keys. answer: what earlier slices of the
    same answer read, updated here. Entries of a key named more than once share one
    object."""
    answer = Answer() if answer is None else answer
    out: list[T] = []
    seen = answer.seen
    size = answer.size
    for key in keys:
        known = seen.get(key)
        if known is not None:
            item, entry_bytes = known
        else:
            # LMDB rejects empty and oversized keys; no such key can be stored.
            raw = get(key) if 0 < len(key) <= max_key else None
            value_bytes = 0 if raw is None else max(0, len(raw) - HEADER.size)
            entry_bytes = len(key) + value_bytes + RECORD_BYTES
            if max_bytes and size and size + entry_bytes > max_bytes:
                break
            # entry copies the value out of the page: the only copy made.
            item = entry(key, raw)
            seen[key] = (item, entry_bytes)
        if max_bytes and size and size + entry_bytes > max_bytes:
            break
        size += entry_bytes
        out.append(item)
    answer.size = size
    return out


def digest_pages(pages: Iterable[list[Record]]) -> tuple[bytes, int]:
    """SHA-256 over every record of pages, in order (records.digest_bytes), and how many."""
    hasher = hashlib.sha256()
    count = 0
    for batch in pages:
        for record in batch:
            hasher.update(digest_bytes(record))
        count += len(batch)
    return hasher.digest(), count


def page(
    txn: lmdb.Transaction,
    db: lmdb._Database,
    start: bytes,
    end: bytes,
    limit: int,
    max_bytes: int,
    *,
    max_key: int,
) -> tuple[list[Record], bytes]:
    """Up to limit records of [start, end) in key order, stopping once max_bytes are
    collected; and the key the next page starts at (b"": the range is exhausted)."""
    records: list[Record] = []
    size = 0
    with txn.cursor(db) as cursor:
        for key, raw in walk(cursor, start, end, max_key=max_key):
            if len(records) >= limit or size >= max_bytes:
                return records, after(records[-1].key)
            record = decode(key, raw)
            records.append(record)
            size += record.size()
    return records, b""


def walk(
    cursor: lmdb.Cursor, start: bytes, end: bytes, *, max_key: int
) -> Iterator[tuple[bytes, bytes]]:
    """(key, value) of [start, end) in key order. A start longer than LMDB's key limit
    (a resume point after a maximal key) is sought by its prefix, then skipped past."""
    seek = start[:max_key]
    positioned = cursor.set_range(seek) if seek else cursor.first()
    while positioned:
        key = bytes(cursor.key())  # already bytes (buffers=False): narrows the type only
        if end and key >= end:
            return
        if key >= start:
            yield key, bytes(cursor.value())
        positioned = cursor.next()
