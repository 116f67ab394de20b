"""Work on the token ranges of one node's store: digests, streams and purges by ring arc.

The ring places keys by token (shardkv.common.ring_tokens), while LMDB keeps them in key order, so
the keys of one arc are scattered through the store. Each operation here is therefore one
walk over the whole store in pages, keeping the records whose token falls in the requested
ranges: reading costs a few microseconds per stored record, and only what matches is
hashed, sent or deleted. (Cassandra avoids the walk by storing data in token order; this
store keeps key order for Scan.) Every page is read and processed on a worker thread in its
own short read transaction, never on the event loop, and a walk can be paced to a number of
records per second so that repair does not starve foreground traffic.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

from shardkv.common.limits import LimitExceeded
from shardkv.common.ring_tokens import TokenRanges, ring_token
from shardkv.shardd.node import NodeStorage
from shardkv.shardd.records import Record, digest_bytes

T = TypeVar("T")

# Records read per page of a walk (one short LMDB read transaction each).
WALK_PAGE = 1000


@dataclass(frozen=True, slots=True)
class RangeDigest:
    """The digest (b"" when only counted), record count and key+value bytes of one range."""

    digest: bytes
    count: int
    size: int


@dataclass(slots=True)
class _Tally:
    """Running digests of the requested ranges during one walk."""

    ranges: TokenRanges
    hashing: bool
    counts: list[int] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    hashers: dict[int, hashlib._Hash] = field(default_factory=dict)

    def add(self, records: list[Record]) -> None:
        for record in records:
            index = self.ranges.find(ring_token(record.key))
            if index < 0:
                continue
            self.counts[index] += 1
            self.sizes[index] += len(record.key) + len(record.value)
            if self.hashing:
                hasher = self.hashers.get(index)
                if hasher is None:
                    hasher = self.hashers[index] = hashlib.sha256()
                hasher.update(digest_bytes(record))

    def result(self) -> list[RangeDigest]:
        empty = hashlib.sha256().digest() if self.hashing else b""
        return [
            RangeDigest(
                self.hashers[i].digest() if i in self.hashers else empty,
                self.counts[i],
                self.sizes[i],
            )
            for i in range(len(self.ranges))
        ]


def _next_page(
    pages: Iterator[list[Record]], step: Callable[[list[Record]], T]
) -> tuple[T, int] | None:
    """The next page of pages processed by step, and how many records it held; None after
    the last. Runs on a worker thread."""
    records = next(pages, None)
    return None if records is None else (step(records), len(records))


async def _walk(
    storage: NodeStorage, step: Callable[[list[Record]], T], *, pace: int
) -> AsyncIterator[T]:
    """step's result for every page of the store, at most pace records per second (0 =
    unpaced). Each page is read in its own transaction (Store.iter_range)."""
    loop = asyncio.get_running_loop()
    began = loop.time()
    pages = storage.store.iter_range(b"", b"", WALK_PAGE)
    seen = 0
    while True:
        page = await asyncio.to_thread(_next_page, pages, step)
        if page is None:
            return
        result, read = page
        yield result
        seen += read
        if pace:
            delay = began + seen / pace - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)


async def digest_ranges(
    storage: NodeStorage, ranges: TokenRanges, *, count_only: bool, pace: int
) -> list[RangeDigest]:
    """The digest (or only count and bytes) of every range, in one walk."""
    tally = _Tally(ranges, not count_only, [0] * len(ranges), [0] * len(ranges))
    async for _ in _walk(storage, tally.add, pace=pace):
        pass
    return tally.result()


async def stream_ranges(
    storage: NodeStorage,
    ranges: TokenRanges,
    *,
    batch_size: int,
    max_bytes: int,
    keys_only: bool,
    pace: int,
) -> AsyncIterator[list[Record]]:
    """The records of the ranges in batches of at most batch_size records (and about
    max_bytes), in key order; without values when keys_only."""

    def matching(records: list[Record]) -> list[Record]:
        picked = [r for r in records if ranges.find(ring_token(r.key)) >= 0]
        if keys_only:
            picked = [Record(r.key, b"", r.version, r.writer, r.tombstone) for r in picked]
        return picked

    batch: list[Record] = []
    size = 0
    async for picked in _walk(storage, matching, pace=pace):
        for record in picked:
            batch.append(record)
            size += record.size()
            if len(batch) >= batch_size or size >= max_bytes:
                yield batch
                batch, size = [], 0
    if batch:
        yield batch


async def purge_ranges(
    storage: NodeStorage,
    ranges: TokenRanges,
    *,
    tombstones_before: int,
    all_records: bool,
    epoch: int | None,
) -> int:
    """Removes the tombstones of the ranges older than tombstones_before, or every record
    of the ranges when all_records; returns how many were removed. Each page's picks are
    removed on the commit thread only where the stored record is still the one picked,
    and the purge watermark rises to tombstones_before with the first of them (with an
    empty commit when there are none: a node that purged nothing holds no older
    tombstone of the ranges either, so the bound holds for it too). No ranges only raises
    the watermark. Each commit runs only while the node's fence is exactly epoch
    (NodeStorage.purge)."""
    if not all_records and not tombstones_before:
        raise LimitExceeded("nothing to purge: set tombstones_before or all_records")

    def doomed(records: list[Record]) -> list[Record]:
        return [
            r
            for r in records
            if (all_records or (r.tombstone and r.version < tombstones_before))
            and ranges.find(ring_token(r.key)) >= 0
        ]

    if not ranges:  # a move or rebuild handing the node its peers' watermark
        await storage.purge([], tombstones_before, epoch=epoch)
        return 0
    purged = 0
    raised = False
    async for picked in _walk(storage, doomed, pace=0):
        if picked:
            purged += await storage.purge(picked, tombstones_before, epoch=epoch)
            raised = True
    if not raised and tombstones_before:
        await storage.purge([], tombstones_before, epoch=epoch)
    return purged
