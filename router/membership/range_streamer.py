"""Copying token ranges between nodes: one stream per transfer, applied batch by batch.

The source streams the records of the transfer's ranges (StreamTokenRanges); the router
applies each batch to the target with a durable Replica.Apply while the next batches are
already on their way (a few are read ahead). Apply keeps a record only if it is newer, so a
batch applied twice, or a record that also arrived by a concurrent write, is harmless; that
is what makes retrying and resuming a move safe. Streams and applies are routed under the
move's epoch: once a later epoch is fenced (another router took the move over), a driver
that paused meanwhile can copy nothing more.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence

import grpc
from shardkv.router.membership.move_plan import MoveConflict, Transfer, client_of
from shardkv.router.pace import Pacer
from shardkv.router.requests.health import NodeHealth, NodeWentDown, while_up
from shardkv.router.requests.node_client import NodeClient
from shardkv.v1 import replica_pb2

log = logging.getLogger(__name__)

# Records per streamed batch and Apply (the node's batch limit is 1000).
STREAM_BATCH = 500
# Batches read ahead of the Apply that stores them.
READ_AHEAD = 4
# A stream covering a large store, read at the pace the target applies it, gets this long.
STREAM_TIMEOUT_S = 3600.0
APPLY_TIMEOUT_S = 30.0
APPLY_ATTEMPTS = 4

# Told of every applied batch: (records, bytes of keys and values).
OnBatch = Callable[[int, int], None]


class SourceFailed(Exception):
    """The node streaming a transfer failed; the surviving owners may take over."""


async def apply_with_retry(
    target: NodeClient,
    records: Sequence[replica_pb2.Record],
    target_id: str,
    epoch: int | None = None,
) -> None:
    """Applies one batch routed under epoch (None: the router's), retrying with back-off
    (a repeat is harmless); a fence refusal is final."""
    for attempt in range(APPLY_ATTEMPTS):
        try:
            await target.apply_batch(records, APPLY_TIMEOUT_S, epoch)
            return
        except grpc.aio.AioRpcError as err:
            fenced = err.code() == grpc.StatusCode.FAILED_PRECONDITION
            if fenced or attempt == APPLY_ATTEMPTS - 1:
                raise MoveConflict(
                    f"applying {len(records)} records to {target_id} failed"
                    f" ({attempt + 1} attempt(s)): {err.code().name} {err.details()}"
                ) from err
            await asyncio.sleep(0.2 * 2**attempt)


class Streamer:
    """Runs transfers between the nodes of clients, sharing one pace."""

    def __init__(
        self,
        clients: Mapping[str, NodeClient],
        health: NodeHealth,
        *,
        pacer: Pacer,
        on_batch: OnBatch,
        name: str,
        epoch: int | None = None,
    ) -> None:
        """epoch: the move's, which every stream and apply is routed under (None: the
        router's epoch when each call is sent). A source that goes DOWN while it streams
        (hung, or cut off without a reset) fails at once rather than at the stream's
        deadline, and a giver's pieces then come from the surviving owners."""
        self._clients = clients
        self._health = health
        self._epoch = epoch
        self._pacer = pacer
        self._on_batch = on_batch
        self._name = name

    async def run(self, transfer: Transfer) -> None:
        """Streams one transfer into its target; a failing giver is replaced by the
        surviving owners of its pieces."""
        try:
            await self._stream(transfer)
        except SourceFailed as failed:
            if not transfer.from_giver:
                raise MoveConflict(str(failed)) from failed
            log.warning("%s: %s; copying from the surviving owners instead", self._name, failed)
            for fallback in transfer.fallback():
                await self.run(fallback)

    async def _stream(self, transfer: Transfer) -> None:
        source = client_of(self._clients, transfer.source)
        target = client_of(self._clients, transfer.target)
        queue: asyncio.Queue[list[replica_pb2.Record] | None] = asyncio.Queue(READ_AHEAD)

        async def pull() -> None:
            batches = source.stream_token_ranges(
                transfer.ranges,
                batch_size=STREAM_BATCH,
                keys_only=False,
                pace=0,
                timeout_s=STREAM_TIMEOUT_S,
                epoch=self._epoch,
            )
            async for batch in batches:
                await queue.put(batch)

        async def read() -> None:
            failed = f"stream from {transfer.source} to {transfer.target} failed"
            try:
                await while_up(self._health, transfer.source, pull())
            except grpc.aio.AioRpcError as err:
                raise SourceFailed(f"{failed}: {err.code().name} {err.details()}") from err
            except NodeWentDown as err:
                raise SourceFailed(f"{failed}: {err}") from err
            await queue.put(None)

        async def write() -> None:
            while (records := await queue.get()) is not None:
                await apply_with_retry(target, records, transfer.target, self._epoch)
                self._on_batch(len(records), sum(len(r.key) + len(r.value) for r in records))
                await self._pacer.take(len(records))

        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(read())
                group.create_task(write())
        except* SourceFailed as failures:
            raise failures.exceptions[0] from None


async def carry_watermark(
    clients: Mapping[str, NodeClient],
    health: NodeHealth,
    targets: Iterable[str],
    epoch: int | None = None,
) -> int:
    """Raises each target's purge watermark to the highest of the UP nodes' (shardd's
    watermark.py), routed under epoch. A node given ranges by a move or a rebuild holds no
    tombstone that GC purged before: without the watermark, it would store a restored
    record of a key deleted and purged since the backup, which read repair then spreads.
    GC raises the same bound on every replica of a range it purges, so one DOWN node
    hides no bound. Returns the watermark carried (0: none to carry)."""
    up = [n for n in clients if health.is_up(n)]
    stats = await asyncio.gather(*(clients[n].stats(APPLY_TIMEOUT_S) for n in up))
    watermark = max((s.purge_watermark for s in stats), default=0)
    if watermark:
        await asyncio.gather(
            *(
                clients[t].purge_token_ranges(
                    [], tombstones_before=watermark, timeout_s=APPLY_TIMEOUT_S, epoch=epoch
                )
                for t in set(targets)
            )
        )
    return watermark
