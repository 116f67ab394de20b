"""Counting one key's replica replies until a quorum is reached, lost, or out of time.

A Quorum is decided as soon as ``needed`` replicas succeeded, or success became impossible,
or the deadline passed; it is settled when every reply is in (or the deadline passed).
Requests answer at decided; read repair runs at settled, so a slow stale replica is still
repaired without making the client wait for it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from functools import partial
from typing import Generic, TypeVar

from shardkv.router.coalescer import NodeFailure
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
    raise ValueError(f"unknown consistency level {consistency}")


class Quorum(Generic[T]):
    """The replies of one key's replicas, named by node (or by "fallback (hint for owner)")."""

    def __init__(self, needed: int, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        self.needed = needed
        self.ok: dict[str, T] = {}
        self.failed: dict[str, str] = {}
        self.decided: asyncio.Future[None] = loop.create_future()
        self.settled: asyncio.Future[None] = loop.create_future()
        self._pending: set[str] = set()
        self._started = False
        self._timer = loop.call_at(deadline, self._expire)

    @property
    def succeeded(self) -> bool:
        return len(self.ok) >= self.needed

    def add(
        self, name: str, reply: asyncio.Future[T | NodeFailure], on_failed: OnFailed | None = None
    ) -> None:
        """Counts reply when it arrives; on_failed may replace a failed replica."""
        self._pending.add(name)
        reply.add_done_callback(partial(self._on_reply, name, on_failed))

    def fail(self, name: str, reason: str) -> None:
        """Counts a replica that was not asked (its node is down and no fallback exists)."""
        self.failed[name] = reason

    def start(self) -> None:
        """Every replica has been added: a quorum with nothing pending decides now."""
        self._started = True
        self._check()

    def describe(self, action: str, key: bytes, replication: int) -> str:
        """Why the quorum failed: how many acknowledged of how many required, and who failed."""
        failures = [f"{name} ({reason})" for name, reason in sorted(self.failed.items())]
        failures += [f"{name} (no answer before the deadline)" for name in sorted(self._pending)]
        return (
            f"{action} of key {key[:64]!r}: {len(self.ok)} of {self.needed} required replicas"
            f" {'acknowledged' if action == 'write' else 'answered'} (N={replication});"
            f" failed: {', '.join(failures) or 'none'}"
        )

    def _on_reply(
        self, name: str, on_failed: OnFailed | None, reply: asyncio.Future[T | NodeFailure]
    ) -> None:
        if name not in self._pending:
            return  # arrived after the deadline
        result = reply.result()
        if isinstance(result, NodeFailure):
            self.failed[name] = str(result)
            if on_failed is not None and not self.decided.done():
                on_failed(result)
        else:
            self.ok[name] = result
        self._pending.discard(name)
        self._check()

    def _check(self) -> None:
        if not self._started:
            return
        if not self.decided.done() and (self.succeeded or not self._pending):
            self.decided.set_result(None)
        if not self._pending and not self.settled.done():
            self._timer.cancel()
            self.settled.set_result(None)

    def _expire(self) -> None:
        for name in self._pending:
            self.failed.setdefault(name, "no answer before the deadline")
        self._pending.clear()
        self._started = True
        self._check()
