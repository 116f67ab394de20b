"""Versions: a hybrid logical clock, so versions from one writer only ever increase.

A version is milliseconds since the Unix epoch << 16 | a 16-bit logical counter. Two writers
that pick the same version are told apart by a writer number derived from the writer's id,
and two records with the same (version, writer) by their contents (``precedes``), so every
replica orders any two records the same way (last write wins).

A clock refuses versions further ahead of its wall clock than a maximum offset (as
CockroachDB's --max-offset): it never adopts one it observes (``observe``), and a version
that enters from outside is checked with ``check``. A clock with a state file keeps a
reservation in a small file: it never hands out a version above the reserved bound, a
thread renews the bound ahead of time (no fsync per version, none on the caller's thread
unless the reservation ran out), and a restarted clock starts above the bound it left, so
its versions never go back across restarts, whatever the wall clock did meanwhile. The
file is also held under an exclusive lock (flock) while the clock runs: two processes on
one host can never use the same writer id (shardkv.common.clock_state).
"""

from __future__ import annotations

import logging
import threading
import time
import zlib
from collections.abc import Callable, Iterable
from typing import Protocol, TypeVar

from shardkv.common.limits import LimitExceeded

log = logging.getLogger(__name__)

LOGICAL_BITS = 16
MAX_VERSION = (1 << 64) - 1
# CockroachDB's default --max-offset: NTP keeps hosts within milliseconds of each other, so
# half a second refuses no healthy write, yet bounds how far ahead of real time a wrong
# clock can push a version (and so how long its records beat later writes).
DEFAULT_MAX_OFFSET_MS = 500
# How far ahead of the clock a reservation reaches (renewed at half of it used up); never
# more than half the max offset, so a router restarted at once starts within it.
DEFAULT_RESERVE_MS = 250
# How long a version waits for a reservation that ran out before the call fails.
RESERVE_TIMEOUT_S = 5.0
# At most one warning per this many seconds about versions ignored by observe().
_WARN_EVERY_S = 10.0


class VersionAhead(LimitExceeded):
    """A version is further ahead of the local wall clock than the max clock offset."""


class ClockStateError(OSError):
    """The clock's state file cannot be used: another process holds the writer id, or the
    file cannot be read or written. The message names the file."""


class Versioned(Protocol):
    """A record as the shared comparison sees it (shardd Record, replica_pb2.Record)."""

    @property
    def version(self) -> int: ...
    @property
    def writer(self) -> int: ...
    @property
    def tombstone(self) -> bool: ...
    @property
    def value(self) -> bytes: ...


V = TypeVar("V", bound=Versioned)


def writer_number(writer_id: str) -> int:
    """The 32-bit tie-break number of a router or node id (stable across processes)."""
    return zlib.crc32(writer_id.encode())


def version_millis(version: int) -> int:
    """The wall-clock milliseconds a version was assigned at."""
    return version >> LOGICAL_BITS


def precedes(a: Versioned, b: Versioned) -> bool:
    """Whether record a loses to record b of the same key, the same on every replica and
    router: the higher (version, writer) wins; on a tie a tombstone beats a value, then
    the greater value bytes win, so equal stamps with different contents still converge."""
    if a.version != b.version or a.writer != b.writer:
        return (a.version, a.writer) < (b.version, b.writer)
    if a.tombstone or b.tombstone:
        return b.tombstone and not a.tombstone
    return a.value < b.value


def newest(records: Iterable[V]) -> V:
    """The record every replica would keep (records must not be empty)."""
    items = iter(records)
    best = next(items)
    for record in items:
        if precedes(best, record):
            best = record
    return best


class Reservation(Protocol):
    """Where a clock persists the bound its versions stay under (ClockState, or a fake)."""

    @property
    def reserved(self) -> int: ...
    def save(self, bound: int) -> None: ...
    def close(self) -> None: ...


