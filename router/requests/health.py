"""Whether each node is up: the router's belief, and the loop of health checks that feeds it.

A node is DOWN after a failed health check or an internal call it refused (UNAVAILABLE),
and UP again after a successful check. A call that used its whole time (node_call_ms for
a read, the request's bound for a write) has the node checked at once (``check_soon``): a
hung node fails that check, a node whose disk stalls passes it and stays UP, its reads
(from memory) still served.
Every transition is logged once. A DOWN node stays on the ring: requests route around it
(reads do not ask it, writes leave a hint for it) and it is never re-placed by a timeout.
A node that comes back from DOWN may have missed writes: listeners registered with
``on_return`` (hint hand-off, anti-entropy) are told at once.

A check that fails while this router itself stood still (a process stopped, a VM not
scheduled, a loop held by long work) says nothing of the node: its deadline passed on our
side. The monitor notes such local pauses with a ticker, and a check that failed across
one is asked again at once before the node is marked DOWN (Cassandra's failure detector
likewise convicts nobody after a local pause).

A node that answered a request since its last check needs no check this round: a reply
says as much as a health check, and under load the checks would otherwise cost the
router a call per node every interval, growing with the cluster. Only an UP node is
excused (DOWN and unchecked nodes become UP through a check alone), and never for more
than ``MAX_EXCUSED`` rounds in a row, so a node that goes NOT_SERVING while still
answering (a graceful stop) is seen within a few intervals.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import TypeAlias, TypeVar

from shardkv.v1 import admin_pb2

NodeState: TypeAlias = admin_pb2.NodeState

log = logging.getLogger(__name__)

T = TypeVar("T")

# Rounds in a row a node's check may be skipped because it answered requests meanwhile.
MAX_EXCUSED = 4
# How often the monitor's ticker runs; a gap between ticks longer than this plus half the
# check timeout is a local pause.
TICK_S = 0.1

UNKNOWN: NodeState = admin_pb2.NODE_STATE_UNKNOWN
UP: NodeState = admin_pb2.UP
DOWN: NodeState = admin_pb2.DOWN


class NodeHealth:
    """What this router believes about each node's state, and why it was last marked down."""

    def __init__(self, node_ids: Iterable[str]) -> None:
        self._state: dict[str, NodeState] = dict.fromkeys(node_ids, UNKNOWN)
        self._error: dict[str, str] = {}
        self._on_return: list[Callable[[str], None]] = []
        # Nodes marked DOWN, kept as one set so a batch checks its owners against it once.
        self._down: frozenset[str] = frozenset()
        # Per node, how many replies it sent since the health monitor last looked.
        self._heard: dict[str, int] = {}

    def on_return(self, listener: Callable[[str], None]) -> None:
        """Calls listener(node_id), on the event loop, each time a node goes from DOWN to
        UP. A listener must return quickly (start a task for real work)."""
        self._on_return.append(listener)

    def add(self, node_id: str) -> None:
        """Tracks a node that joined the topology (UNKNOWN until checked). A node that left
        keeps its entry: calls still in flight to it may report on it."""
        self._state.setdefault(node_id, UNKNOWN)

    def state(self, node_id: str) -> NodeState:
        return self._state[node_id]

    def is_down(self, node_id: str) -> bool:
        """True only for a node seen failing; a node not checked yet is tried."""
        return bool(self._state[node_id] == DOWN)

    def is_up(self, node_id: str) -> bool:
        return bool(self._state[node_id] == UP)

    @property
    def down(self) -> frozenset[str]:
        """Every node marked DOWN."""
        return self._down

    def heard_from(self, node_id: str) -> None:
        """The node answered a request (a data call succeeded)."""
        self._heard[node_id] = self._heard.get(node_id, 0) + 1

    def take_heard(self, node_id: str) -> bool:
        """Whether the node answered a request since the last call, and forgets it."""
        return bool(self._heard.pop(node_id, 0))

    def last_error(self, node_id: str) -> str:
        return self._error.get(node_id, "") if self._state[node_id] == DOWN else ""

    def mark_up(self, node_id: str) -> None:
        was = self._state[node_id]
        if was == UP:
            return
        log.info("node_up node=%s was=%s", node_id, admin_pb2.NodeState.Name(was))
        self._state[node_id] = UP
        self._down = self._down - {node_id}
        if was == DOWN:
            for listener in self._on_return:
                try:
                    listener(node_id)
                except Exception:
                    log.exception("a listener failed on the return of node %s", node_id)

    def mark_down(self, node_id: str, reason: str) -> None:
        self._error[node_id] = reason
        if self._state[node_id] != DOWN:
            log.warning("node_down node=%s reason=%r", node_id, reason)
            self._state[node_id] = DOWN
            self._down = self._down | {node_id}


class NodeWentDown(Exception):
    """A node was marked DOWN while a long call to it ran; the call was given up."""


# How often a long call checks whether its node went DOWN.
DOWN_POLL_S = 0.5


