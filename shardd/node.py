"""The asynchronous face of one node's storage: reads on the loop or read threads, writes
through group commit, and versions for the node's own writes from its hybrid logical clock.

The gRPC services call only this; reads of keys run on the event loop's thread while the
store answers them from memory (shardkv.shardd.read_place), every other LMDB call on
worker threads; a commit never runs on the loop (shardkv.shardd.commit).
It also holds the node's fence (shardkv.shardd.fence), loaded with the store: writes and
purges are checked against it on the commit thread, where it also rises.
"""

from __future__ import annotations

import asyncio
import functools
import operator
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from shardkv.common.hlc import HybridClock, writer_number
from shardkv.shardd.commit import GroupCommitter
from shardkv.shardd.fence import Fence
from shardkv.shardd.lookup import Answer, Entry, record_or_none
from shardkv.shardd.read_place import ReadPlace, major_faults
from shardkv.shardd.records import Hint, Record
from shardkv.shardd.store import Marker, Store
from shardkv.shardd.store_reads import DEFAULT_PAGE_BYTES

T = TypeVar("T")
# A read runs on the event loop in slices of this many keys, each in its own transaction,
# the loop serving other calls between slices (read_place.py says why not on a thread).
READ_SLICE_KEYS = 128
_version = operator.attrgetter("version")


@dataclass(frozen=True)
class Write:
    """One write of the node's own KV API: store value under key, or delete the key."""

    key: bytes
    value: bytes = b""
    delete: bool = False


