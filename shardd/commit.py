"""Group commit: concurrent writes share one journal append (or LMDB transaction) and one
fsync.

The store takes one write at a time (its journal, LMDB's one write transaction) and an
fsync costs far more than a put, so writes queue on the event loop and one `Store.apply`
commits everything pending (up to a cap; shardkv.shardd.write_ahead says where records
go), then each caller is answered with its own slice of the results. Writes that arrive
while a commit runs wait for the next one, which starts as soon as that commit is
answered; writes queued in the same turn of the event loop share a commit. A caller is
answered only after the commit holding its records is durable, and the committer keeps
serving whatever a commit raised.

Each request gets its own outcome. A shared commit that fails with an error that may
belong to one request alone (``OWN_ERRORS``: a key over the limit, one hint target too
many, a write the full map cannot hold, a damaged record it would overwrite) is split in
two halves, each committed the same way, so only the requests that fail alone fail: one
bad request among n costs about 2·log2(n) commits more, on that path only; the common
path stays one commit. Before, one request's TooManyTargets or StoreFull failed every
request sharing its commit. Any other error (the store closed, an I/O error) fails the
whole commit.

Where a commit runs: on the commit thread, never on the event loop (an fsync can stall
for as long as the disk does, and the loop must keep serving reads, health checks and
fence refusals meanwhile). The loop puts the batch on the thread's queue and the thread
hands the outcome back with one call_soon_threadsafe that answers every caller: no
executor, no task driving it, no future per hop (py-spy of a node under single Puts
through a router: those hops were a fifth of the loop's samples).

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
import logging
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

from shardkv.common.limits import LimitExceeded
from shardkv.serving.tally import SizeHistogram
from shardkv.shardd.fence import Fence, StaleEpoch
from shardkv.shardd.records import RECORD_BYTES, CorruptRecord, Hint, Record
from shardkv.shardd.store import Marker, Store, StoreFull, TooManyTargets

log = logging.getLogger(__name__)

T = TypeVar("T")
# What the commit thread runs, in order: a job that never raises, or None to stop.
_Job = Callable[[], None] | None
# Errors a commit raises that may belong to one of its requests alone (module docstring).
OWN_ERRORS = (LimitExceeded, TooManyTargets, StoreFull, CorruptRecord)
# What one request got: its per-record results, or the error that failed it.
_Result = list[bool | None] | Exception


class CommitterClosed(RuntimeError):
    """The committer is shutting down and takes no new writes."""


class CommitterOverloaded(RuntimeError):
    """The queue of writes waiting for a commit is full: the node sheds this write."""


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


class _Outcome(NamedTuple):
    """What a commit did: each request's result or error (a fence refusal included), in
    the batch's order, and the items of each transaction that committed."""

    results: list[_Result]
    commits: list[int]


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

    Everything but the commits and run() jobs runs on the event loop's thread: the queue,
    its bounds and the answers. The commit thread starts with the first write or run().
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
        # A start of the next commit is scheduled on the loop; when the commit on the
        # thread started (loop time; None: no commit runs).
        self._kicked = False
        self._committing_since: float | None = None
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # close() waits on this for the last commit to be answered.
        self._drained: asyncio.Future[None] | None = None
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
        loop = self._loop or self._start()
        future: asyncio.Future[list[bool | None]] = loop.create_future()
        request = _request(records, hints, markers, future, epoch)
        self._admit(request)
        self._pending.append(request)
        if not self._kicked and self._committing_since is None:
            # Started at the end of this turn of the loop, so that the writes queued in
            # the same turn share the commit.
            self._kicked = True
            loop.call_soon(self._kick)
        # A cancelled caller leaves its write queued: a timed-out write may still happen,
        # as callers must assume anyway. Answers skip a cancelled one (_settle).
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
        """Runs another write (e.g. deleting hints) on the commit thread between commits."""
        if self._closing:
            raise CommitterClosed("the node is shutting down and takes no new writes")
        loop = self._loop or self._start()
        future: asyncio.Future[T] = loop.create_future()

        def job() -> None:
            try:
                result = fn(*args)
            except Exception as exc:
                _post(loop, _settle, future, None, exc)
            else:
                _post(loop, _settle, future, result)

        self._jobs.put(job)
        return await future

    async def close(self) -> None:
        """Commits what is pending, then stops the commit thread."""
        self._closing = True
        if self._thread is None:
            return
        if self._pending or self._committing_since is not None:
            self._drained = asyncio.get_running_loop().create_future()
            if not self._kicked and self._committing_since is None:
                self._kick()
            await self._drained
        self._jobs.put(None)
        await asyncio.to_thread(self._thread.join)

    def _start(self) -> asyncio.AbstractEventLoop:
        """Binds the committer to the running loop and starts its commit thread."""
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._serve, name="shardd-commit", daemon=True)
        self._thread.start()
        return self._loop

    def _serve(self) -> None:
        """The commit thread: runs jobs in the order they were queued until told to stop."""
        while (job := self._jobs.get()) is not None:
            job()

    def _kick(self) -> None:
        """On the loop: hands the oldest pending requests that fit in one commit to the
        commit thread; nothing while a commit runs (its answer starts the next)."""
        self._kicked = False
        if self._committing_since is not None or not self._pending:
            return
        batch = self._take()
        loop = self._loop
        assert loop is not None  # set by the apply that queued the batch
        self._committing_since = loop.time()
        self._jobs.put(lambda: _post(loop, self._committed, batch, self._store_batch(batch)))

    def waiting_s(self, now: float) -> float:
        """How long the commit on the thread has run by now (loop time); 0 when none runs."""
        return 0.0 if self._committing_since is None else now - self._committing_since

    def _store_batch(self, batch: list[_Request]) -> _Outcome:
        """Fails each request the fence refuses and commits the rest, in one transaction
        unless it fails with one of OWN_ERRORS (_commit); never raises."""
        results: list[_Result | None] = [None] * len(batch)
        commits: list[int] = []
        admitted = list(range(len(batch)))
        try:
            if self._fence is not None:
                admitted = []
                for index, request in enumerate(batch):
                    try:
                        self._fence.admit(request.epoch, "a write")
                    except StaleEpoch as stale:
                        results[index] = stale
                    else:
                        admitted.append(index)
            if admitted:
                self._commit(batch, admitted, results, commits)
        except Exception as exc:  # the fence failed: nothing was committed
            results = [exc if result is None else result for result in results]
        done = [result for result in results if result is not None]
        assert len(done) == len(batch)  # _commit sets the result of every request
        return _Outcome(done, commits)

    def _commit(
        self,
        batch: list[_Request],
        indexes: list[int],
        results: list[_Result | None],
        commits: list[int],
    ) -> None:
        """Commits the requests of batch at indexes in one transaction and sets each one's
        result; when the commit fails with one of OWN_ERRORS, commits each half the same
        way, so a request fails only with an error it raises alone. Store.apply returns
        once its transaction is durable, so every result set here is one to acknowledge.
        The fence cannot rise between these commits: it rises only on this thread."""
        requests = [batch[i] for i in indexes]
        try:
            applied = self._store.apply(
                [r for request in requests for r in request.records],
                [h for request in requests for h in request.hints],
                [m for request in requests for m in request.markers],
            )
        except OWN_ERRORS as exc:
            if len(indexes) == 1:
                results[indexes[0]] = exc
                return
            half = len(indexes) // 2
            self._commit(batch, indexes[:half], results, commits)
            self._commit(batch, indexes[half:], results, commits)
            return
        except Exception as exc:
            for index in indexes:
                results[index] = exc
            return
        commits.append(sum(request.items for request in requests))
        offset = 0
        for index, request in zip(indexes, requests, strict=True):
            end = offset + len(request.records)
            results[index] = applied[offset:end]
            offset = end

    def _committed(self, batch: list[_Request], outcome: _Outcome) -> None:
        """On the loop: answers the callers of a commit, then starts the next one."""
        self._committing_since = None
        items = sum(request.items for request in batch)
        failed = [
            e for e in outcome.results if isinstance(e, Exception) and not isinstance(e, StaleEpoch)
        ]
        if failed:
            log.warning(
                "commit failed requests=%d of=%d first_error=%r", len(failed), len(batch), failed[0]
            )
        for request, result in zip(batch, outcome.results, strict=True):
            if isinstance(result, Exception):
                _settle(request.future, None, result)
            else:
                _settle(request.future, result)
        self.commits += len(outcome.commits)
        self.items += items
        for size in outcome.commits:
            self.batch_sizes.observe(size)
        if self._pending:
            self._kick()
        elif self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

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


def _post(loop: asyncio.AbstractEventLoop, callback: Callable[..., None], *args: Any) -> None:
    """From the commit thread: runs callback on the loop (unless the loop closed)."""
    try:
        loop.call_soon_threadsafe(callback, *args)
    except RuntimeError as exc:
        log.debug("commit outcome dropped: %r", exc)


def _settle(future: asyncio.Future[Any], result: object, error: Exception | None = None) -> None:
    """On the loop: answers a caller (of a commit or a run() job) with result or error,
    unless it stopped waiting (cancelled)."""
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
