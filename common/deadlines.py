"""Many deadlines behind one timer of the event loop.

Every frame in flight, every frame a server runs and every batch a router coordinates has
a deadline that almost never passes: the answer comes first and the deadline is dropped.
A timer of asyncio's loop per deadline costs about 5 µs to arm and drop (a TimerHandle
made, pushed on the loop's heap and popped again with comparisons written in Python),
3-5% of a router's CPU on batches of 100 read. Here a deadline is a tuple on a heap of
its own, compared in C, and dropping it only marks it; the loop holds one timer, for the
earliest deadline, re-armed when it passes or when an earlier one comes. Marked entries
are skipped as they reach the top, and swept out all at once when they are over half of
the heap (as asyncio does with its own cancelled timers), so deadlines far in the future
that are dropped early do not pile up.

Callbacks run on the loop, in the order of their deadlines (of their arming, for equal
ones), each in the context it was armed in (as loop.call_at runs them: a request's id
stays its own); one that raises is logged and the others still run.

A deadline is due once the loop's clock is within CLOCK_GRAIN_S of it (come()), as
asyncio's own loop runs a timer within its clock's resolution: the servers' loop
(uvloop's, serving/event_loop.py) counts whole milliseconds and fires a timer when its
clock reaches the millisecond asked for, up to half of one before the time itself. Judged
to the nanosecond, such a deadline was not due yet, and re-arming it for the same moment
fired again at once, a busy loop until the millisecond passed (about 300 turns of the
loop a deadline).
"""

from __future__ import annotations

import asyncio
import contextvars
import heapq
import itertools
import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

# Below this many entries the dropped ones are left to the top of the heap.
SWEEP_AT = 256
# How close to the loop's clock a moment has come (the module docstring).
CLOCK_GRAIN_S = 0.001


def come(when: float, now: float) -> bool:
    """Whether the moment when has come at the loop's time now (within CLOCK_GRAIN_S)."""
    return when <= now + CLOCK_GRAIN_S


class Deadline:
    """One deadline: cancel() drops it (nothing happens if it passed or was dropped)."""

    __slots__ = ("_args", "_callback", "_context", "_owner", "passed", "settled")

    def __init__(self, owner: Deadlines, callback: Callable[..., object], args: tuple[Any, ...]):
        self._owner = owner
        self._callback = callback
        self._args = args
        self._context = contextvars.copy_context()
        # Whether its callback ran; whether it ran or was dropped.
        self.passed = False
        self.settled = False

    def cancel(self) -> None:
        if not self.settled:
            self.settled = True
            self._callback = _nothing
            self._args = ()
            self._owner.dropped()

    def run(self) -> None:
        """Runs the callback (from Deadlines: the deadline passed)."""
        self.settled = self.passed = True
        callback, args = self._callback, self._args
        self._callback, self._args = _nothing, ()
        try:
            self._context.run(callback, *args)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException:  # as the loop's own handles: logged, the others still run
            log.exception("a deadline's callback raised; the others still run")


class Deadlines:
    """The deadlines of one component, on the running loop (see the module docstring)."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._heap: list[tuple[float, int, Deadline]] = []
        self._order = itertools.count()
        self._dropped = 0
        self._timer: asyncio.TimerHandle | None = None
        self._armed = float("inf")

    def __len__(self) -> int:
        """Deadlines held, dropped ones not yet swept out included."""
        return len(self._heap)

    def at(self, when: float, callback: Callable[..., object], *args: Any) -> Deadline:
        """Calls callback(*args) once the loop's time reaches when, unless dropped first."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._bind(loop)
        deadline = Deadline(self, callback, args)
        heapq.heappush(self._heap, (when, next(self._order), deadline))
        if when < self._armed:
            self._arm(when)
        return deadline

    def _bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Serves loop from now on. What was armed on another one (a loop since closed:
        another asyncio.run) belongs to it and is dropped, with its timer."""
        if self._timer is not None:
            self._timer.cancel()
        self._loop, self._timer, self._armed = loop, None, float("inf")
        self._heap, self._dropped = [], 0

    def dropped(self) -> None:
        """One more entry was dropped (Deadline.cancel); sweeps when they are most."""
        self._dropped += 1
        heap = self._heap
        if self._dropped > SWEEP_AT and self._dropped * 2 > len(heap):
            self._heap = [entry for entry in heap if not entry[2].settled]
            heapq.heapify(self._heap)
            self._dropped = 0

    def _arm(self, when: float) -> None:
        """Moves the loop's timer to when."""
        if self._timer is not None:
            self._timer.cancel()
        assert self._loop is not None  # bound by the first deadline armed
        # In a context of its own: each deadline runs in the one it was armed in.
        self._timer = self._loop.call_at(when, self._fire, context=contextvars.Context())
        self._armed = when

    def _fire(self) -> None:
        """The earliest deadline passed: runs every one due (a callback may arm or drop
        others, and a drop may sweep the heap: it is looked up anew each time)."""
        self._timer, self._armed = None, float("inf")
        assert self._loop is not None  # armed on it
        now = self._loop.time()
        try:
            while self._heap and (come(self._heap[0][0], now) or self._heap[0][2].settled):
                _, _, deadline = heapq.heappop(self._heap)
                if deadline.settled:
                    self._dropped -= 1
                else:
                    deadline.run()
        finally:  # SystemExit or KeyboardInterrupt: the deadlines left still pass
            if self._heap:
                self._arm(self._heap[0][0])


def _nothing(*_: object) -> None:
    """What a settled deadline holds instead of its callback (its references let go)."""
