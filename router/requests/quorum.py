"""Counting each key's replica replies until a quorum is reached, lost, or out of time.

A Quorum is decided as soon as ``needed`` replicas succeeded, or success became impossible,
or the deadline passed; it is settled when every reply is in (or the deadline passed).
Requests answer once every quorum of their group is decided; read repair runs at settled,
so a slow stale replica is still repaired without making the client wait for it.

Replies arrive as plain callbacks from the coalescer (no future per replica and key), and
one QuorumGroup per request holds the one deadline timer and the one future the request
awaits: a batch of a thousand keys costs no thousand timers or event-loop wake-ups.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from functools import partial
from typing import Generic, TypeVar

import grpc
from shardkv.common.limits import LimitExceeded
from shardkv.router.requests.coalescer import NodeFailure
from shardkv.v1 import kv_pb2

T = TypeVar("T")

# Called with a failed reply; may add() another replica in its place (a hint on a fallback).
OnFailed = Callable[[NodeFailure], None]


def replicas_needed(consistency: int, *, replication: int, default: int) -> int:
    """How many replicas must answer at a consistency level (DEFAULT = the cluster's R or W)."""
    if consistency == kv_pb2.ONE:
        return 1
    if consistency == kv_pb2.QUORUM:
        return replication // 2 + 1
    if consistency == kv_pb2.ALL:
        return replication
    if consistency == kv_pb2.CONSISTENCY_DEFAULT:
        return default
    raise LimitExceeded(f"unknown consistency level {consistency}")


class QuorumGroup(Generic[T]):
    """The quorums of one request, sharing its deadline."""

    def __init__(self, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        self._undecided = 0
        self._unsettled = 0
        self._all_decided: asyncio.Future[None] = loop.create_future()
        self._quorums: list[Quorum[T]] = []
        self._timer = loop.call_at(deadline, self._expire)

    def quorum(
        self,
        needed: int,
        on_settled: Callable[[Quorum[T]], None] | None = None,
        *,
        pending: tuple[str, ...] = (),
    ) -> Quorum[T]:
        """A key's quorum: needed replies, one more for each pending owner (one that does
        not count yet or is joining: placement.pending_owners)."""
        quorum = Quorum(self, needed + len(pending), on_settled, pending)
        self._quorums.append(quorum)
        self._undecided += 1
        self._unsettled += 1
        return quorum

    async def wait(self) -> None:
        """Starts every quorum and returns once each is decided."""
        for quorum in self._quorums:
            quorum.start()
        if self._undecided:
            await self._all_decided

    def _decided(self) -> None:
        self._undecided -= 1
        if not self._undecided and not self._all_decided.done():
            self._all_decided.set_result(None)

    def _settled(self) -> None:
        self._unsettled -= 1
        if not self._unsettled:
            self._timer.cancel()
            self._quorums.clear()

    def _expire(self) -> None:
        for quorum in list(self._quorums):
            quorum.expire()


class Quorum(Generic[T]):
    """The replies of one key's replicas, named by node (or by "fallback (hint for owner)")."""

    def __init__(
        self,
        group: QuorumGroup[T],
        needed: int,
        on_settled: Callable[[Quorum[T]], None] | None,
        pending: tuple[str, ...] = (),
    ) -> None:
        self.needed = needed
        # The owners that raised needed by one each, named when the quorum fails.
        self.pending_owners = pending
        # Every successful reply, counted or not (hints on fallbacks are not: add()).
        self.ok: dict[str, T] = {}
        # Successful replies that count toward needed.
        self.acks = 0
        self.failed: dict[str, str] = {}
        # Replicas that refused for lack of resources (store full, overloaded).
        self.exhausted: set[str] = set()
        self._group = group
        self._on_settled = on_settled
        self._pending: set[str] = set()
        # Replies that do not count toward needed (hints), and the counted ones awaited.
        self._uncounted: set[str] = set()
        self._counted_pending = 0
        self._started = False
        self._decided = False
        self._settled = False

    @property
    def succeeded(self) -> bool:
        return self.acks >= self.needed

    def add(
        self, name: str, on_failed: OnFailed | None = None, *, counts: bool = True
    ) -> Callable[[T | NodeFailure], None]:
        """Expects a reply from replica name; returns the callback that delivers it.

        on_failed may replace a failed replica before the quorum is decided. A reply that
        does not count (a hint on a fallback: it is not an owner's copy, and an owner's
        quorum read would not see it) is awaited before the quorum settles, never for its
        decision."""
        self._pending.add(name)
        if counts:
            self._counted_pending += 1
        else:
            self._uncounted.add(name)
        # A partial of a method, not a closure: one object per replica instead of a
        # function and its cells (this runs for every replica of every key).
        return partial(self._deliver, name, on_failed)

    def _deliver(self, name: str, on_failed: OnFailed | None, result: T | NodeFailure) -> None:
        if name not in self._pending:
            return  # arrived after the deadline
        counts = not self._uncounted or name not in self._uncounted
        if counts:
            self._counted_pending -= 1
        self._pending.discard(name)
        if isinstance(result, NodeFailure):
            self.failed[name] = str(result)
            if result.code == grpc.StatusCode.RESOURCE_EXHAUSTED:
                self.exhausted.add(name)
            if on_failed is not None and not self._decided:
                on_failed(result)
        else:
            self.ok[name] = result
            if counts:
                self.acks += 1
        self._check()

    def fail(self, name: str, reason: str) -> None:
        """Counts a replica that was not asked (its node is down and no fallback exists)."""
        self.failed[name] = reason

    def start(self) -> None:
        """Every replica has been added: a quorum with nothing pending decides now."""
        self._started = True
        self._check()

    def expire(self) -> None:
        """The deadline passed: whoever has not answered counts as failed."""
        for name in self._pending:
            self.failed.setdefault(name, "no answer before the deadline")
        self._pending.clear()
        self._counted_pending = 0
        self._started = True
        self._check()

    def failure_code(self) -> grpc.StatusCode:
        """The status of a failed quorum: RESOURCE_EXHAUSTED when a replica refused for lack
        of resources (retrying at once will not help, so the SDK must not), else
        UNAVAILABLE."""
        if self.exhausted:
            return grpc.StatusCode.RESOURCE_EXHAUSTED
        return grpc.StatusCode.UNAVAILABLE

    def describe(self, action: str, key: bytes, replication: int) -> str:
        """Why the quorum failed: how many acknowledged of how many required, who failed,
        and which pending owners raised the count (at ALL, one that does not count makes
        the count more than the owners: such a read or write fails until it counts)."""
        failures = [f"{name} ({reason})" for name, reason in sorted(self.failed.items())]
        failures += [f"{name} (no answer before the deadline)" for name in sorted(self._pending)]
        hints = sorted(name for name in self.ok if name in self._uncounted)
        extra = ""
        if self.pending_owners:
            owners = ", ".join(self.pending_owners)
            extra = f"; one more for each owner not counted yet or joining: {owners}"
        return (
            f"{action} of key {key[:64]!r}: {self.acks} of {self.needed} required replicas"
            f" {'acknowledged' if action == 'write' else 'answered'} (N={replication}{extra});"
            f" failed: {', '.join(failures) or 'none'}"
            + (f"; parked, not counted toward the quorum: {', '.join(hints)}" if hints else "")
        )

    def _check(self) -> None:
        if not self._started:
            return
        if not self._decided and (self.succeeded or not self._counted_pending):
            self._decided = True
            self._group._decided()
        if not self._pending and not self._settled:
            self._settled = True
            if self._on_settled is not None:
                self._on_settled(self)
            self._group._settled()
