"""What ``Client`` and ``AsyncClient`` hold in common: their options and the per-call
bookkeeping of deadlines, consistency and retries. No I/O; each shell adds its own
channels, its own sleeping and its own batchers."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import grpc
from shardkv.common import requestid
from shardkv.common.limits import DEFAULT_LIMITS

from .core import MAYBE_STORED, Consistency, check_level
from .errors import ClientClosed, DeadlineExceeded, ShardKVError, from_rpc_error
from .retry import RetryPolicy
from .transport import Targets, TLSConfig, auth_metadata, plaintext_token_targets, split_targets

log = logging.getLogger(__name__)

# Batch calls per batcher (kind of call x consistency) running at once: enough that one
# slow call does not stall the others, few enough that batches stay large. Measured with
# 32 threads sharing a Client against one shardd, 2 beat 4 (~6-7k vs ~5k ops/s: fewer,
# larger batches contend less for the GIL); with 256 asyncio tasks the two were alike.
MAX_IN_FLIGHT = 2
MAX_BATCH = DEFAULT_LIMITS.max_batch_items
# The longest timeout a call may be given: a week. Longer ones would overflow what carries
# a deadline (a frame's 32-bit milliseconds end at 49 days, gRPC's nanoseconds at 292
# years from now, 9.2e9 s), and math.inf is no deadline at all.
MAX_TIMEOUT_S = 7 * 24 * 3600.0
# A call's time ran out at a router, or the router could not be reached: it is passed over
# for a while (transport.Targets), so a hung router holds one call, not every other one.
_PASS_OVER = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
# Whole-call errors after which a write is known not to be stored: the router refused it,
# or it was never sent (no connection could be made; a frame the router said it did not
# read). After any other (the router died or hung with it, or timed out itself) it may be.
_REFUSED = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.UNAUTHENTICATED,
    }
)
_NOT_SENT = ("failed to connect to all addresses", "DNS resolution failed", "was not read")


def check_timeout(seconds: float) -> float:
    """seconds as given, or ValueError naming it and the bound: a timeout must be more than
    0 and at most MAX_TIMEOUT_S (not inf, not NaN). The one check of both clients, for
    their default and for each call's."""
    if not 0 < seconds <= MAX_TIMEOUT_S:  # NaN compares false
        raise ValueError(
            f"timeout of {seconds!r} s is out of range: it must be more than 0 and at most"
            f" {MAX_TIMEOUT_S:g} s (MAX_TIMEOUT_S, a week)"
        )
    return seconds


@dataclass(slots=True)
class Attempts:
    """The retry bookkeeping of one call: which routers it tried and since when; for a
    write, the first attempt that may have stored it (router and error)."""

    deadline: float
    write: bool = False
    started: float = field(default_factory=time.monotonic)
    tried: list[str] = field(default_factory=list)
    sent: tuple[str, grpc.RpcError] | None = None

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def failed(self, target: str, err: grpc.RpcError) -> None:
        """Notes an attempt's failure: for a write, whether it may have been stored."""
        if not self.write or self.sent is not None or err.code() in _REFUSED:
            return
        not_sent = err.code() is grpc.StatusCode.UNAVAILABLE
        if not (not_sent and any(s in (err.details() or "") for s in _NOT_SENT)):
            self.sent = (target, err)

    def final(self, error: ShardKVError) -> ShardKVError:
        """error as the call raises it: a write's says so when an attempt may have stored
        it, and is caused by that attempt's error (a later one may only have been refused
        a connection to the router that died with it)."""
        if self.sent is None:
            return error
        target, err = self.sent
        first = "" if err is error.__cause__ else f" (sent to {target}: {err.details()})"
        unknown = type(error)(
            f"{error.details}{MAYBE_STORED}{first}",
            code=error.code,
            target=error.target,
            keys=error.keys,
        )
        unknown.__cause__ = err
        return unknown


