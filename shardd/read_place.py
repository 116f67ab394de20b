"""Where a node's reads run: on its event loop while the store answers from memory, on
read threads for a while once a read had to wait for the disk.

Handing a read to a thread and back costs 77-205 µs of CPU (thread wake-ups, futures, the
loop's self-pipe), more than reading a hundred keys from the page cache, so reads run on
the loop in slices of a bounded number of keys, yielding to it between slices. But a store
larger than memory page-faults: a fault on the loop stalls every call the node serves,
while py-lmdb lets go of the GIL around each `mdb_get`, so on read threads the loop serves
meanwhile and several faults wait on the disk at once. A read on the loop counts its
thread's major page faults (getrusage, about half a microsecond): one that faulted sends
the node's reads to the threads for HOLD_S, after which the loop tries again. A store
read from memory never faults, whatever else keeps the machine busy (a preempted read
is late, not faulting), so the loop keeps its reads.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Callable

# How long reads stay on the threads after one on the loop waited for the disk: the loop
# risks one slice's faults (at most READ_SLICE_KEYS page reads) per period.
HOLD_S = 2.0


def major_faults() -> int:
    """Major page faults (a page read from the disk) of the calling thread so far."""
    return resource.getrusage(resource.RUSAGE_THREAD).ru_majflt


class ReadPlace:
    """Decides, read by read, whether the event loop or a read thread reads."""

    def __init__(
        self, *, hold_s: float = HOLD_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._hold = hold_s
        self._clock = clock
        self._threads_until = 0.0
        # For operators (Stats, metrics): reads on the loop that waited for the disk.
        self.disk_waits = 0

    def on_loop(self) -> bool:
        """Whether the next read runs on the event loop."""
        return self._clock() >= self._threads_until

    def read_faulted(self) -> None:
        """A read on the loop waited for the disk: reads go to the threads for a while."""
        self.disk_waits += 1
        self._threads_until = self._clock() + self._hold
