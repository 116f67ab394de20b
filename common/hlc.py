"""Versions: a hybrid logical clock, so versions from one writer only ever increase.

A version is milliseconds since the Unix epoch << 16 | a 16-bit logical counter. Two writers
that pick the same version are told apart by a writer number derived from the writer's id,
so every replica orders any two records the same way (last write wins).
"""

from __future__ import annotations

import threading
import time
import zlib
from collections.abc import Callable

LOGICAL_BITS = 16
_LOGICAL_MASK = (1 << LOGICAL_BITS) - 1


def writer_number(writer_id: str) -> int:
    """The 32-bit tie-break number of a router or node id (stable across processes)."""
    return zlib.crc32(writer_id.encode())


def version_millis(version: int) -> int:
    """The wall-clock milliseconds a version was assigned at."""
    return version >> LOGICAL_BITS


class HybridClock:
    """Hands out strictly increasing versions that stay close to wall-clock time.

    offset_s shifts this clock against the system clock: tests use it to simulate skew
    between routers without touching the machine's clock.
    """

    def __init__(self, *, offset_s: float = 0.0, wall: Callable[[], float] = time.time) -> None:
        self._offset_s = offset_s
        self._wall = wall
        self._last = 0
        self._lock = threading.Lock()

    def now(self) -> int:
        """A version greater than every version this clock gave or observed before."""
        physical = int((self._wall() + self._offset_s) * 1000) << LOGICAL_BITS
        with self._lock:
            self._last = max(physical, self._last + 1)
            return self._last

    def observe(self, version: int) -> None:
        """Moves the clock past a version seen elsewhere, so later writes order after it."""
        with self._lock:
            self._last = max(self._last, version)