class NodeStorage:
    """Owns the store, its group committer and the read threads of one node."""

    def __init__(
        self,
        store: Store,
        *,
        node_id: str,
        clock: HybridClock | None = None,
        read_workers: int = 4,
        read_slice_keys: int = READ_SLICE_KEYS,
        commit_max_items: int = 4096,
        max_pending_writes: int = 65536,
        page_bytes: int = DEFAULT_PAGE_BYTES,
    ) -> None:
        self.store = store
        # Loaded before the node serves anything (one read of the store's meta database).
        self.fence = Fence(store, node_id)
        self.committer = GroupCommitter(
            store,
            max_items=commit_max_items,
            max_pending_items=max_pending_writes,
            fence=self.fence,
        )
        self.clock = clock or HybridClock()
        self.node_id = node_id
        self.writer = writer_number(node_id)
        self._page_bytes = page_bytes
        # For operators (Stats, metrics): when the node started and keys read since then.
        self.started = time.monotonic()
        self.keys_read = 0
        if read_slice_keys < 1:
            raise ValueError(f"read_slice_keys must be at least 1, got {read_slice_keys}")
        self._read_slice_keys = read_slice_keys
        self.read_place = ReadPlace()
        self._reads = ThreadPoolExecutor(max_workers=read_workers, thread_name_prefix="shardd-read")

    async def _in_thread(self, fn: Callable[..., T], *args: object) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._reads, functools.partial(fn, *args))

    # -- writes ---------------------------------------------------------------------------

    async def apply(
        self,
        records: Sequence[Record],
        hints: Sequence[Hint] = (),
        markers: Sequence[Marker] = (),
        *,
        epoch: int | None = None,
    ) -> list[bool | None]:
        """Replica writes: stores records newer than the stored ones, parks hints and keeps
        markers for other owners of the records, in one commit. Per record: whether it was
        stored, None for a restored one refused as possibly deleted (Store.apply). epoch:
        the topology epoch the call was routed under, checked against the fence in the
        commit (StaleEpoch).

        The clock observes every incoming version first, so a later write through this
        node's own API orders after what routers wrote here. A version further ahead of
        this node's wall clock than the max clock offset refuses the whole call
        (VersionAhead, INVALID_ARGUMENT) before anything is stored. Only the newest
        version of the records is checked and observed: if it is within the offset, so is
        every other, and the clock moves past it as past all of them."""
        newest = max(records, key=_version) if records else None
        if newest is not None:
            self.clock.check(newest.version, f"record of key {newest.key[:64]!r}")
        for hint in hints:
            self.clock.check(hint.record.version, f"hint of key {hint.record.key[:64]!r}")
        if newest is not None:
            self.clock.observe(newest.version)
        return await self.committer.apply(records, hints, markers, epoch=epoch)

    async def write(self, writes: Sequence[Write]) -> list[Record]:
        """The node's own writes, versioned by its clock; returns the records written.

        A write can lose to a stored record this clock never saw (written before a restart
        by a router whose clock runs ahead); the clock then moves past it and the write is
        retried once. Losing again means a newer write arrived meanwhile and follows ours."""
        records = [self._versioned(w) for w in writes]
        applied = await self.committer.apply(records)
        lost = [i for i, ok in enumerate(applied) if not ok]
        if lost:
            for stored in await self.read([records[i].key for i in lost]):
                if stored is not None:
                    self.clock.observe(stored.version)
            retry = [records[i]._replace(version=self.clock.now()) for i in lost]
            await self.committer.apply(retry)
            for i, record in zip(lost, retry, strict=True):
                records[i] = record
        return records

    def _versioned(self, write: Write) -> Record:
        value = b"" if write.delete else write.value
        return Record(write.key, value, self.clock.now(), self.writer, write.delete)

    async def delete_hints(
        self, target: str, records: Sequence[Record], *, epoch: int | None = None
    ) -> int:
        """Removes handed-back hints and markers (on the commit thread, like every other
        write, after the fence admitted epoch)."""

        def delete() -> int:
            self.fence.admit(epoch, f"deleting hints for {target}")
            return self.store.delete_hints(target, records)

        return await self.committer.run(delete)

    async def purge(self, records: Sequence[Record], watermark: int, *, epoch: int | None) -> int:
        """Store.purge on the commit thread, only while the fence is exactly epoch
        (Fence.admit_purge), checked in the same step as the purge."""

        def purge() -> int:
            self.fence.admit_purge(epoch)
            return self.store.purge(records, watermark)

        return await self.committer.run(purge)

    async def raise_fence(self, epoch: int) -> int:
        """Raises the fence to epoch durably (Fence.raise_to) on the commit thread, between
        commits; returns the fence."""
        return await self.committer.run(self.fence.raise_to, epoch)

    # -- reads ----------------------------------------------------------------------------

    async def read(self, keys: Sequence[bytes], *, max_bytes: int = 0) -> list[Record | None]:
        """The record of each key; with max_bytes, of the prefix of keys that fits it
        (Store.read)."""
        return await self.read_entries(keys, record_or_none, max_bytes=max_bytes)

    async def read_entries(
        self, keys: Sequence[bytes], entry: Entry[T], *, max_bytes: int = 0
    ) -> list[T]:
        """As read, with each key's entry built by entry (Store.read_entries): in slices on
        the event loop (of read_slice_keys, smaller while read_place probes), yielding to
        it between slices; the rest on a read thread once reads are there for now
        (read_place) or the store's gate is busy (the map is growing)."""
        self.keys_read += len(keys)
        answer: Answer[T] = Answer()
        entries: list[T] = []
        done = 0
        while done < len(keys):
            if done:
                await asyncio.sleep(0)
            if not self.read_place.on_loop():
                break
            part = keys[done : done + self.read_place.slice_keys(self._read_slice_keys)]
            got = self._read_on_loop(part, entry, max_bytes, answer)
            if got is None:
                break
            entries += got
            done += len(got)
            if len(got) < len(part):
                return entries  # the answer is as large as max_bytes lets it be
        if done < len(keys):
            rest = functools.partial(self.store.read_entries, max_bytes=max_bytes, answer=answer)
            entries += await self._in_thread(rest, keys[done:], entry)
        return entries

    def _read_on_loop(
        self, keys: Sequence[bytes], entry: Entry[T], max_bytes: int, answer: Answer[T]
    ) -> list[T] | None:
        """Store.read_entries_now, telling read_place whether it waited for the disk."""
        faults = major_faults()
        got = self.store.read_entries_now(keys, entry, max_bytes=max_bytes, answer=answer)
        if major_faults() != faults:
            self.read_place.read_faulted()
        elif got is not None:
            self.read_place.read_clean()
        return got

    async def scan(self, start: bytes, end: bytes, limit: int) -> tuple[list[Record], bytes]:
        scan = functools.partial(self.store.scan, max_bytes=self._page_bytes)
        return await self._in_thread(scan, start, end, limit)

    async def batches(
        self, start: bytes, end: bytes, batch_size: int
    ) -> AsyncIterator[list[Record]]:
        """Every record of [start, end) in batches, each read on a worker thread in its own
        transaction, so a slow consumer holds no LMDB snapshot open."""
        batches = self.store.iter_range(start, end, batch_size, max_bytes=self._page_bytes)
        while True:
            batch = await self._in_thread(next, batches, None)
            if batch is None:
                return
            yield batch

    async def digest(self, start: bytes, end: bytes) -> tuple[bytes, int]:
        return await self._in_thread(self.store.digest, start, end)

    async def hint_summary(self) -> dict[str, int]:
        return await self._in_thread(self.store.hint_summary)

    async def read_hints(self, target: str, limit: int) -> list[Record]:
        read = functools.partial(self.store.read_hints, max_bytes=self._page_bytes)
        return await self._in_thread(read, target, limit)

    # -- lifecycle ------------------------------------------------------------------------

    async def close(self) -> None:
        """Commits pending writes, then closes the store once running reads finished."""
        await self.committer.close()
        self._reads.shutdown(wait=False)
        await asyncio.to_thread(self.store.close)
