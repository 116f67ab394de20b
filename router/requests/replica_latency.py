"""How fast each node answers reads, to choose whom a read asks and when to ask one more.

A read asks R of a key's N owners (batch_read.py). Which R, and how long to wait before
asking another owner, come from each node's measured read reply time: the time from
queueing a chunk of keys for a node to its reply, coalescer wait included, since that is
what a read waits for. Per node there are two figures:

- a smoothed reply time (EWMA, gain 1/8 as TCP's RFC 6298), for the choice. A batch
  orders the nodes once (AskOrder) and asks each key's owners in that order: a node
  clearly slower than the median node (its smoothed time over BADNESS times the median's
  and more than SLOW_MARGIN_S above it) after the others, Cassandra's dynamic snitch in
  two tiers and with a high badness threshold, so that ordinary noise between equally
  loaded nodes never makes every read hammer one node; within a tier, the nodes with the
  fewest keys asked and not yet answered first, ties from a node drawn at random
  (AskOrders). So the keys of a batch that share their owners ask the same ones (with
  three nodes and N=3, every key: two chunks and one group to compare instead of three
  chunks and six groups), and the batches in flight spread over the nodes (one batch
  leans on its first node: at 12 nodes and R=2, 30 of a batch's 200 asks go to its
  busiest node, 24 when each key asked its first owners in ring order).
  Asking each key's owners in ring order spread every batch over all of them; a batch's
  own order made a batch of 100 read cost the router 11-17% less CPU per key and the
  nodes 3-11% less (3 nodes).
- a peak: the slowest recent reply, halving every PEAK_HALF_LIFE_S (Finagle's peak EWMA
  keeps the same kind of figure). The speculative delay is the highest peak among the
  nodes not asked last: a read asks one more owner only once it has waited longer than
  any healthy node took lately, so that something is wrong, not merely busy. Under
  closed-loop batch load a chunk's reply time swings several-fold with its place in the
  node's queue. Measured with 8 batches of 1000 keys in flight, 3 nodes, R=2: a mean plus
  four deviations (TCP's timeout, Cassandra's 99th percentile) made the nodes read 2.6-2.7
  keys per key asked instead of 2, nearly what asking all three costs; the median node's
  peak about 2.3; the highest peak, with batch_read.py's wait for a round's first answer,
  2.1 (one run each, on a machine busy with other work).

Both are recomputed at most every REFRESH_S (Cassandra also recomputes its scores every
100 ms), so a read pays a clock comparison, not a pass over every node. A node no longer
asked sends no replies; so that it is not judged on old figures, an estimate without a
reply for STALE_S counts as unknown (in the first tier again) and the next reply starts it
afresh. A late reply counts as one of the time waited when a read gives up waiting for it
(batch_read.py), and a failed one as one of FAILED_S, so a node that fails is put last.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass
from statistics import median

# Gain of the smoothed reply time (RFC 6298's alpha).
GAIN = 1 / 8
# Slower than BADNESS times the median node, and by more than SLOW_MARGIN_S: asked last.
BADNESS = 4.0
SLOW_MARGIN_S = 0.010
# How fast a peak is forgotten.
PEAK_HALF_LIFE_S = 1.0
# Below this a speculative request would answer the jitter of a Python event loop (a node's
# read of one key takes 1-2 ms end to end on an idle machine), not a slow node.
MIN_DELAY_S = 0.005
# What a failed read counts as: slower than any read worth waiting for.
FAILED_S = 0.5
# How often the tiers and the delay are recomputed; how old a node's last reply may be for
# its figures to count.
REFRESH_S = 0.1
STALE_S = 0.5


@dataclass(slots=True)
class _Estimate:
    """One node's smoothed and peak read reply times, and when it last replied."""

    smoothed: float
    peak: float
    heard: float

    def peak_at(self, now: float) -> float:
        return self.peak * math.exp2((self.heard - now) / PEAK_HALF_LIFE_S)


