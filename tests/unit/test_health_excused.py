"""The health monitor skips the check of an UP node that answered requests since its last
round (a reply says as much as a check), never more than MAX_EXCUSED rounds in a row, and
never for a node that is DOWN or not yet checked."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest
from shardkv.router.requests.health import (
    DOWN_POLL_S,
    MAX_EXCUSED,
    HealthMonitor,
    NodeHealth,
    NodeWentDown,
    while_up,
)


class Checks:
    """A check per node that answers serving (or a problem) and counts its calls."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}
        self.problem: str | None = None

    def of(self, node_id: str) -> Callable[[float], Awaitable[str | None]]:
        async def check(timeout_s: float) -> str | None:
            self.calls[node_id] = self.calls.get(node_id, 0) + 1
            return self.problem

        return check


@pytest.mark.timeout(10)
def test_a_busy_up_node_is_checked_once_every_few_rounds_and_an_idle_one_every_round() -> None:
    async def scenario() -> None:
        health = NodeHealth(["busy", "idle"])
        checks = Checks()
        monitor = HealthMonitor(
            {n: checks.of(n) for n in ("busy", "idle")}, health, interval_s=0.01, timeout_s=1
        )
        monitor.start()
        await asyncio.sleep(0.005)  # first round: both checked, both UP
        assert health.is_up("busy") and health.is_up("idle")
        rounds = 4 * (MAX_EXCUSED + 1)
        for _ in range(rounds):
            health.heard_from("busy")
            await asyncio.sleep(0.01)
        await monitor.stop()
        assert checks.calls["idle"] >= rounds - 2
        assert 3 <= checks.calls["busy"] <= rounds // 2, checks.calls

    asyncio.run(scenario())


@pytest.mark.timeout(10)
def test_replies_never_excuse_a_down_node_from_its_check() -> None:
    async def scenario() -> None:
        health = NodeHealth(["n1"])
        checks = Checks()
        checks.problem = "UNAVAILABLE: gone"
        monitor = HealthMonitor({"n1": checks.of("n1")}, health, interval_s=0.01, timeout_s=1)
        monitor.start()
        for _ in range(10):
            health.heard_from("n1")  # a late reply of a call sent before it went down
            await asyncio.sleep(0.01)
        await monitor.stop()
        assert health.down == frozenset({"n1"})
        assert checks.calls["n1"] >= 8
        checks.problem = None
        await monitor.check_all()
        assert health.is_up("n1") and health.down == frozenset()

    asyncio.run(scenario())


@pytest.mark.timeout(10)
def test_a_long_call_is_given_up_once_its_node_is_marked_down() -> None:
    """A store walk to a node that hangs would hold a repair pass for the walk's hour."""

    async def scenario() -> None:
        health = NodeHealth(["n1"])
        health.mark_up("n1")
        never = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_later(0.3, health.mark_down, "n1", "health check failed")
        started = asyncio.get_running_loop().time()
        with pytest.raises(NodeWentDown, match="n1 went DOWN"):
            await while_up(health, "n1", never)
        assert asyncio.get_running_loop().time() - started < 0.3 + 2 * DOWN_POLL_S
        assert never.cancelled()
        assert await while_up(health, "n1", asyncio.sleep(0, "done")) == "done"

    asyncio.run(scenario())


@pytest.mark.timeout(10)
def test_check_soon_checks_at_once_one_at_a_time_and_never_after_stop() -> None:
    """A call that used its whole time has its node checked at once (not at the next
    round): a node that answers stays UP, one that does not is DOWN; checks asked for
    while one runs are not added, and none is started once the monitor stopped."""

    async def scenario() -> None:
        health = NodeHealth(["n1"])
        checks = Checks()
        monitor = HealthMonitor({"n1": checks.of("n1")}, health, interval_s=60, timeout_s=1)
        monitor.start()
        await asyncio.sleep(0.01)  # the first round
        assert health.is_up("n1") and checks.calls["n1"] == 1
        monitor.check_soon("n1")
        monitor.check_soon("n1")
        await asyncio.sleep(0.01)
        assert health.is_up("n1") and checks.calls["n1"] == 2
        checks.problem = "DEADLINE_EXCEEDED: no answer"
        monitor.check_soon("n1")
        await asyncio.sleep(0.01)
        assert health.down == frozenset({"n1"}) and checks.calls["n1"] == 3
        await monitor.stop()
        monitor.check_soon("n1")
        await asyncio.sleep(0.01)
        assert checks.calls["n1"] == 3

    asyncio.run(scenario())


@pytest.mark.timeout(10)
@pytest.mark.parametrize("node_answers_after", [True, False], ids=["node fine", "node hung"])
def test_a_check_failed_across_a_local_pause_is_asked_again_before_down(
    node_answers_after: bool,
) -> None:
    """The router's loop stands still longer than half a check's timeout while a check is
    out (here the check itself holds the loop, as a SIGSTOP of the router or a VM not
    scheduled would) and the check fails: the node is asked again at once, and marked DOWN
    only if that fails too. A failure without a pause marks it DOWN at once."""

    async def scenario() -> None:
        health = NodeHealth(["n1"])
        calls = 0
        stall = True

        async def check(timeout_s: float) -> str | None:
            nonlocal calls
            calls += 1
            if stall and calls == 2:
                time.sleep(0.4)  # the loop stands still: a local pause
                return "DEADLINE_EXCEEDED: Deadline Exceeded"
            if calls == 1 or node_answers_after:
                return None
            return "DEADLINE_EXCEEDED: Deadline Exceeded"

        monitor = HealthMonitor({"n1": check}, health, interval_s=60, timeout_s=0.5)
        monitor.start()
        await asyncio.sleep(0.25)  # the first round, and ticks
        assert health.is_up("n1") and calls == 1
        monitor.check_soon("n1")
        await asyncio.sleep(0.05)
        assert calls == 3  # the failed check was asked again
        assert health.is_up("n1") is node_answers_after
        await monitor.stop()

    asyncio.run(scenario())


@pytest.mark.timeout(10)
def test_a_check_failed_without_a_local_pause_marks_the_node_down_at_once() -> None:
    async def scenario() -> None:
        health = NodeHealth(["n1"])
        checks = Checks()
        monitor = HealthMonitor({"n1": checks.of("n1")}, health, interval_s=60, timeout_s=0.5)
        monitor.start()
        await asyncio.sleep(0.25)
        checks.problem = "DEADLINE_EXCEEDED: no answer"
        monitor.check_soon("n1")
        await asyncio.sleep(0.05)
        assert health.down == frozenset({"n1"}) and checks.calls["n1"] == 2
        await monitor.stop()

    asyncio.run(scenario())
