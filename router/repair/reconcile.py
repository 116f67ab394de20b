"""Reconciling replicas of segments whose digests differ: compare versions, copy the newest.

Each replica lists the keys of the differing segments with their versions but without
values; for every key, the replicas holding an older version or none get the newest
record, read from one replica that has it. So only the differing records travel, once per
replica that lacks them. Records with equal (version, writer) but different contents are
told apart only by their values, which the listing leaves out: a segment that differs
although every listed key agrees is read in full from each replica, and the newest by the
shared comparison (shardkv.common.hlc.precedes) goes where it is lacking. In a segment
that also needed copies such a tie is not looked for (that would read every key of every
differing segment in full): the segment still differs at the next pass, with nothing to
copy, and that pass settles it. Tombstone GC does not wait for it: a tombstone and a value
never tie (the stamp compares the tombstone flag), and two contents under one (version,
writer) come only from a damaged or hand-written record. Also the progress record of a
repair pass (RepairProgress).
"""

from __future__ import annotations

import asyncio
import logging
from bisect import bisect_right
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import grpc
from shardkv.common.hlc import newest, precedes
from shardkv.common.ring_tokens import ring_token
from shardkv.router.membership.move_plan import MoveConflict, describe_error, now_ms
from shardkv.router.membership.range_streamer import apply_with_retry
from shardkv.router.pace import Pacer
from shardkv.router.placement.current import Piece, merge_ranges
from shardkv.router.requests.health import NodeHealth, NodeWentDown, while_up
from shardkv.router.requests.node_client import NodeClient
from shardkv.v1 import admin_pb2, replica_pb2

log = logging.getLogger(__name__)

STREAM_TIMEOUT_S = 3600.0
READ_TIMEOUT_S = 30.0
# Keys per Replica.Read of full records (halved when the answer would be too large).
READ_CHUNK = 200
# Records per Apply, and bytes of values per Apply.
APPLY_CHUNK = 500
APPLY_BYTES = 8 << 20

# (version, writer, tombstone): a tombstone beats a value of the same (version, writer).
Stamp = tuple[int, int, bool]
_NONE: Stamp = (0, 0, False)


@dataclass
class RepairProgress:
    """One anti-entropy pass: phase and counters (mutated by the pass)."""

    pass_number: int
    trigger: str
    phase: str = "digest"
    started_ms: int = field(default_factory=now_ms)
    finished_ms: int = 0
    segments_total: int = 0
    segments_covered: int = 0
    segments_differing: int = 0
    segments_skipped: int = 0
    records_compared: int = 0
    records_repaired: int = 0
    tombstones_purged: int = 0
    error: str = ""

    def summary(self) -> str:
        return (
            f"{self.phase}, {self.segments_covered}/{self.segments_total} segments covered"
            f" ({self.segments_differing} differed, {self.segments_skipped} skipped),"
            f" {self.records_repaired} records repaired of {self.records_compared} compared,"
            f" {self.tombstones_purged} tombstones purged"
            + (f"; error: {self.error}" if self.error else "")
        )

    def to_proto(self, *, running: bool) -> admin_pb2.RepairStatus:
        return admin_pb2.RepairStatus(
            running=running,
            trigger=self.trigger,
            phase=self.phase if self.pass_number else "",
            started_ms=self.started_ms if self.pass_number else 0,
            finished_ms=self.finished_ms,
            segments_total=self.segments_total,
            segments_covered=self.segments_covered,
            segments_differing=self.segments_differing,
            segments_skipped=self.segments_skipped,
            records_compared=self.records_compared,
            records_repaired=self.records_repaired,
            tombstones_purged=self.tombstones_purged,
            error=self.error,
            **{"pass": self.pass_number},
        )


