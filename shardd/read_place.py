"""Where a node's reads run: on its event loop while the store answers from memory, on
read threads for a while once a read had to wait for the disk.

Handing a read to a thread and back costs 77-205 µs of CPU (thread wake-ups, futures, the
loop's self-pipe), more than reading a hundred keys from the page cache, so reads run on
the loop in slices of a bounded number of keys, yielding to it between slices. But a store
larger than memory page-faults: a fault on the loop stalls every call the node serves,
while py-lmdb lets go of the GIL around each `mdb_get`, so on read threads the loop serves
meanwhile and several faults wait on the disk at once. A read on the loop counts its
thread's major page faults (getrusage, about half a microsecond): one that faulted sends
the node's reads to the threads for HOLD_S, after which the loop tries again with a small
slice (PROBE_KEYS), as it does at start: a slice's faults stall the loop for every page
they wait for. A store read from memory never faults, whatever else keeps the machine busy
(a preempted read is late, not faulting), so the loop keeps its reads.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Callable

# How long reads stay on the threads after one on the loop waited for the disk.
HOLD_S = 2.0
# Keys of the first slice on the loop, at start and after each hold, until one slice reads
# clean: what the loop risks per period on a store larger than memory. A fault reads a
# page and those around it (the kernel reads ahead): 128 keys of a 400 MB store dropped
# from the page cache stalled the reading thread 232 ms with 50 faults, 20 MB 38 ms.
PROBE_KEYS = 8


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
        self._probing = True
        # For operators (Stats, metrics): reads on the loop that waited for the disk.
        self.disk_waits = 0

    def on_loop(self) -> bool:
        """Whether the next read runs on the event loop."""
        return self._clock() >= self._threads_until

    def slice_keys(self, full: int) -> int:
        """Keys of the next slice on the loop: full once a slice read clean, PROBE_KEYS
        before (at start, after a hold)."""
        return min(full, PROBE_KEYS) if self._probing else full

    def read_clean(self) -> None:
        """A read on the loop did not wait for the disk: the loop's slices are full."""
        self._probing = False

    def read_faulted(self) -> None:
        """A read on the loop waited for the disk: reads go to the threads for a while, then
        probe again."""
        self.disk_waits += 1
        self._threads_until = self._clock() + self._hold
        self._probing = True
