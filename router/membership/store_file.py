"""The topology in one cluster.toml, for the routers of one host: compare-and-swap under an
exclusive lock, and a watch that polls the file.

A change takes ``fcntl.flock`` on a lock file beside cluster.toml (``.cluster.toml.lock``),
re-reads the file inside the lock and writes (atomically, topology_store.save_topology)
only if the file still holds the topology the change was computed from. Every router
writing the file does so under the lock, so two changes made at once through two routers
cannot both succeed: the second finds the first's epoch. The lock file is never removed
(removing it would let two processes lock two different files); it holds nothing.

A hand edit takes no lock: an operator editing cluster.toml while a change is being
written may lose the edit or the change (the README says to edit only a stopped cluster's
file, or to raise the epoch and let the routers follow).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

from shardkv.router.membership.topology import Topology, TopologyError, load_topology
from shardkv.router.membership.topology_store import (
    StoreUnavailable,
    TopologyConflict,
    save_topology,
)

log = logging.getLogger(__name__)

# A change waits this long for another process's change to finish writing (a write takes
# milliseconds; a holder this slow is stopped or stuck), then is refused as UNAVAILABLE.
LOCK_WAIT_S = 10.0
_LOCK_POLL_S = 0.01


def lock_path(path: Path) -> Path:
    """The lock file of cluster.toml at path (beside it, hidden)."""
    return path.with_name(f".{path.name}.lock")


class FileTopologyStore:
    """cluster.toml as the topology store (see the module docstring)."""

    def __init__(self, path: Path, *, interval_s: float, lock_wait_s: float = LOCK_WAIT_S) -> None:
        """interval_s is how often the watch looks at the file (``watch_interval_ms``)."""
        self.path = path
        self.name = f"topology file {path}"
        self._interval_s = interval_s
        self._lock_wait_s = lock_wait_s
        self._closed = asyncio.Event()

    async def load(self) -> Topology:
        return await asyncio.to_thread(load_topology, self.path)

    async def compare_and_swap(self, expected: Topology, new: Topology) -> None:
        if new.epoch <= expected.epoch:
            raise ValueError(f"epoch {new.epoch} does not follow epoch {expected.epoch}")
        await asyncio.to_thread(self._swap, expected, new)

    def _swap(self, expected: Topology, new: Topology) -> None:
        with self._locked():
            stored = load_topology(self.path)
            if stored != expected:
                raise TopologyConflict(self.name, stored, expected)
            save_topology(self.path, new)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Holds the exclusive lock beside the file, or raises StoreUnavailable in time."""
        where = lock_path(self.path)
        try:
            fd = os.open(where, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as err:
            raise TopologyError(f"{where}: cannot open the lock file: {err.strerror}") from err
        try:
            deadline = time.monotonic() + self._lock_wait_s
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise StoreUnavailable(
                            f"{self.name}: {where} stayed locked by another process for"
                            f" {self._lock_wait_s:g} s (a router stopped while writing?)"
                        ) from None
                    time.sleep(_LOCK_POLL_S)
            yield  # closing the descriptor releases the lock
        finally:
            os.close(fd)

    def _stamp(self) -> tuple[int, int, int] | None:
        """What changes whenever the file is replaced or rewritten (inode, mtime, size)."""
        try:
            stat = self.path.stat()
        except OSError:
            return None
        return stat.st_ino, stat.st_mtime_ns, stat.st_size

    async def watch(self) -> AsyncIterator[Topology]:
        """Yields the file's topology whenever the file changed (and once at the first look,
        covering changes made between the router's start and the watch's)."""
        seen: tuple[int, int, int] | None = None
        while not self._closed.is_set():
            stamp = self._stamp()
            if stamp is not None and stamp != seen:
                seen = stamp
                try:
                    topology = await asyncio.to_thread(load_topology, self.path)
                except TopologyError as err:
                    log.warning("ignoring changed topology file: %s", err)
                else:
                    yield topology
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closed.wait(), self._interval_s)

    async def close(self) -> None:
        self._closed.set()
