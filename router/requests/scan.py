"""Scan through the router: fan out ScanRecords to the nodes, merge one ordered page.

Every live node is asked for the same key range, and of each node's answer only the keys
it owns under the current placement are kept (its old or pending preference list during a
move). A node that gave a range away keeps its copy until the move's drop, and anti-entropy
and tombstone GC look only at owners: a copy a non-owner still holds may be a value whose
delete the owners have since purged, so it must never be read. A node that does not count
toward quorums (its data directory is new, behind or being rebuilt) is read no more than a
quorum read reads it. The kept answers cover the range as long as every key keeps at least
``needed`` live owners, which is guaranteed when at most N - needed nodes are missing; with
more missing the scan is refused as UNAVAILABLE rather than silently missing keys. Records
merge by key, the newest (version, writer) wins and tombstones are dropped, so the result
equals a scan of one node holding all the owners' data.

Nodes page their answers, so a node's page ends at its own resume point: only keys below
the smallest resume point are complete and may be emitted. When that leaves the page
short (many tombstones, non-owned copies, or small node pages) the router asks again from
that point until the page is full, the range is exhausted, or the deadline nears.

Each round of node calls is routed under one topology epoch, and its answers are kept by
that epoch's owners. A node fenced at a newer epoch refuses the round; the router then
catches up (fencing.py) and asks the same range again under the new placement, as writes
and reads are routed again, so the client never sees a move it was not told of.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import grpc
from shardkv.common.limits import after
from shardkv.router.membership.fencing import REROUTES, RouterEpoch
from shardkv.router.placement.current import Placement
from shardkv.router.requests.coalescer import NodeFailure
from shardkv.router.requests.health import NodeHealth
from shardkv.router.requests.node_client import NodeClient
from shardkv.v1 import replica_pb2


class ScanUnavailable(Exception):
    """Too many nodes are down (or failed) to cover every key of the range."""


@dataclass(frozen=True, slots=True)
class Page:
    """Live records in key order, and where the next page starts (b"" when done)."""

    records: list[replica_pb2.Record]
    next_token: bytes


async def scan_page(
    clients: Mapping[str, NodeClient],
    health: NodeHealth,
    *,
    placement: Placement,
    epochs: RouterEpoch | None,
    replication: int,
    needed: int,
    start: bytes,
    end: bytes,
    limit: int,
    max_bytes: int,
    deadline: float,
) -> Page:
    """One page of at most limit live records of [start, end) (end b"" = open), cut short
    once it holds max_bytes of keys and values (so it fits in one message). epochs: what a
    fence refusal catches up with (None: the range is not asked again)."""
    loop = asyncio.get_running_loop()
    routed, live = _route(placement, clients, health, replication, needed)
    reroutes = 0
    emitted: list[replica_pb2.Record] = []
    size = 0
    cursor = start
    while True:
        epoch = routed.layout.epoch
        replies = await asyncio.gather(
            *(
                clients[node_id].scan_records(cursor, end, limit, deadline - loop.time(), epoch)
                for node_id in live
            )
        )
        failed = [r for r in replies if isinstance(r, NodeFailure)]
        if (
            epochs is not None
            and epochs.fenced > epoch
            and reroutes < REROUTES
            and any(f.code == grpc.StatusCode.FAILED_PRECONDITION for f in failed)
            and await epochs.catch_up(epoch, deadline - loop.time())
        ):
            reroutes += 1
            routed, live = _route(placement, clients, health, replication, needed)
            continue
        pages = [
            (node_id, reply)
            for node_id, reply in zip(live, replies, strict=True)
            if not isinstance(reply, NodeFailure)
        ]
        if failed:
            live = [node_id for node_id, _ in pages]
            _check_coverage(health, clients, live, replication, needed, routed.uncounted, failed)
        bound = _safe_bound([page for _, page in pages])
        for record in _merge(pages, bound, routed, replication):
            if len(emitted) == limit or size >= max_bytes:
                return Page(emitted, after(emitted[-1].key))
            emitted.append(record)
            size += len(record.key) + len(record.value)
        if bound is None or (end and bound >= end):
            return Page(emitted, b"")
        if len(emitted) == limit or size >= max_bytes:
            return Page(emitted, after(emitted[-1].key))
        if deadline - loop.time() <= 0:
            # Out of time with a short page: hand back what is complete and resume later.
            return Page(emitted, bound)
        cursor = bound


def _route(
    placement: Placement,
    clients: Mapping[str, NodeClient],
    health: NodeHealth,
    replication: int,
    needed: int,
) -> tuple[Placement, list[str]]:
    """The placement a round is routed under (fixed for the round, though the router may
    switch meanwhile) and the nodes it asks: every live node that counts."""
    routed = Placement(placement.layout)
    uncounted = placement.uncounted
    routed.set_uncounted(uncounted)
    live = [n for n in clients if not health.is_down(n) and n not in uncounted]
    _check_coverage(health, clients, live, replication, needed, uncounted)
    return routed, live


def _safe_bound(pages: Sequence[replica_pb2.ScanRecordsResponse]) -> bytes | None:
    """The smallest per-node resume point: every node has sent all its keys below it.

    None when every node exhausted the range."""
    resume = [page.next_start for page in pages if page.next_start]
    return min(resume) if resume else None


def _merge(
    pages: Sequence[tuple[str, replica_pb2.ScanRecordsResponse]],
    bound: bytes | None,
    placement: Placement,
    replication: int,
) -> list[replica_pb2.Record]:
    """Live records below bound, one per key (the newest among the nodes that own it),
    in key order."""
    best: dict[bytes, replica_pb2.Record] = {}
    for node_id, page in pages:
        for record in page.records:
            if bound is not None and record.key >= bound:
                break
            if node_id not in placement.preference_list(record.key, replication):
                continue  # a copy left on a node that gave the key's range away
            seen = best.get(record.key)
            if seen is None or (record.version, record.writer) > (seen.version, seen.writer):
                best[record.key] = record
    return [best[key] for key in sorted(best) if not best[key].tombstone]


def _check_coverage(
    health: NodeHealth,
    clients: Mapping[str, NodeClient],
    live: Sequence[str],
    replication: int,
    needed: int,
    uncounted: frozenset[str],
    failed: Sequence[NodeFailure] = (),
) -> None:
    """Refuses the scan when some key may have fewer than needed owners among live."""
    missing = [n for n in clients if n not in live]
    if len(missing) <= replication - needed:
        return
    reasons = {f.node_id: str(f) for f in failed}
    reasons.update(
        (n, "not counted toward quorums: its data directory is new, behind or rebuilding")
        for n in uncounted
    )
    names = ", ".join(f"{n} ({reasons.get(n) or health.last_error(n) or 'DOWN'})" for n in missing)
    raise ScanUnavailable(
        f"scan needs {needed} of N={replication} replicas of every key, so at most"
        f" {replication - needed} node(s) may be missing; not answering: {names}"
    )