class ReplicaLatency:
    """Read reply times per node; which nodes reads should ask last, and how long a read
    waits before asking one more owner."""

    def __init__(self) -> None:
        self._estimates: dict[str, _Estimate] = {}
        self._refresh_at = -math.inf
        # Nodes asked last (clearly slower than the median), and the speculative delay.
        self._slow: frozenset[str] = frozenset()
        self._delay = MIN_DELAY_S

    def observe(self, node_id: str, seconds: float, now: float) -> None:
        """A read reply from node_id took seconds (or a late one took at least that)."""
        estimate = self._estimates.get(node_id)
        if estimate is None or now - estimate.heard > STALE_S:
            # No figure, or one too old to tell anything: this reply starts afresh.
            self._estimates[node_id] = _Estimate(seconds, seconds, now)
            return
        estimate.smoothed += GAIN * (seconds - estimate.smoothed)
        estimate.peak = max(seconds, estimate.peak_at(now))
        estimate.heard = now

    def failed(self, node_id: str, now: float) -> None:
        """A read of node_id failed: counted as a very slow reply."""
        self.observe(node_id, FAILED_S, now)

    def plan(self, now: float) -> tuple[frozenset[str], float]:
        """The nodes to ask last, and the speculative delay in seconds (at least
        MIN_DELAY_S; the caller keeps it within its deadline)."""
        if now >= self._refresh_at:
            self._refresh(now)
        return self._slow, self._delay

    def _refresh(self, now: float) -> None:
        self._refresh_at = now + REFRESH_S
        fresh = {n: e for n, e in self._estimates.items() if now - e.heard <= STALE_S}
        if not fresh:
            self._slow, self._delay = frozenset(), MIN_DELAY_S
            return
        # Judged against the median node, so that one slow node (or one unusually fast)
        # does not move the others' tier; a slow node's peak does not set the delay.
        typical = median(e.smoothed for e in fresh.values())
        bound = max(BADNESS * typical, typical + SLOW_MARGIN_S)
        self._slow = frozenset(n for n, e in fresh.items() if e.smoothed > bound)
        peaks = [e.peak_at(now) for n, e in fresh.items() if n not in self._slow]
        self._delay = max([MIN_DELAY_S, *peaks])


class AskOrder(dict[str, tuple[bool, int, int]]):
    """One batch's order of the nodes: those not slow, then the slow ones; within each
    tier, the nodes with the fewest keys asked and not yet answered first (outstanding,
    read while the batch is planned), then from the batch's first node onwards around the
    ring's sorted node ids. Each node's rank is worked out once per batch, when a group
    of keys first names it (a batch's groups name the same few nodes again and again)."""

    def __init__(
        self,
        positions: Mapping[str, int],
        first: int,
        slow: frozenset[str],
        outstanding: Mapping[str, int],
    ) -> None:
        super().__init__()
        self.positions, self.first, self.slow = positions, first, slow
        self.outstanding = outstanding

    def __call__(self, owners: tuple[str, ...]) -> tuple[str, ...]:
        """owners in the order the batch asks them."""
        return tuple(sorted(owners, key=self.__getitem__))

    def __missing__(self, node_id: str) -> tuple[bool, int, int]:
        turn = (self.positions[node_id] - self.first) % len(self.positions)
        rank = self[node_id] = node_id in self.slow, self.outstanding.get(node_id, 0), turn
        return rank


class AskOrders:
    """Each batch read's order of the nodes (AskOrder). Every key of a batch with the same
    owners asks the same ones; the nodes least asked right now come first, as a
    least-request balancer does, so the batches in flight spread over the nodes and no
    pattern of requests (a Get between two batches, clients in lockstep) keeps the large
    ones on the same nodes, as a counter turning one step per batch did; ties start at a
    node drawn at random among those not slow (a slow node's turn is nobody's)."""

    def __init__(self) -> None:
        self._nodes: tuple[str, ...] = ()
        self._positions: dict[str, int] = {}
        self._outstanding: dict[str, int] = {}

    @property
    def outstanding(self) -> Mapping[str, int]:
        """Keys asked of each node and not yet answered (or failed)."""
        return self._outstanding

    def sent(self, node_id: str, keys: int) -> None:
        self._outstanding[node_id] = self._outstanding.get(node_id, 0) + keys

    def replied(self, node_id: str, keys: int) -> None:
        left = self._outstanding[node_id] - keys
        if left:
            self._outstanding[node_id] = left
        else:
            del self._outstanding[node_id]

    def next(self, nodes: tuple[str, ...], slow: frozenset[str]) -> AskOrder:
        """A batch's order of nodes (the ring's node ids, sorted), slow ones last."""
        if nodes != self._nodes:
            self._nodes = nodes
            self._positions = {node_id: i for i, node_id in enumerate(nodes)}
        if slow.isdisjoint(nodes):
            first = random.randrange(len(nodes))
        else:
            fast = [i for i, node_id in enumerate(nodes) if node_id not in slow]
            first = random.choice(fast or range(len(nodes)))
        return AskOrder(self._positions, first, slow, self._outstanding)
