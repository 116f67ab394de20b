"""The per-key read path, and read repair: for the keys the batch read path cannot decide
(an owner DOWN, a move in progress, an owner that does not count yet, or a key its chunks
left short of R). Every owner not known to be DOWN is asked, not only R as on the batch
path: during a move or with an owner that does not count, a read needs R + pending replies
that count, and these rare cases are not worth a second speculation scheme. The answer is
the newest (version, writer) among the first R replies that count; once every asked
replica has answered (or the deadline passed), each one that answered with an older
record or none gets the newest one, without the client waiting for it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Mapping, Sequence
from functools import partial

from shardkv.common import hlc, requestid
from shardkv.common.answers import record_entry
from shardkv.common.hlc import HybridClock
from shardkv.router.placement.current import Placement
from shardkv.router.requests.coalescer import Deliver, NodeFailure, node_left
from shardkv.router.requests.health import NodeHealth
from shardkv.router.requests.node_link import ApplyItem, NodeLink
from shardkv.router.requests.outcomes import ReadOutcome, read_failed
from shardkv.router.requests.quorum import Quorum, QuorumGroup
from shardkv.router.requests.read_budget import ReadBudget
from shardkv.serving.tally import QuorumTally
from shardkv.v1 import replica_pb2

log = logging.getLogger(__name__)


def apply_to(
    clients: Mapping[str, NodeLink],
    node_id: str,
    items: list[tuple[ApplyItem, Deliver[bool]]],
    deadline: float,
    epoch: int,
) -> None:
    """Queues items routed under epoch for node_id; a node that left the topology fails
    them at once."""
    client = clients.get(node_id)
    if client is None:
        for _, deliver in items:
            deliver(node_left(node_id))
    else:
        client.apply(items, deadline, epoch)


def ignore(result: bool | NodeFailure) -> None:
    """Read repair and late markers are best effort: a failed repair is retried by the
    next read, a failed marker left to anti-entropy."""


class KeyReader:
    """Reads keys one quorum each, and repairs the replicas a read found behind."""

    def __init__(
        self,
        *,
        ring: Placement,
        replication: int,
        clients: Mapping[str, NodeLink],
        health: NodeHealth,
        clock: HybridClock,
        repair_timeout_s: float,
        tally: QuorumTally,
    ) -> None:
        self._ring = ring
        self._n = replication
        self._clients = clients
        self._health = health
        self._clock = clock
        self._repair_timeout_s = repair_timeout_s
        self._tally = tally
        # Read repairs sent (the metrics endpoint reads it through the coordinator).
        self.repairs = 0

    async def read_at(
        self,
        keys: Sequence[bytes],
        epoch: int,
        *,
        needed: int,
        deadline: float,
        budget: ReadBudget | None,
    ) -> list[ReadOutcome]:
        """Reads keys from their live owners, routed under epoch."""
        # The nodes that count as the quorums are sized: the replies left out when the
        # answer is chosen and repairs sent (set_uncounted: requests in flight keep theirs).
        uncounted = self._ring.uncounted
        group: QuorumGroup[replica_pb2.Record] = QuorumGroup(deadline)
        quorums: list[Quorum[replica_pb2.Record]] = []
        outbox: defaultdict[str, list[tuple[bytes, Quorum[replica_pb2.Record]]]] = defaultdict(list)
        for key in keys:
            quorum = group.quorum(
                needed,
                partial(self._repair, key, epoch, uncounted),
                pending=self._ring.pending_owners(key, self._n),
            )
            for owner in self._ring.preference_list(key, self._n):
                if self._health.is_down(owner):
                    quorum.fail(owner, f"DOWN ({self._health.last_error(owner) or 'not serving'})")
                else:
                    outbox[owner].append((key, quorum))
            quorums.append(quorum)
        for node_id, entries in outbox.items():
            asks = [(key, q.add(node_id)) for key, q in entries]
            if budget is not None:
                asks = budget.watch(node_id, asks)
            client = self._clients.get(node_id)
            if client is None:
                for _, deliver in asks:
                    deliver(node_left(node_id))
            else:
                client.read(asks, deadline, epoch)
        await group.wait()
        outcomes: list[ReadOutcome] = []
        for key, quorum in zip(keys, quorums, strict=True):
            self._tally.add(quorum.needed, len(quorum.ok))
            if not quorum.succeeded:
                error = quorum.describe("read", key, self._n)
                outcomes.append(read_failed(key, error, quorum.failure_code()))
                continue
            best = hlc.newest(_counted(quorum, uncounted))
            self._clock.observe(best.version)
            outcomes.append(record_entry(key, best))
        return outcomes

    def _repair(
        self,
        key: bytes,
        epoch: int,
        uncounted: frozenset[str],
        quorum: Quorum[replica_pb2.Record],
    ) -> None:
        """Sends the newest record to every replica that answered with an older one or none."""
        if not quorum.ok:
            return
        best = hlc.newest(_counted(quorum, uncounted))
        if not best.version:
            return
        for node_id, record in quorum.ok.items():
            if hlc.precedes(record, best):
                self.repair_one(node_id, best, record.version, epoch)

    def repair_one(
        self, node_id: str, best: replica_pb2.Record, from_version: int, epoch: int
    ) -> None:
        """Sends node_id the newest record of a key it answered at from_version."""
        log.debug(
            "read_repair key=%r node=%s from_version=%d to_version=%d request_id=%s",
            best.key[:64],
            node_id,
            from_version,
            best.version,
            requestid.current.get() or "-",
        )
        deadline = asyncio.get_running_loop().time() + self._repair_timeout_s
        apply_to(self._clients, node_id, [(best, ignore)], deadline, epoch)
        self.repairs += 1


def _counted(
    quorum: Quorum[replica_pb2.Record], uncounted: frozenset[str]
) -> list[replica_pb2.Record]:
    """The replies that decide a read: a node that does not count (its data directory is
    being checked or rebuilt) may hold a value deleted and purged everywhere else, so its
    reply never wins nor spreads by read repair (R + pending replies include R from nodes
    that count). uncounted: as the read's quorums were sized."""
    if not uncounted:
        return list(quorum.ok.values())
    counted = [record for name, record in quorum.ok.items() if name not in uncounted]
    return counted or list(quorum.ok.values())