class HybridClock:
    """Hands out strictly increasing versions that stay close to wall-clock time.

    wall is the wall clock in seconds (a test hook); offset_s shifts it, so tests can skew
    one router without touching the machine's clock. max_offset_ms None turns the offset
    checks off. With state, versions never exceed the persisted reservation; call close().
    """

    def __init__(
        self,
        *,
        offset_s: float = 0.0,
        wall: Callable[[], float] = time.time,
        max_offset_ms: int | None = DEFAULT_MAX_OFFSET_MS,
        state: Reservation | None = None,
        reserve_ms: int = DEFAULT_RESERVE_MS,
    ) -> None:
        self._offset_s = offset_s
        self._wall = wall
        self._max_offset_ms = max_offset_ms
        self._last = 0
        self._cond = threading.Condition(threading.Lock())
        self.ignored = 0  # versions observe() refused, for metrics and tests
        self._warned = -_WARN_EVERY_S
        self._state = state
        self._thread: threading.Thread | None = None
        half = (max_offset_ms or 2 * reserve_ms) // 2
        self._reserve_ms = max(1, min(reserve_ms, half))
        self._reserved = MAX_VERSION
        self._renew = False
        self._closed = False
        self._failure = ""
        if state is None:
            return
        self._last = self._reserved = state.reserved
        ahead = version_millis(self._last) - self.wall_ms()
        if max_offset_ms is not None and ahead > max_offset_ms:
            log.warning(
                "clock reservation %d is %d ms ahead of the wall clock (max clock offset %d"
                " ms): the wall clock went back; writes are refused until it catches up",
                self._last,
                ahead,
                max_offset_ms,
            )
        bound = self._bound()
        state.save(bound)
        self._reserved = bound
        self._thread = threading.Thread(target=self._renew_loop, name="hlc-reserve", daemon=True)
        self._thread.start()

    def wall_ms(self) -> int:
        """This clock's wall clock, in milliseconds since the Unix epoch."""
        return int((self._wall() + self._offset_s) * 1000)

    def now(self) -> int:
        """A version greater than every version this clock gave or observed before."""
        return self.now_many(1)

    def now_many(self, count: int) -> int:
        """The first of count (>= 1) consecutive versions, all above every version given or
        observed before. Raises VersionAhead when the last is beyond the max offset (the
        wall clock went back more), ClockStateError when the reservation ran out."""
        if count < 1:
            raise ValueError(f"count must be at least 1, not {count}")
        with self._cond:
            deadline = time.monotonic() + RESERVE_TIMEOUT_S
            while True:
                wall_ms = self.wall_ms()
                first = max(wall_ms << LOGICAL_BITS, self._last + 1)
                last = first + count - 1
                self._refuse_ahead(last, wall_ms, "this clock's next version")
                if self._state is None or last <= self._reserved:
                    break
                self._wait_for_renewal(deadline)
            self._last = last
            if self._state is not None and self._due(last):
                self._renew = True
                self._cond.notify_all()
            return first

    def observe(self, version: int) -> bool:
        """Moves the clock past a version seen elsewhere, so later writes order after it.
        One it is already past changes nothing: True at once, without the lock (a router
        observes every batch it reads). Else a version beyond the max offset is ignored
        (logged, counted): returns False."""
        if version <= self._last:  # _last only grows
            return True
        wall_ms = self.wall_ms()
        if version > MAX_VERSION or self._ahead_ms(version, wall_ms) is not None:
            self._ignore(version, wall_ms)
            return False
        with self._cond:
            self._last = max(self._last, version)
            if self._state is not None and self._due(self._last):
                self._renew = True
                self._cond.notify_all()
        return True

    def check(self, version: int, what: str) -> None:
        """Raises VersionAhead naming what, the version, the wall clock and the limit when
        version is further ahead of the wall clock than the max offset."""
        self._refuse_ahead(version, self.wall_ms(), what)

    def close(self) -> None:
        """Stops renewing and releases the state file (and with it the writer id)."""
        if self._state is None:
            return
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()
        self._state.close()

    def _ahead_ms(self, version: int, wall_ms: int) -> int | None:
        """How far version is ahead of wall_ms when that is beyond the max offset."""
        ahead = version_millis(version) - wall_ms
        if self._max_offset_ms is None or ahead <= self._max_offset_ms:
            return None
        return ahead

    def _refuse_ahead(self, version: int, wall_ms: int, what: str) -> None:
        if version > MAX_VERSION:
            raise VersionAhead(f"{what} has version {version}, beyond the largest, 2^64-1")
        ahead = self._ahead_ms(version, wall_ms)
        if ahead is not None:
            raise VersionAhead(
                f"{what} has version {version} (wall time {version_millis(version)} ms),"
                f" {ahead} ms ahead of the local wall clock ({wall_ms} ms since the epoch):"
                f" beyond the max clock offset of {self._max_offset_ms} ms"
            )

    def _ignore(self, version: int, wall_ms: int) -> None:
        self.ignored += 1
        if time.monotonic() - self._warned >= _WARN_EVERY_S:
            self._warned = time.monotonic()
            log.warning(
                "ignored version %d: %d ms ahead of the wall clock (%d ms), beyond the max"
                " clock offset of %s ms (%d ignored so far)",
                version,
                version_millis(version) - wall_ms,
                wall_ms,
                self._max_offset_ms,
                self.ignored,
            )

    def _due(self, version: int) -> bool:
        """Whether version used up half of the reservation's lead (self._cond held, here on)."""
        return version_millis(version) + self._reserve_ms // 2 >= version_millis(self._reserved)

    def _bound(self) -> int:
        """The next reservation: every version up to reserve_ms past the clock."""
        millis = max(version_millis(self._last), self.wall_ms()) + self._reserve_ms
        return min(MAX_VERSION, ((millis + 1) << LOGICAL_BITS) - 1)

    def _wait_for_renewal(self, deadline: float) -> None:
        self._renew = True
        self._cond.notify_all()
        left = deadline - time.monotonic()
        if left <= 0 or self._closed:
            raise ClockStateError(
                f"the clock reservation (up to version {self._reserved}) could not be"
                f" renewed within {RESERVE_TIMEOUT_S:g} s"
                + (f": {self._failure}" if self._failure else "")
            )
        self._cond.wait(left)

    def _renew_loop(self) -> None:
        """Renews the reservation every half lead, and at once when a version asks."""
        assert self._state is not None
        while True:
            with self._cond:
                if not self._renew and not self._closed:
                    self._cond.wait(self._reserve_ms / 2000)
                if self._closed:
                    return
                self._renew = False
                bound = self._bound()
            try:
                self._state.save(bound)
            except OSError as err:
                log.error("cannot renew the clock reservation: %s", err)
                with self._cond:
                    self._failure = str(err)
                time.sleep(self._reserve_ms / 2000)
                continue
            with self._cond:
                self._reserved = max(self._reserved, bound)
                self._failure = ""
                self._cond.notify_all()
