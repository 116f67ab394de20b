"""A shared/exclusive gate: LMDB transactions share it, growing or closing the map excludes them.

py-lmdb's `set_mapsize` and `close` require that no transaction is open anywhere in the
process, but reads run on several worker threads while the committer writes on another.
Every transaction therefore runs under `shared()`, and map growth and close take
`exclusive()`. Waiting exclusive holders block new shared holders, so a growing map is
never starved by a stream of reads.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class StoreClosed(RuntimeError):
    """The store was closed (the node is shutting down)."""


class Gate:
    """Many shared holders at a time, or one exclusive holder."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._shared = 0
        self._exclusive = False
        self._waiting_exclusive = 0
        self._closed = False

    @contextmanager
    def shared(self) -> Iterator[None]:
        """Holds the gate for one transaction; raises StoreClosed once the store is closed."""
        with self._cond:
            while self._exclusive or self._waiting_exclusive:
                self._cond.wait()
            if self._closed:
                raise StoreClosed("the store is closed")
            self._shared += 1
        try:
            yield
        finally:
            self._release_shared()

    @contextmanager
    def try_shared(self) -> Iterator[bool]:
        """As shared(), unless that would wait (an exclusive holder holds the gate or waits
        for it): then yields False at once, without holding the gate."""
        with self._cond:
            if self._exclusive or self._waiting_exclusive:
                held = False
            elif self._closed:
                raise StoreClosed("the store is closed")
            else:
                self._shared += 1
                held = True
        if not held:
            yield False
            return
        try:
            yield True
        finally:
            self._release_shared()

    def _release_shared(self) -> None:
        with self._cond:
            self._shared -= 1
            if not self._shared:
                self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Holds the gate alone: no transaction is open while the body runs."""
        with self._cond:
            self._waiting_exclusive += 1
            try:
                while self._exclusive or self._shared:
                    self._cond.wait()
            finally:
                self._waiting_exclusive -= 1
            if self._closed:
                self._cond.notify_all()
                raise StoreClosed("the store is closed")
            self._exclusive = True
        try:
            yield
        finally:
            with self._cond:
                self._exclusive = False
                self._cond.notify_all()

    def close(self) -> None:
        """Marks the gate closed; the caller must hold it exclusively."""
        self._closed = True