async def while_up(health: NodeHealth, node_id: str, call: Awaitable[T]) -> T:
    """Awaits call, given up (NodeWentDown) once node_id is marked DOWN. A bulk call (a
    store walk gets an hour) to a node that hangs, stopped or cut off without a reset,
    would otherwise hold its caller for its whole deadline, while the health checks see
    the node DOWN within a second or two."""
    task = asyncio.ensure_future(call)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=DOWN_POLL_S)
            if done:
                return task.result()
            if health.is_down(node_id):
                raise NodeWentDown(f"{node_id} went DOWN ({health.last_error(node_id)})")
    finally:
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


class HealthMonitor:
    """Checks every node every interval and records the outcome in a NodeHealth."""

    def __init__(
        self,
        checks: Mapping[str, Callable[[float], Awaitable[str | None]]],
        health: NodeHealth,
        *,
        interval_s: float,
        timeout_s: float,
    ) -> None:
        """checks maps a node id to a call that returns None when the node is serving and
        the reason otherwise, given a timeout in seconds."""
        self._checks = dict(checks)
        self._health = health
        self._interval_s = interval_s
        self._timeout_s = timeout_s
        self._tasks: dict[str, asyncio.Task[None]] = {}
        # Checks out of turn (check_soon), one at a time per node.
        self._soon: dict[str, asyncio.Task[None]] = {}
        self._started = False
        # The ticker (loop time of its last run) and when the last local pause ended.
        self._ticker: asyncio.TimerHandle | None = None
        self._last_tick = 0.0
        self._paused_until = float("-inf")

    def start(self) -> None:
        self._started = True
        self._tick()
        for node_id, check in self._checks.items():
            self._spawn(node_id, check)

    def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        if self._stood_still():
            self._paused_until = loop.time()
            log.info("this router stood still for %.2fs", loop.time() - self._last_tick)
        self._last_tick = loop.time()
        self._ticker = loop.call_later(TICK_S, self._tick)

    def _stood_still(self) -> bool:
        """Whether the ticker is overdue by more than half a check's timeout: the loop (or
        the whole process) stood still since it last ran."""
        late = asyncio.get_running_loop().time() - self._last_tick - TICK_S
        return bool(self._last_tick) and late > self._timeout_s / 2

    def watch(self, node_id: str, check: Callable[[float], Awaitable[str | None]]) -> None:
        """Starts checking a node that joined the topology."""
        self._health.add(node_id)
        self._checks[node_id] = check
        if self._started and node_id not in self._tasks:
            self._spawn(node_id, check)

    def unwatch(self, node_id: str) -> None:
        """Stops checking a node that left the topology."""
        self._checks.pop(node_id, None)
        for task in (self._tasks.pop(node_id, None), self._soon.pop(node_id, None)):
            if task is not None:
                task.cancel()

    def _spawn(self, node_id: str, check: Callable[[float], Awaitable[str | None]]) -> None:
        self._tasks[node_id] = asyncio.create_task(
            self._watch(node_id, check), name=f"health-{node_id}"
        )

    def check_soon(self, node_id: str) -> None:
        """Checks node_id now, outside its round (a call to it used its whole time): a
        node that hangs is DOWN within the check's timeout, one that is merely slow stays
        UP. One such check runs at a time per node; the others are not needed."""
        check = self._checks.get(node_id)
        if check is None or node_id in self._soon or not self._started:
            return
        task = asyncio.get_running_loop().create_task(self._check(node_id, check))
        self._soon[node_id] = task
        task.add_done_callback(lambda _: self._soon.pop(node_id, None))

    async def check_all(self) -> None:
        """One round of checks of every node, at once (used at start-up)."""
        await asyncio.gather(*(self._check(n, c) for n, c in self._checks.items()))

    async def stop(self) -> None:
        self._started = False  # calls failing as the router stops ask for no more checks
        if self._ticker is not None:
            self._ticker.cancel()
        tasks = [*self._tasks.values(), *self._soon.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _watch(self, node_id: str, check: Callable[[float], Awaitable[str | None]]) -> None:
        loop = asyncio.get_running_loop()
        health = self._health
        excused = 0
        while True:
            started = loop.time()
            # Replies since the last round stand in for a check of an UP node (see above).
            answered = health.take_heard(node_id)
            if answered and excused < MAX_EXCUSED and health.is_up(node_id):
                excused += 1
            else:
                excused = 0
                await self._check(node_id, check)
            await asyncio.sleep(max(0.0, self._interval_s - (loop.time() - started)))

    async def _check(self, node_id: str, check: Callable[[float], Awaitable[str | None]]) -> None:
        started = asyncio.get_running_loop().time()
        problem = await check(self._timeout_s)
        if problem is not None and (self._paused_until >= started or self._stood_still()):
            log.info("%s's check failed across a local pause (%s): again", node_id, problem)
            problem = await check(self._timeout_s)
        if problem is None:
            self._health.mark_up(node_id)
        else:
            self._health.mark_down(node_id, f"health check failed: {problem}")
