"""``ThreadBatcher``: coalescing for threads sharing a ``Client`` (see ``coalesce`` for the
mechanism both flavours share)."""

from __future__ import annotations

import enum
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Generic

from .coalesce import I, R, ThreadSend, _take, _timed_out, _whole_call_failed
from .errors import Cancelled


class _State(enum.Enum):
    QUEUED = "queued"  # waiting for a slot
    LEADING = "leading"  # holds a slot: this caller's thread sends the next batch
    SENT = "sent"  # in a batch call
    DONE = "done"  # outcome set
    ABANDONED = "abandoned"  # the caller's deadline passed; any outcome is dropped


@dataclass(eq=False, slots=True)
class _ThreadWaiter(Generic[I, R]):
    item: I
    deadline: float
    state: _State = _State.QUEUED
    outcome: R | Exception | None = None
    wake: threading.Event = field(default_factory=threading.Event)


class ThreadBatcher(Generic[I, R]):
    """Coalesces concurrent ``submit`` calls from threads into batch calls of ``send``.

    Each waiter sleeps on its own event and is woken only for its outcome or to lead the
    next batch, so a finished batch does not wake every waiting thread.
    """

    def __init__(
        self,
        send: ThreadSend[I, R],
        *,
        key_of: Callable[[I], bytes],
        max_batch: int,
        max_in_flight: int,
        size_of: Callable[[I], int] | None = None,
        max_bytes: int = 0,
    ) -> None:
        """size_of and max_bytes: as AsyncBatcher's."""
        self._send = send
        self._key_of = key_of
        self._max_batch = max_batch
        self._max_in_flight = max_in_flight
        self._size_of = size_of
        self._weight = None if size_of is None else self._weight_of
        self._max_bytes = max_bytes
        self._queue: deque[_ThreadWaiter[I, R]] = deque()
        self._in_flight = 0  # slots held by leaders (sending or about to)
        self._lock = threading.Lock()
        # Sends the batches some item of which may wait longer than its leader's caller.
        self._senders = ThreadPoolExecutor(max_in_flight, thread_name_prefix="shardkv-batch")

    def close(self) -> None:
        """Lets the sender threads end once their batches are (the client is closing)."""
        self._senders.shutdown(wait=False)

    def submit(self, item: I, deadline: float) -> R:
        """The outcome of item, sent in some batch; deadline is a time.monotonic() value."""
        waiter: _ThreadWaiter[I, R] = _ThreadWaiter(item, deadline)
        with self._lock:
            if self._in_flight < self._max_in_flight:
                self._in_flight += 1
                waiter.state = _State.LEADING
            else:
                self._queue.append(waiter)
        while True:
            with self._lock:
                state = waiter.state
                if state is _State.QUEUED or state is _State.SENT:
                    if time.monotonic() >= waiter.deadline:
                        waiter.state = state = _State.ABANDONED
                    else:
                        waiter.wake.clear()  # a change of state after this sets it again
            if state is _State.DONE:
                break
            if state is _State.ABANDONED:
                raise _timed_out(self._key_of(item))
            if state is _State.LEADING:
                self._lead(waiter)
            else:
                waiter.wake.wait(waiter.deadline - time.monotonic())
        if isinstance(waiter.outcome, Exception):
            raise waiter.outcome
        return waiter.outcome  # type: ignore[return-value]  # DONE: an R

    @staticmethod
    def _live(waiter: _ThreadWaiter[I, R]) -> bool:
        return waiter.state is _State.QUEUED

    def _weight_of(self, waiter: _ThreadWaiter[I, R]) -> int:
        assert self._size_of is not None
        return self._size_of(waiter.item)

    def _waiting(self, batch: list[_ThreadWaiter[I, R]]) -> list[bool]:
        """Under the lock, so a caller gives up either before this (its item is dropped)
        or after (the attempt this decides was under way when it gave up)."""
        with self._lock:
            now = time.monotonic()
            return [w.state is _State.SENT and w.deadline > now for w in batch]

    def _lead(self, own: _ThreadWaiter[I, R]) -> None:
        """Sends own item with what is queued: on this thread when no item may wait longer
        than own (its caller then waits no longer than its own deadline either), else on a
        sender thread, while own waits as a follower does."""
        with self._lock:
            if own.deadline > time.monotonic():
                own.state = _State.SENT
                room = self._max_bytes - (self._weight(own) if self._weight else 0)
                rest = _take(self._queue, self._max_batch - 1, self._live, self._weight, room)
                batch = [own, *rest]
            else:  # own time is up, but the slot it holds still serves the queue
                own.state = _State.ABANDONED
                batch = _take(
                    self._queue, self._max_batch, self._live, self._weight, self._max_bytes
                )
            for waiter in batch:
                waiter.state = _State.SENT
        deadline = max((w.deadline for w in batch), default=own.deadline)
        if not batch or (own.state is _State.SENT and deadline <= own.deadline):
            self._send_batch(batch, deadline)
            return
        try:
            self._senders.submit(self._send_batch, batch, deadline)
        except RuntimeError:  # the client was closed: the call fails at once anyway
            self._send_batch(batch, deadline)

    def _send_batch(self, batch: list[_ThreadWaiter[I, R]], deadline: float) -> None:
        """Sends batch, hands out the outcomes, passes the slot on."""
        outcomes: Sequence[R | Exception] | None = None
        try:
            if batch:
                items = [waiter.item for waiter in batch]
                outcomes = self._send(items, deadline, partial(self._waiting, batch))
            else:
                outcomes = []
        except Exception as err:
            outcomes = _whole_call_failed([self._key_of(w.item) for w in batch], err)
        finally:
            if outcomes is None:  # the sender was interrupted (KeyboardInterrupt...)
                outcomes = [Cancelled("the thread sending this batch was interrupted")] * len(batch)
            with self._lock:
                for waiter, outcome in zip(batch, outcomes, strict=True):
                    if waiter.state is _State.SENT:
                        waiter.outcome = outcome
                        waiter.state = _State.DONE
                        waiter.wake.set()
                self._in_flight -= 1
                self._promote()

    def _promote(self) -> None:
        """With the lock held: hands a free slot to the oldest caller still queued."""
        while self._queue and self._in_flight < self._max_in_flight:
            waiter = self._queue.popleft()
            if waiter.state is _State.QUEUED:
                waiter.state = _State.LEADING
                self._in_flight += 1
                waiter.wake.set()
