"""Deadlines behind one loop timer (common/deadlines.py), on a real event loop."""

from __future__ import annotations

import asyncio
import contextvars
import logging

import pytest
from shardkv.common.deadlines import SWEEP_AT, Deadlines
from shardkv.serving import event_loop


def test_deadlines_pass_in_order_and_dropped_ones_never_run() -> None:
    async def scenario() -> tuple[list[str], list[float]]:
        loop = asyncio.get_running_loop()
        deadlines = Deadlines()
        ran: list[str] = []
        late: list[float] = []
        start = loop.time()

        def note(name: str, when: float) -> None:
            ran.append(name)
            late.append(loop.time() - when)

        for name, after in (("c", 0.06), ("a", 0.02), ("dropped", 0.03), ("b", 0.04)):
            deadline = deadlines.at(start + after, note, name, start + after)
            if name == "dropped":
                deadline.cancel()
        # Armed after the others and earlier than all of them: the timer is moved up.
        deadlines.at(start + 0.01, note, "first", start + 0.01)
        await asyncio.sleep(0.1)
        return ran, late

    ran, late = asyncio.run(scenario())
    assert ran == ["first", "a", "b", "c"]
    assert all(0 <= delay < 0.05 for delay in late), late


def test_a_callback_that_raises_is_logged_and_the_others_still_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> list[int]:
        loop = asyncio.get_running_loop()
        deadlines = Deadlines()
        ran: list[int] = []
        when = loop.time() + 0.01

        def fail() -> None:
            raise RuntimeError("boom")

        deadlines.at(when, ran.append, 1)
        deadlines.at(when, fail)
        deadlines.at(when, ran.append, 2)
        await asyncio.sleep(0.05)
        return ran

    with caplog.at_level(logging.ERROR):
        assert asyncio.run(scenario()) == [1, 2]
    assert "a deadline's callback raised" in caplog.text


def test_a_callback_may_drop_or_arm_others_due_at_once() -> None:
    async def scenario() -> list[str]:
        loop = asyncio.get_running_loop()
        deadlines = Deadlines()
        ran: list[str] = []
        when = loop.time() + 0.01
        doomed = deadlines.at(when + 0.001, ran.append, "doomed")

        def first() -> None:
            ran.append("first")
            doomed.cancel()
            deadlines.at(loop.time(), ran.append, "armed by first")

        deadlines.at(when, first)
        await asyncio.sleep(0.05)
        assert doomed.settled and not doomed.passed
        return ran

    assert asyncio.run(scenario()) == ["first", "armed by first"]


def test_dropping_after_it_passed_changes_nothing() -> None:
    async def scenario() -> None:
        deadlines = Deadlines()
        ran: list[int] = []
        deadline = deadlines.at(asyncio.get_running_loop().time(), ran.append, 1)
        await asyncio.sleep(0.01)
        deadline.cancel()
        assert deadline.passed and ran == [1] and len(deadlines) == 0

    asyncio.run(scenario())


def test_deadlines_dropped_long_before_they_pass_do_not_pile_up() -> None:
    """A server's frames are answered long before their deadlines: what they leave on the
    heap is swept out once it is most of it."""

    async def scenario() -> None:
        deadlines = Deadlines()
        far = asyncio.get_running_loop().time() + 3600
        ran: list[int] = []
        for _ in range(20):
            batch = [deadlines.at(far, ran.append, i) for i in range(1000)]
            for deadline in batch:
                deadline.cancel()
            assert len(deadlines) <= 2 * SWEEP_AT
        kept = deadlines.at(far - 1, ran.append, -1)
        assert len(deadlines) <= 2 * SWEEP_AT + 1 and not kept.settled and not ran

    asyncio.run(scenario())


def test_each_callback_runs_in_the_context_it_was_armed_in() -> None:
    """As loop.call_at: a request's id (a context variable) reaches what its deadline does,
    whichever request armed the loop's one timer."""
    request: contextvars.ContextVar[str] = contextvars.ContextVar("request", default="-")

    async def scenario() -> list[tuple[str, str]]:
        deadlines = Deadlines()
        seen: list[tuple[str, str]] = []
        when = asyncio.get_running_loop().time() + 0.01

        async def arm(name: str, after: float) -> None:
            request.set(name)
            deadlines.at(when + after, lambda: seen.append((name, request.get())))

        await asyncio.gather(arm("a", 0.002), arm("b", 0.0), arm("c", 0.001))
        await asyncio.sleep(0.05)
        return seen

    assert asyncio.run(scenario()) == [("b", "b"), ("c", "c"), ("a", "a")]


def test_a_callback_that_raises_cancelled_error_keeps_the_later_ones(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> list[int]:
        deadlines = Deadlines()
        ran: list[int] = []
        when = asyncio.get_running_loop().time() + 0.01

        def cancelled() -> None:
            raise asyncio.CancelledError

        deadlines.at(when, cancelled)
        deadlines.at(when, ran.append, 1)
        deadlines.at(when + 0.01, ran.append, 2)
        await asyncio.sleep(0.05)
        return ran

    with caplog.at_level(logging.ERROR):
        assert asyncio.run(scenario()) == [1, 2]


def test_deadlines_armed_on_a_loop_since_closed_are_dropped_with_it() -> None:
    """One Deadlines used by two asyncio.run in turn: the first loop's deadlines (and its
    timer, armed earlier than the second loop's deadline) go with it."""
    deadlines = Deadlines()
    ran: list[str] = []

    async def arm(name: str, after: float, wait: float) -> None:
        deadlines.at(asyncio.get_running_loop().time() + after, ran.append, name)
        await asyncio.sleep(wait)

    asyncio.run(arm("first loop's", 0.05, 0))
    asyncio.run(arm("second loop's", 0.1, 0.2))
    assert ran == ["second loop's"]


def test_on_the_servers_loop_a_deadline_fires_the_loop_timer_once() -> None:
    """uvloop's clock counts whole milliseconds and fires a timer up to half of one early:
    a deadline that close is due. Judged to the nanosecond it was re-armed for the same
    moment, which fired again at once: about 300 turns of the loop a deadline."""
    fired = 0

    class Counting(Deadlines):
        def _fire(self) -> None:
            nonlocal fired
            fired += 1
            super()._fire()

    async def scenario() -> list[int]:
        loop = asyncio.get_running_loop()
        deadlines = Counting()
        passed: list[int] = []
        for i in range(50):  # due at every offset within a millisecond
            deadlines.at(loop.time() + 0.0104 + i * 0.00002, passed.append, i)
            await asyncio.sleep(0.015)
        return passed

    assert event_loop.run(scenario()) == list(range(50))
    assert fired <= 55, f"{fired} timer turns for 50 deadlines"
