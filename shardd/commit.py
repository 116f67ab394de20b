"""Group commit: concurrent writes share one LMDB transaction and one fsync.

LMDB allows one write transaction at a time and an fsync costs far more than a put, so a
single committer loop takes everything pending (up to a cap), runs one `Store.apply` on a
dedicated worker thread (never the event loop's), and then answers each caller with its
own slice of the results. Writes that arrive while a commit runs wait for the next one.
A caller is answered only after its commit is durable; a failed commit fails only its own
callers, and the loop keeps serving.

Fencing (shardkv.shardd.fence): each write carries the topology epoch it was routed under,
and the commit thread checks it against the node's fence just before the transaction that
would store it; a write routed under an older epoch fails alone with StaleEpoch. The fence
itself rises only on this same thread (``run(fence.raise_to, ...)``), so a check and its
commit are never split by a Fence.

The queue is bounded (items and bytes): when writes arrive faster than the disk commits
them, a write that would overflow it is refused at once with CommitterOverloaded
(RESOURCE_EXHAUSTED) instead of queueing without limit and growing the node's memory.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from shardkv.serving.tally import SizeHistogram
from shardkv.shardd.fence import Fence, StaleEpoch
from shardkv.shardd.records import RECORD_BYTES, Hint, Record
from shardkv.shardd.store import Marker, Store

log = logging.getLogger(__name__)

T = TypeVar("T")


class CommitterClosed(RuntimeError):
    """The committer is shutting down and takes no new writes."""


class CommitterOverloaded(RuntimeError):
    """The queue of writes waiting for a commit is full: the node sheds this write."""


class _Failed(Exception):
    """A commit failed: the requests it held (those the fence admitted) and why."""

    def __init__(self, batch: list[_Request], error: Exception) -> None:
        super().__init__(str(error))
        self.batch = batch
        self.error = error


@dataclass(frozen=True, slots=True)
class _Request:
    records: Sequence[Record]
    hints: Sequence[Hint]
    markers: Sequence[Marker]
    future: asyncio.Future[list[bool | None]]
    # The topology epoch the write was routed under (None: the call carried none).
    epoch: int | None
    # What the request counts for in the queue's and a commit's bounds, measured once.
    items: int
    size: int


def _request(
    records: Sequence[Record],
    hints: Sequence[Hint],
    markers: Sequence[Marker],
    future: asyncio.Future[list[bool | None]],
    epoch: int | None,
) -> _Request:
    """A queued write with its item count and approximate size (as Record.size)."""
    size = sum(len(r.key) + len(r.value) for r in records) + RECORD_BYTES * len(records)
    if hints:
        size += sum(h.record.size() for h in hints)
    items = len(records) + len(hints) + len(markers)
    return _Request(records, hints, markers, future, epoch, items, size)


class GroupCommitter:
    """Queues writes from many coroutines and commits them together.

    max_items and max_bytes cap one commit (a single larger request still goes alone), so
    one transaction never grows without bound; max_pending_items and max_pending_bytes cap
    the queue (a request is refused only when something is queued already, so any single
    request the server accepted can be committed). `commits`, `items` and `shed` count
    what was done and refused.
    """

    def __init__(
        self,
        store: Store,
        *,
        max_items: int = 4096,
        max_bytes: int = 64 << 20,
        max_pending_items: int = 65536,
        max_pending_bytes: int = 256 << 20,
        fence: Fence | None = None,
    ) -> None:
        """fence: the node's fence, checked before each commit (None: no epochs checked)."""
        self._store = store
        self._fence = fence
        self._max_items = max_items
        self._max_bytes = max_bytes
        self._max_pending_items = max_pending_items
        self._max_pending_bytes = max_pending_bytes
        self._pending: list[_Request] = []
        self._pending_items = 0
        self._pending_bytes = 0
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shardd-commit")
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.commits = 0
        self.items = 0
        self.shed = 0
        # Items per commit (group-commit batch sizes), read by the metrics endpoint.
        self.batch_sizes = SizeHistogram()

    async def apply(
        self,
        records: Sequence[Record],
        hints: Sequence[Hint] = (),
        markers: Sequence[Marker] = (),
        *,
        epoch: int | None = None,
    ) -> list[bool | None]:
        """Stores records newer than the stored ones, parks hints and keeps markers, all of
        one call in the same commit; returns per record whether it was stored (None: a
        restored record refused, Store.apply). Returns only once the commit holding them
        is durable. Raises StaleEpoch when the fence refuses epoch (module docstring)."""
        if self._closing:
            raise CommitterClosed("the node is shutting down and takes no new writes")
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="shardd-group-commit")
        future: asyncio.Future[list[bool | None]] = asyncio.get_running_loop().create_future()
        request = _request(records, hints, markers, future, epoch)
        self._admit(request)
        self._pending.append(request)
        self._wakeup.set()
        # A caller that is cancelled (its future with it) leaves its write queued: a
        # timed-out write may still happen, which is what callers must assume anyway. The
        # future is awaited without asyncio.shield, which cost a second future per call;
        # answers skip a cancelled one (_settle).
        return await future

    def _admit(self, request: _Request) -> None:
        """Counts request into the queue, or refuses it when the queue would overflow."""
        items, size = request.items, request.size
        if self._pending and (
            self._pending_items + items > self._max_pending_items
            or self._pending_bytes + size > self._max_pending_bytes
        ):
            self.shed += 1
            raise CommitterOverloaded(
                f"node overloaded: {self._pending_items} writes ({self._pending_bytes} bytes)"
                f" already wait for a commit (limits {self._max_pending_items} writes,"
                f" {self._max_pending_bytes} bytes); retry later"
            )
        self._pending_items += items
        self._pending_bytes += size

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        """Runs another write (e.g. deleting hints) on the commit thread between commits, so
        every write transaction of the node starts from that one thread."""
        if self._closing:
            raise CommitterClosed("the node is shutting down and takes no new writes")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args))

    async def close(self) -> None:
        """Commits what is pending, then stops the loop and its thread."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
        self._executor.shutdown(wait=True)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._pending:
                batch = self._take()
                items = sum(request.items for request in batch)
                try:
                    batch, applied = await loop.run_in_executor(self._executor, self._commit, batch)
                except _Failed as failed:
                    log.warning("commit failed items=%d error=%r", items, failed.error)
                    for request in failed.batch:
                        _settle(request.future, error=failed.error)
                else:
                    self._answer(batch, applied)
                self.commits += 1
                self.items += items
                self.batch_sizes.observe(items)
            if self._closing:
                return

    def _commit(self, batch: list[_Request]) -> tuple[list[_Request], list[bool | None]]:
        """On the commit thread: fails each request the fence refuses, then commits the
        rest in one transaction. Returns the requests committed and their per-record
        results."""
        if self._fence is not None:
            admitted = []
            for request in batch:
                try:
                    self._fence.admit(request.epoch, "a write")
                except StaleEpoch as refused:
                    request.future.get_loop().call_soon_threadsafe(
                        _settle, request.future, None, refused
                    )
                else:
                    admitted.append(request)
            batch = admitted
            if not batch:
                return batch, []
        records = [r for request in batch for r in request.records]
        hints = [h for request in batch for h in request.hints]
        markers = [m for request in batch for m in request.markers]
        try:
            return batch, self._store.apply(records, hints, markers)
        except Exception as exc:
            raise _Failed(batch, exc) from exc

    def _take(self) -> list[_Request]:
        """The oldest pending requests that fit in one commit (at least one)."""
        count = items = size = 0
        for request in self._pending:
            if count and (
                items + request.items > self._max_items or size + request.size > self._max_bytes
            ):
                break
            count += 1
            items += request.items
            size += request.size
        batch, self._pending = self._pending[:count], self._pending[count:]
        self._pending_items -= items
        self._pending_bytes -= size
        return batch

    @staticmethod
    def _answer(batch: list[_Request], applied: list[bool | None]) -> None:
        offset = 0
        for request in batch:
            end = offset + len(request.records)
            _settle(request.future, applied[offset:end])
            offset = end


def _settle(
    future: asyncio.Future[list[bool | None]],
    result: list[bool | None] | None = None,
    error: Exception | None = None,
) -> None:
    """Answers a caller with result or error, unless it stopped waiting (cancelled)."""
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result or [])
