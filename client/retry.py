"""The retry policy as a frozen value, and the pure decision of whether and when to retry.

No I/O and no sleeping here: the sync and async shells run the loop (``time.sleep`` vs
``asyncio.sleep``) and ask ``RetryPolicy.delay`` what to do after each failed attempt, as
redis-py splits ``backoff.py`` from its two ``retry.py`` loops. The policy holds no
counters, so one value is safely shared by every call and thread.

What is retried: only UNAVAILABLE (which is also how gRPC reports a refused or dropped
connection). Every KV operation is safe to retry on it:

- reads have no effect;
- a retried Put or Delete writes the same value (or tombstone) again under a newer
  version, so whether the first attempt was applied or not, the key ends in the state the
  caller asked for. (Between the two attempts another writer's value could be overwritten
  by the repeat: the same last-write-wins outcome as if the caller had written a little
  later.) The repeat happens only while the caller still waits: a coalesced batch retries
  only the items whose callers have not given up (``coalesce.Awaited``), so a write that
  answered DeadlineExceeded never lands after its caller's next write.

A batch reply's per-item UNAVAILABLE (the router could not reach enough replicas of that
key) is raised, not retried: the router has already tried every replica it knows.

DEADLINE_EXCEEDED is never retried: the call's time is spent, and a write's outcome is
unknown (see ``errors.DeadlineExceeded``).

Admin calls with a lasting effect (AddNode, RemoveNode, Repair) are not repeatable: after
UNAVAILABLE they only fail over, at once, to a router the call has not tried (see
``shardkv.client.admin``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import grpc

RETRYABLE_CODES = frozenset({grpc.StatusCode.UNAVAILABLE})


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how patiently a call is repeated after UNAVAILABLE.

    Attempt n (n >= 1 failed attempts so far) waits a back-off of
    ``min(max_backoff, initial_backoff * multiplier ** (n - 1))`` seconds, drawn uniformly
    from [0, that] when ``jitter`` is on ("full jitter": concurrent clients do not retry in
    lock step). A retry that can go to another router not yet tried by this call goes at
    once: the back-off is for waiting out a failure, not for leaving a dead server.

    Retries are bounded three ways: ``max_attempts`` in total (1 = never retry), no new
    attempt after ``deadline`` seconds since the first one (None = no bound of its own),
    and never beyond the call's own timeout.
    """

    max_attempts: int = 4
    initial_backoff: float = 0.05
    max_backoff: float = 1.0
    multiplier: float = 2.0
    jitter: bool = True
    deadline: float | None = None

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {self.max_attempts}")
        if self.initial_backoff < 0 or self.max_backoff < 0:
            raise ValueError("back-off times must not be negative")
        if self.multiplier < 1:
            raise ValueError(f"multiplier must be at least 1, got {self.multiplier}")
        if self.deadline is not None and self.deadline <= 0:
            raise ValueError(f"deadline must be positive, got {self.deadline}")

    def backoff(self, failed_attempts: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed_attempts failures (>= 1) before the next attempt."""
        growth = self.multiplier ** (failed_attempts - 1)
        ceiling = min(self.max_backoff, self.initial_backoff * growth)
        if not self.jitter:
            return ceiling
        return (rng or random).uniform(0.0, ceiling)

    def delay(
        self,
        code: grpc.StatusCode,
        *,
        failed_attempts: int,
        elapsed: float,
        remaining: float,
        untried_target: bool,
        repeatable: bool = True,
        rng: random.Random | None = None,
    ) -> float | None:
        """Seconds to wait before the next attempt, or None to give up and raise.

        code: status of the last attempt; failed_attempts: attempts made so far;
        elapsed: seconds since the first attempt; remaining: seconds left of the call's
        timeout; untried_target: another router this call has not tried yet exists;
        repeatable: False for a call that must not reach one router twice, which then
        only fails over to an untried router (0) or gives up (None).
        """
        if code not in RETRYABLE_CODES or failed_attempts >= self.max_attempts:
            return None
        if not repeatable and not untried_target:
            return None
        wait = 0.0 if untried_target else self.backoff(failed_attempts, rng)
        if wait >= remaining:
            return None
        if self.deadline is not None and elapsed + wait > self.deadline:
            return None
        return wait


DEFAULT_RETRY = RetryPolicy()