class ClientBase:
    """Options and per-call helpers shared by both shells (see ``Client`` for the docs)."""

    def __init__(
        self,
        targets: str | Sequence[str],
        *,
        timeout: float,
        consistency: Consistency | None,
        retry: RetryPolicy,
        tls: TLSConfig | None,
        bearer_token: str | None,
    ) -> None:
        check_timeout(timeout)
        self._targets = Targets(split_targets(targets))
        self._timeout = timeout
        self._consistency = check_level(consistency)
        self._retry = retry
        self._tls = tls
        self._metadata = auth_metadata(bearer_token)
        # Set by close(): every call then fails with ClientClosed (_check_open), and a call
        # asleep in a back-off wakes (Client's waits on it, AsyncClient's on its own).
        self._closing = threading.Event()
        exposed = plaintext_token_targets(self._targets.addresses, tls, bearer_token)
        if exposed:  # once per client: here, not per call
            log.warning(
                "the bearer token goes in plaintext to %s, where anyone on the path can read"
                " it; use TLS (tls=TLSConfig(...)) beyond loopback",
                ", ".join(exposed),
            )

    @property
    def targets(self) -> list[str]:
        """The router addresses this client spreads its calls over."""
        return list(self._targets.addresses)

    def _deadline(self, timeout: float | None) -> float:
        """The time.monotonic() by which a call must be answered."""
        seconds = self._timeout if timeout is None else check_timeout(timeout)
        return time.monotonic() + seconds

    def _stream_deadline(self, timeout: float | None) -> float:
        """A stream's deadline: none (infinity) unless timeout is given."""
        return math.inf if timeout is None else self._deadline(timeout)

    def _check_open(self, method: str, cause: BaseException | None = None) -> None:
        """ClientClosed once close() was called: before each attempt of a call, so that a
        call never reopens what close() closed, and one in flight when it was closed
        fails (its retry too) rather than waiting for its timeout."""
        if self._closing.is_set():
            raise ClientClosed(f"{method}: the client was closed") from cause

    def _call_metadata(self) -> tuple[tuple[str, str], ...]:
        """The bearer token (if any) and the request id of one RPC: the caller's (set with
        ``request_id``) or a fresh one. Retries of the RPC keep the same id."""
        rid = requestid.current.get() or requestid.new_id()
        return (*(self._metadata or ()), (requestid.HEADER, rid))

    def _level(self, consistency: Consistency | None) -> Consistency | None:
        """The call's level, else the client's (None = the cluster's default)."""
        return self._consistency if consistency is None else check_level(consistency)

    def _next_target(
        self, attempts: Attempts, method: str, *, in_order: bool = False
    ) -> tuple[str, float | None]:
        """The router for the next attempt and the seconds it may take (None: no bound).
        KV calls go round robin, Admin calls in_order (see ``shardkv.client.admin``)."""
        remaining = attempts.remaining()
        if remaining <= 0:
            last = f" (last tried {attempts.tried[-1]})" if attempts.tried else ""
            late = DeadlineExceeded(f"{method}: timeout passed before an answer{last}")
            error = attempts.final(late)
            raise error from error.__cause__
        target = self._targets.pick(attempts.tried, in_order=in_order)
        attempts.tried.append(target)
        return target, None if math.isinf(remaining) else remaining

    def _after_failure(
        self, attempts: Attempts, target: str, err: grpc.RpcError, *, repeatable: bool = True
    ) -> tuple[ShardKVError, float | None]:
        """The error to raise (``from`` its ``__cause__``) if the call ends here, and how long
        to wait before retrying (None: raise); a call that is not repeatable only fails
        over (see ``RetryPolicy.delay``). A write's error says when it may be stored."""
        attempts.failed(target, err)
        error = attempts.final(from_rpc_error(err, target=target))
        now = time.monotonic()
        wait = self._retry.delay(
            error.code,
            failed_attempts=len(attempts.tried),
            elapsed=now - attempts.started,
            remaining=attempts.deadline - now,
            untried_target=self._targets.untried(attempts.tried),
            repeatable=repeatable,
        )
        if error.code in _PASS_OVER:
            self._targets.failed(target)
        return error, wait

    def _succeeded(self, target: str) -> None:
        self._targets.succeeded(target)
