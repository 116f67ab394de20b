"""Plain-integer tallies that hot paths update and the metrics layer reads at scrape time.

An update is a few integer additions (about 0.1 µs), against roughly 1 µs and a lock for
a prometheus-client metric, and nothing here imports prometheus-client, so storage and
routing code stays free of it. Reads from the metrics thread may see a tally mid-update;
Prometheus tolerates that (the next scrape is exact again).
"""

from __future__ import annotations

from dataclasses import dataclass

# Upper bounds of SizeHistogram's buckets: 1, 2, 4, ... 4096 (then +Inf).
SIZE_BOUNDS: tuple[int, ...] = tuple(1 << i for i in range(13))


class SizeHistogram:
    """How many batches had each size, in power-of-two buckets (a Prometheus histogram)."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        # counts[i] counts sizes in (SIZE_BOUNDS[i-1], SIZE_BOUNDS[i]]; the last is +Inf.
        self.counts = [0] * (len(SIZE_BOUNDS) + 1)
        self.total = 0

    def observe(self, size: int) -> None:
        self.counts[min(max(size - 1, 0).bit_length(), len(SIZE_BOUNDS))] += 1
        self.total += size

    def cumulative(self) -> list[tuple[str, int]]:
        """(upper bound, observations at or below it) per bucket, "+Inf" last."""
        out: list[tuple[str, int]] = []
        running = 0
        for bound, count in zip([*map(str, SIZE_BOUNDS), "+Inf"], self.counts, strict=True):
            running += count
            out.append((bound, running))
        return out


@dataclass(slots=True)
class QuorumTally:
    """Replica replies against quorums for one kind of operation, summed over keys."""

    # Keys decided (one per key of a request).
    keys: int = 0
    # Replicas the quorums of those keys required (R or W, or the level asked for).
    required: int = 0
    # Replicas that had acknowledged (writes) or answered (reads) when each was decided.
    acknowledged: int = 0
    # Keys whose quorum was not reached.
    failures: int = 0

    def add(self, required: int, acknowledged: int) -> None:
        self.keys += 1
        self.required += required
        self.acknowledged += acknowledged
        if acknowledged < required:
            self.failures += 1

    def add_reached(self, keys: int, required: int, acknowledged: int) -> None:
        """keys keys that each reached a quorum of required, acknowledged replies in all
        (as add() once per key, for a batch)."""
        self.keys += keys
        self.required += keys * required
        self.acknowledged += acknowledged
