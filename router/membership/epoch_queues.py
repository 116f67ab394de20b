"""Coalescing per routing epoch: items routed under one topology epoch never share a call
with items routed under another.

A node checks each call against its fence by the one epoch the call carries (fencing.py),
so a batch must not mix epochs: an item routed under an old placement and sent under a
newer epoch would pass a fence meant to stop it. One Coalescer per epoch keeps them apart;
an epoch changes only with the topology, so there is almost always one, and only the
newest KEPT are kept (a dropped one finishes the calls it has in flight on its own).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from shardkv.router.requests.coalescer import Coalescer, Deliver
from shardkv.serving.tally import SizeHistogram

Item = TypeVar("Item")
Result = TypeVar("Result")

# Coalescers kept per node and kind of call: the newest epochs in use.
KEPT = 3


class EpochQueues(Generic[Item, Result]):
    """The coalescers of one node and kind of call, one per epoch (None: the call takes
    the router's epoch when it is sent)."""

    def __init__(self, make: Callable[[int | None], Coalescer[Item, Result]]) -> None:
        self._make = make
        self._queues: dict[int | None, Coalescer[Item, Result]] = {}
        # Items per call over every epoch's coalescer (the metrics endpoint reads it).
        self.batch_sizes = SizeHistogram()

    def submit(
        self, items: Sequence[tuple[Item, Deliver[Result]]], deadline: float, epoch: int | None
    ) -> None:
        queue = self._queues.get(epoch)
        if queue is None:
            queue = self._queues[epoch] = self._make(epoch)
            queue.batch_sizes = self.batch_sizes
            numbered = sorted(e for e in self._queues if e is not None)
            for old in numbered[:-KEPT]:
                del self._queues[old]
        queue.submit(items, deadline)

    async def close(self) -> None:
        for queue in list(self._queues.values()):
            await queue.close()
