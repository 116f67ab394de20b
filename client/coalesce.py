"""Coalescing: concurrent single-key calls travel together in one batch RPC.

Why: a gRPC call costs hundreds of microseconds of CPU on each side, an item inside a
batch a few (README, Performance). So ``get``, ``put`` and ``delete`` of one client,
called concurrently from tasks or threads, are sent as one ``BatchGet`` / ``BatchWrite``.

One mechanism: even a lone ``get`` travels as a ``BatchGet`` of one key, and a lone
``put`` as a ``BatchWrite`` of one mutation; the unary ``Get``/``Put``/``Delete`` RPCs are
not used by the SDK. A batch of one costs the same on the wire, and one code path means
one set of semantics (per-item status, versions) to test.

How, for both flavours below:

- There is one batcher per kind of call and consistency level: only items that fit in
  the same request share a batcher.
- When fewer than ``max_in_flight`` batch calls of that batcher are running, a new one
  starts at once with everything pending. No timer and no waiting for company: a lone
  call goes out immediately, so coalescing adds no latency.
- Otherwise the item waits; when a running call returns, its sender takes everything
  queued (up to ``max_batch`` items, the server's batch limit, and for writes up to
  ``core.MAX_REQUEST_BYTES``: forty 1 MiB values make two calls) and sends it next.
- Reads cannot be cut by bytes: the values' sizes are not known before the answer. A
  ``BatchGet`` whose answer would not fit in a message (RESOURCE_EXHAUSTED naming the
  message limit, ``answer_too_large``) is asked again in halves, and keys a node
  refused alone for that reason in a call of their own (``Awaited.parts``), down to a
  key per call if need be; so a caller asking one key never fails for its neighbours'
  values, and batches of small values still go a thousand keys at a time.
- Every caller gets its own outcome: its item's result, its item's own error (from the
  reply's per-item status), or its own copy of the error that failed the whole call.
- Every caller keeps its own deadline. One whose deadline passes gets
  ``DeadlineExceeded`` at once: if its item was still queued it is never sent; if it was
  already sent the answer is dropped and the outcome is unknown. A batch call runs until
  the latest deadline among its items.
- A batch call retried (after UNAVAILABLE, see ``retry``) carries only the items whose
  callers still wait, and is not retried when none does (``Awaited``): a caller that got
  ``DeadlineExceeded`` may have written the key again since, and a late repeat of its
  first write would overwrite that acknowledged write.

``get_many`` and ``put_many`` share two parts of this with the batchers: which read items
to ask again in smaller calls (``answer_too_large``, ``too_large_items``) and each key's
outcome of a batch whose call may have failed whole (``batch_outcomes``, ``paired_outcomes``).

``AsyncBatcher`` (asyncio): the sender is a task of its own, so everything submitted in
the same event-loop turn leaves in one call, and a caller's cancellation never cancels a
batch that others wait on.

``ThreadBatcher`` (threads sharing a ``Client``, in ``coalesce_threads``): a caller that
finds a free slot becomes the leader: it takes its item with everything queued, and the
followers sleep, each on its own event. The leader sends the batch on its own thread
when no item in it may wait longer than the leader's caller (one thread, or callers with
equal timeouts: no hop), else on a sender thread, so that it too stops waiting at its
own deadline. When a batch is done, its slot passes to the oldest follower still queued,
which leads the next.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from itertools import chain
from typing import Generic, Protocol, TypeVar

from shardkv.common.deadlines import Deadlines

from .errors import ClientClosed, DeadlineExceeded, ResourceExhausted, ShardKVError

I = TypeVar("I")  # noqa: E741 - the item type of a batch
R = TypeVar("R")
T = TypeVar("T")

# Per item of a batch call, in order: whether its caller still waits for the outcome.
Waiting = Callable[[], Sequence[bool]]
# An outcome per item, in order; raises ShardKVError when the whole call failed.
AsyncSend = Callable[[list[I], float, Waiting], Awaitable[Sequence[R | ShardKVError]]]
ThreadSend = Callable[[list[I], float, Waiting], Sequence[R | ShardKVError]]


class _Waiter(Protocol):
    deadline: float


_W = TypeVar("_W", bound=_Waiter)


def _take(
    queue: deque[_W],
    max_items: int,
    live: Callable[[_W], bool],
    weight: Callable[[_W], int] | None = None,
    max_bytes: int = 0,
) -> list[_W]:
    """Pops up to max_items waiters still wanting an answer, oldest first; with weight,
    only while they fit in max_bytes (the first always goes: a batch of one is sent)."""
    now = time.monotonic()
    batch: list[_W] = []
    held = 0
    while queue and len(batch) < max_items:
        waiter = queue[0]
        if waiter.deadline <= now or not live(waiter):
            queue.popleft()
            continue
        if weight is not None:
            size = weight(waiter)
            if batch and held + size > max_bytes:
                break
            held += size
        batch.append(queue.popleft())
    return batch


def _timed_out(key: bytes) -> DeadlineExceeded:
    return DeadlineExceeded(
        f"no answer for key {key[:64]!r} within the timeout; the outcome is unknown",
        keys=(key,),
    )


class Awaited(Generic[I]):
    """The items of one batch call, narrowed before each retry to those whose callers
    still wait (waiting None: every item, as for ``put_many``, whose caller waits for all)."""

    def __init__(
        self, items: list[I], waiting: Waiting | None, *, key_of: Callable[[I], bytes]
    ) -> None:
        self._items = items
        self._waiting = waiting
        self._key_of = key_of
        self._carried = list(range(len(items)))  # indexes the latest attempt carried

    def carried(self) -> list[I]:
        """The items the latest attempt carried (its reply answers these)."""
        return [self._items[i] for i in self._carried]

    def retry_with(self, build: Callable[[list[I]], T]) -> Callable[[], T | None]:
        """What a retry sends, decided after its back-off: build of the items still
        awaited, or None when no caller waits any more (then the call is not retried)."""

        def again() -> T | None:
            if self._waiting is not None:
                waiting = self._waiting()
                self._carried = [i for i in self._carried if waiting[i]]
            return build(self.carried()) if self._carried else None

        return again

    def parts(self, indexes: list[int]) -> list[tuple[list[int], list[I], Waiting | None]]:
        """The items at indexes to be asked again in smaller calls (a read whose answer was
        too large): in one call when they are fewer than the items, else in two halves.
        Each part: its indexes among the items, its items, and who of them still waits."""
        if not indexes:
            return []
        half = (len(indexes) + 1) // 2
        groups = [indexes] if len(indexes) < len(self._items) else [indexes[:half], indexes[half:]]
        return [
            (
                group,
                [self._items[i] for i in group],
                None if self._waiting is None else partial(_picked, self._waiting, group),
            )
            for group in groups
        ]

    def outcomes(self, replies: Sequence[R | ShardKVError]) -> list[R | ShardKVError]:
        """Every item's outcome: its reply (replies follow carried()), or DeadlineExceeded
        for one dropped from the retries (its caller gave up: the outcome is unknown)."""
        if len(self._carried) == len(self._items):
            return list(replies)
        carried = dict(zip(self._carried, replies, strict=True))
        return [
            carried[index] if index in carried else _timed_out(self._key_of(item))
            for index, item in enumerate(self._items)
        ]


def answer_too_large(error: ShardKVError) -> bool:
    """Whether error says the answer to a read would not fit in one message (the router's
    whole-call refusal, a node's per-key one, or gRPC's own cap), rather than that a server
    shed load: then the same keys, asked in smaller batches, can be answered."""
    if not isinstance(error, ResourceExhausted):
        return False
    return "message limit" in error.details or "larger than max" in error.details


def too_large_items(outcomes: Sequence[object]) -> list[int]:
    """The indexes of the read outcomes that failed only because the answer was too large."""
    return [
        i
        for i, outcome in enumerate(outcomes)
        if isinstance(outcome, ShardKVError) and answer_too_large(outcome)
    ]


def batch_outcomes(
    keys: Sequence[bytes], page: Sequence[T] | BaseException
) -> Sequence[T | ShardKVError]:
    """The outcome per key of one of get_many's or put_many's batches: its own, or, when
    the whole call failed, that error for each key (ShardKVError.for_key). Anything else
    raised (a bug, a cancellation) is raised again."""
    if isinstance(page, ShardKVError):
        return [page.for_key(key) for key in keys]
    if isinstance(page, BaseException):
        raise page
    return page


def paired_outcomes(
    keys: Sequence[Sequence[bytes]], pages: Sequence[Sequence[T] | BaseException]
) -> Iterator[tuple[bytes, T | ShardKVError]]:
    """(key, outcome) for every key of every batch, keys[i] being the keys of pages[i];
    chained, not yielded one by one (a generator's step per key cost 0.08 µs)."""
    return chain.from_iterable(
        zip(chunk, batch_outcomes(chunk, page), strict=True)
        for chunk, page in zip(keys, pages, strict=True)
    )


def _picked(waiting: Waiting, indexes: list[int]) -> list[bool]:
    every = waiting()
    return [every[i] for i in indexes]


class _Expired(Exception):
    """A caller's deadline passed while its item was queued or in a call."""


def _expire(future: asyncio.Future[R]) -> None:
    if not future.done():
        future.set_exception(_Expired())


def _whole_call_failed(keys: Sequence[bytes], err: Exception) -> list[Exception]:
    """The outcome of every item when the call itself failed: an error object per caller,
    naming the caller's key (ShardKVError.for_key)."""
    if isinstance(err, ShardKVError):
        return [err.for_key(key) for key in keys]
    return [err] * len(keys)  # a bug in send: better raised everywhere than hung on


@dataclass(eq=False, slots=True)
class _AsyncWaiter(Generic[I, R]):
    item: I
    deadline: float
    future: asyncio.Future[R]


class AsyncBatcher(Generic[I, R]):
    """Coalesces concurrent ``submit`` calls of one event loop into batch calls of ``send``."""

    def __init__(
        self,
        send: AsyncSend[I, R],
        *,
        key_of: Callable[[I], bytes],
        max_batch: int,
        max_in_flight: int,
        size_of: Callable[[I], int] | None = None,
        max_bytes: int = 0,
    ) -> None:
        """size_of (an item's bytes in the request), when given, cuts batches at
        max_bytes as well as at max_batch items."""
        self._send = send
        self._key_of = key_of
        self._max_batch = max_batch
        self._max_in_flight = max_in_flight
        self._size_of = size_of
        self._weight = None if size_of is None else self._weight_of
        self._max_bytes = max_bytes
        self._queue: deque[_AsyncWaiter[I, R]] = deque()
        self._in_flight = 0
        self._starting = False  # a sender task exists that has not taken its batch yet
        self._tasks: set[asyncio.Task[None]] = set()
        # Each call's deadline, dropped when its answer comes first.
        self._deadlines = Deadlines()
        self._closed: ShardKVError | None = None

    def close(self, error: ShardKVError) -> None:
        """Fails the items queued, and any submitted later, with a copy of error each (the
        client is closing); those in a call fail as the call does."""
        self._closed = error
        while self._queue:
            waiter = self._queue.popleft()
            if not waiter.future.done():
                waiter.future.set_exception(error.for_key(self._key_of(waiter.item)))

    async def submit(self, item: I, deadline: float) -> R:
        """The outcome of item, sent in some batch; deadline is a time.monotonic() value."""
        if self._closed is not None:
            raise self._closed.for_key(self._key_of(item))
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self._queue.append(_AsyncWaiter(item, deadline, future))
        if not self._starting and self._in_flight < self._max_in_flight:
            self._in_flight += 1
            self._starting = True
            task = loop.create_task(self._sender())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        # A deadline on the caller's own future, not asyncio.wait_for (which wraps it in a
        # second future and costs an extra loop turn per call).
        timer = self._deadlines.at(loop.time() + deadline - time.monotonic(), _expire, future)
        try:
            return await future
        except _Expired:
            raise _timed_out(self._key_of(item)) from None
        finally:
            timer.cancel()

    async def _sender(self) -> None:
        """Sends what is queued, then what queued up meanwhile, until the queue is empty."""
        try:
            batch = self._take()
            self._starting = False
            while batch:
                await self._dispatch(batch)
                batch = self._take()
        finally:
            self._in_flight -= 1

    def _take(self) -> list[_AsyncWaiter[I, R]]:
        return _take(self._queue, self._max_batch, self._live, self._weight, self._max_bytes)

    def _weight_of(self, waiter: _AsyncWaiter[I, R]) -> int:
        assert self._size_of is not None
        return self._size_of(waiter.item)

    @staticmethod
    def _live(waiter: _AsyncWaiter[I, R]) -> bool:
        return not waiter.future.done()  # done = the caller timed out or was cancelled

    @staticmethod
    def _waiting(batch: list[_AsyncWaiter[I, R]]) -> list[bool]:
        now = time.monotonic()
        return [not w.future.done() and w.deadline > now for w in batch]

    async def _dispatch(self, batch: list[_AsyncWaiter[I, R]]) -> None:
        outcomes: Sequence[R | Exception]
        try:
            outcomes = await self._send(
                [waiter.item for waiter in batch],
                max(waiter.deadline for waiter in batch),
                partial(self._waiting, batch),
            )
        except asyncio.CancelledError:
            for waiter in batch:
                if not waiter.future.done():
                    closed = ClientClosed("the client was closed")
                    waiter.future.set_exception(closed.for_key(self._key_of(waiter.item)))
            raise
        except Exception as err:
            outcomes = _whole_call_failed([self._key_of(w.item) for w in batch], err)
        for waiter, outcome in zip(batch, outcomes, strict=True):
            if waiter.future.done():
                continue
            if isinstance(outcome, Exception):
                waiter.future.set_exception(outcome)
            else:
                waiter.future.set_result(outcome)