class Reconciler:
    """Brings the replicas of differing segments to the newest record of every key."""

    def __init__(
        self,
        clients: Mapping[str, NodeClient],
        health: NodeHealth,
        *,
        pacer: Pacer,
        status: RepairProgress,
    ) -> None:
        self._clients = clients
        self._health = health
        self._pacer = pacer
        self._status = status
        self._failed: set[int] = set()

    async def run(self, segments: Sequence[Piece], *, pace: int) -> set[tuple[int, int]]:
        """Reconciles segments (sorted by start); returns the (start, end) of each one whose
        every replica took part and got what it lacked."""
        if not segments:
            return set()
        starts = [s.start for s in segments]
        by_node: defaultdict[str, list[int]] = defaultdict(list)
        for index, segment in enumerate(segments):
            for node_id in segment.old:
                by_node[node_id].append(index)
        listed = await asyncio.gather(
            *(
                self._versions(node_id, [segments[i] for i in idx], pace)
                for node_id, idx in by_node.items()
            )
        )
        stamps: dict[bytes, dict[str, Stamp]] = defaultdict(dict)
        for node_id, indices, found in zip(by_node, by_node.values(), listed, strict=True):
            if found is None:
                self._failed.update(indices)
                continue
            for key, stamp in found.items():
                stamps[key][node_id] = stamp
        self._status.records_compared += len(stamps)

        wanted: defaultdict[str, dict[bytes, tuple[list[str], int]]] = defaultdict(dict)
        for key, held in stamps.items():
            index = bisect_right(starts, ring_token(key)) - 1
            if index in self._failed:
                continue
            best = max(held.values())
            lacking = [n for n in segments[index].old if held.get(n, _NONE) < best]
            if lacking:
                holder = next(n for n, s in held.items() if s == best)
                wanted[holder][key] = (lacking, index)
        await asyncio.gather(*(self._copy(holder, keys) for holder, keys in wanted.items()))
        copied = {index for keys in wanted.values() for _, index in keys.values()}
        tied: defaultdict[int, list[bytes]] = defaultdict(list)
        for key in stamps:
            index = bisect_right(starts, ring_token(key)) - 1
            if index not in self._failed and index not in copied:
                tied[index].append(key)
        if tied:
            await self._settle_ties(segments, tied)
        return {(s.start, s.end) for i, s in enumerate(segments) if i not in self._failed}

    async def _versions(
        self, node_id: str, segments: list[Piece], pace: int
    ) -> dict[bytes, Stamp] | None:
        """The node's keys of segments with their (version, writer); None if it failed or
        went DOWN meanwhile."""
        client = self._clients.get(node_id)
        if client is None:
            return None
        found: dict[bytes, Stamp] = {}

        async def listing() -> None:
            async for batch in client.stream_token_ranges(
                merge_ranges((s.start, s.end) for s in segments),
                batch_size=1000,
                keys_only=True,
                pace=pace,
                timeout_s=STREAM_TIMEOUT_S,
            ):
                for record in batch:
                    found[record.key] = (record.version, record.writer, record.tombstone)

        try:
            await while_up(self._health, node_id, listing())
        except (grpc.aio.AioRpcError, NodeWentDown) as err:
            log.warning("repair: %s could not list versions: %s", node_id, describe_error(err))
            return None
        return found

    async def _copy(self, holder: str, keys: dict[bytes, tuple[list[str], int]]) -> None:
        """Reads the newest records from holder and applies each where it is lacking."""
        client = self._clients.get(holder)
        outbox: defaultdict[str, list[tuple[replica_pb2.Record, int]]] = defaultdict(list)
        names = list(keys)
        for offset in range(0, len(names), READ_CHUNK):
            chunk = names[offset : offset + READ_CHUNK]
            try:
                if client is None:
                    raise MoveConflict(f"{holder} left the topology")
                records = await _read(client, chunk)
            except (grpc.aio.AioRpcError, MoveConflict) as err:
                log.warning("repair: reading from %s failed: %s", holder, err)
                self._failed.update(keys[k][1] for k in chunk)
                continue
            for record in records:
                if not record.version:
                    continue  # gone since it was listed (purged); the next pass sees it
                lacking, index = keys[record.key]
                for target in lacking:
                    outbox[target].append((record, index))
        for target, items in outbox.items():
            await self._apply(target, items)

    async def _settle_ties(self, segments: Sequence[Piece], tied: dict[int, list[bytes]]) -> None:
        """Reads the keys of segments whose listings agreed in full from every replica and
        sends the newest record (contents compared) to each replica holding another."""
        index_of = {key: index for index, keys in tied.items() for key in keys}
        by_node: defaultdict[str, list[bytes]] = defaultdict(list)
        for index, keys in tied.items():
            for node_id in segments[index].old:
                by_node[node_id] += keys
        held: defaultdict[bytes, dict[str, replica_pb2.Record]] = defaultdict(dict)
        for node_id, keys in by_node.items():
            client = self._clients.get(node_id)
            try:
                if client is None:
                    raise MoveConflict(f"{node_id} left the topology")
                for offset in range(0, len(keys), READ_CHUNK):
                    for record in await _read(client, keys[offset : offset + READ_CHUNK]):
                        held[record.key][node_id] = record
                    await self._pacer.take(min(READ_CHUNK, len(keys) - offset))
            except (grpc.aio.AioRpcError, MoveConflict) as err:
                log.warning("repair: reading from %s failed: %s", node_id, err)
                self._failed.update(index_of[key] for key in keys)
        outbox: defaultdict[str, list[tuple[replica_pb2.Record, int]]] = defaultdict(list)
        for key, records in held.items():
            index = index_of[key]
            if index in self._failed or not any(r.version for r in records.values()):
                continue
            best = newest(records.values())
            for node_id in segments[index].old:
                mine = records.get(node_id)
                if mine is None or precedes(mine, best):
                    outbox[node_id].append((best, index))
        for target, items in outbox.items():
            await self._apply(target, items)

    async def _apply(self, target: str, items: list[tuple[replica_pb2.Record, int]]) -> None:
        client = self._clients.get(target)
        batch: list[tuple[replica_pb2.Record, int]] = []
        size = 0
        for item in [*items, None]:
            if item is not None:
                batch.append(item)
                size += len(item[0].value)
                if len(batch) < APPLY_CHUNK and size < APPLY_BYTES:
                    continue
            if not batch:
                break
            try:
                if client is None:
                    raise MoveConflict(f"{target} left the topology")
                await apply_with_retry(client, [r for r, _ in batch], target)
                self._status.records_repaired += len(batch)
                await self._pacer.take(len(batch))
            except MoveConflict as err:
                log.warning("repair: %s", err)
                self._failed.update(index for _, index in batch)
            batch, size = [], 0


async def _read(client: NodeClient, keys: list[bytes]) -> list[replica_pb2.Record]:
    """Full records of keys; halves the request when the answer would be too large."""
    try:
        return await client.read_batch(keys, READ_TIMEOUT_S)
    except grpc.aio.AioRpcError as err:
        if err.code() != grpc.StatusCode.RESOURCE_EXHAUSTED or len(keys) == 1:
            raise
    half = len(keys) // 2
    return [*await _read(client, keys[:half]), *await _read(client, keys[half:])]
