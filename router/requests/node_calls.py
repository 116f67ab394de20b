"""Direct calls to one node: bulk work that is batched already, operations, and fencing.

``NodeCalls`` is the part of the router's NodeClient (node_client.py) that sends one call
per use: hint hand-off, scans, range digests, streams and purges for moves and repair,
stats, identities, snapshots and Fence. Each carries the node token, the request id and
the topology epoch it was routed under (``shardkv-epoch``: the caller's, or the one the
router serves when the call is sent), and reports a node's fence refusal to the router's
RouterEpoch (router/membership/fencing.py), which reloads the topology.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, TypeVar

import grpc
from shardkv.common import requestid
from shardkv.router.requests.coalescer import NodeFailure
from shardkv.v1 import replica_pb2, replica_pb2_grpc

if TYPE_CHECKING:
    from shardkv.router.membership.fencing import RouterEpoch

# gRPC metadata: the epoch a call was routed under, and a refusing node's fence
# (shardkv.shardd.fence names the same keys).
EPOCH_KEY = "shardkv-epoch"
FENCE_KEY = "shardkv-fence"
# Items of one coalesced Read's values at most (node_client.py); read_batch pages by it.
MAX_BATCH_BYTES = 8 << 20

Reply = TypeVar("Reply")
# A token range [start, end) (shardkv.common.ring_tokens).
TokenSpan = tuple[int, int]
# Told of failed calls with the timeout they had; the router marks nodes down from it.
FailureListener = Callable[[NodeFailure, float], None]


class NodeCalls:
    """The direct calls to one node over its Replica stub."""

    def __init__(
        self,
        node_id: str,
        replica: replica_pb2_grpc.ReplicaStub,
        *,
        call_timeout_s: float,
        on_failure: FailureListener,
        token: str | None,
        epochs: RouterEpoch | None,
    ) -> None:
        self.node_id = node_id
        self._replica = replica
        self._call_timeout_s = call_timeout_s
        self._on_failure = on_failure
        self._auth = (("authorization", f"Bearer {token}"),) if token else ()
        self._epochs = epochs

    async def apply_now(
        self, records: Sequence[replica_pb2.Record], timeout_s: float, epoch: int | None = None
    ) -> None:
        """One direct Apply of records that are already a batch (hint hand-off), routed
        under epoch (None: the router's when sent)."""
        await self._call(
            self._replica.Apply,
            replica_pb2.ApplyRequest(records=records),
            min(timeout_s, self._call_timeout_s),
            epoch,
        )

    async def park_hints(
        self, target: str, records: Sequence[replica_pb2.Record], timeout_s: float
    ) -> None:
        """One durable Apply that parks records on this node as hints for target."""
        hints = [replica_pb2.Hint(target=target, record=record) for record in records]
        await self._call(self._replica.Apply, replica_pb2.ApplyRequest(hints=hints), timeout_s)

    async def scan_records(
        self, start: bytes, end: bytes, limit: int, timeout_s: float, epoch: int
    ) -> replica_pb2.ScanRecordsResponse | NodeFailure:
        """One page of the node's records in [start, end), routed under epoch."""
        timeout = min(timeout_s, self._call_timeout_s)
        try:
            reply: replica_pb2.ScanRecordsResponse = await self._call(
                self._replica.ScanRecords,
                replica_pb2.ScanRecordsRequest(start=start, end=end, limit=limit),
                timeout,
                epoch,
            )
            return reply
        except grpc.aio.AioRpcError as err:
            failure = NodeFailure(self.node_id, err.code(), err.details() or "")
            self._on_failure(failure, timeout)
            return failure

    async def hint_summary(self) -> replica_pb2.HintSummaryResponse:
        reply: replica_pb2.HintSummaryResponse = await self._call(
            self._replica.HintSummary, replica_pb2.HintSummaryRequest(), self._call_timeout_s
        )
        return reply

    async def read_hints(self, target: str, limit: int) -> list[replica_pb2.Record]:
        reply = await self._call(
            self._replica.ReadHints,
            replica_pb2.ReadHintsRequest(target=target, limit=limit),
            self._call_timeout_s,
        )
        return list(reply.records)

    async def delete_hints(self, target: str, records: Sequence[replica_pb2.Record]) -> int:
        reply = await self._call(
            self._replica.DeleteHints,
            replica_pb2.DeleteHintsRequest(target=target, records=records),
            self._call_timeout_s,
        )
        return int(reply.deleted)

    # -- range work (moves and anti-entropy): bulk calls with their own, longer timeouts --

    async def token_digests(
        self,
        ranges: Sequence[TokenSpan],
        *,
        count_only: bool,
        pace: int,
        timeout_s: float,
        epoch: int | None = None,
    ) -> list[replica_pb2.TokenDigest]:
        """Digest (or count) of each token range, in order (one walk of the node's store)."""
        reply = await self._call(
            self._replica.TokenDigests,
            replica_pb2.TokenDigestsRequest(
                ranges=_token_ranges(ranges), count_only=count_only, max_records_per_second=pace
            ),
            timeout_s,
            epoch,
        )
        return list(reply.digests)

    async def stream_token_ranges(
        self,
        ranges: Sequence[TokenSpan],
        *,
        batch_size: int,
        keys_only: bool,
        pace: int,
        timeout_s: float,
        epoch: int | None = None,
    ) -> AsyncIterator[list[replica_pb2.Record]]:
        """The records of token ranges in batches (without values when keys_only)."""
        call = self._replica.StreamTokenRanges(
            replica_pb2.StreamTokenRangesRequest(
                ranges=_token_ranges(ranges),
                batch_size=batch_size,
                keys_only=keys_only,
                max_records_per_second=pace,
            ),
            timeout=timeout_s,
            metadata=self._metadata(epoch),
        )
        try:
            async for batch in call:
                yield list(batch.records)
        except grpc.aio.AioRpcError as err:
            self._noticed(err)
            raise
        finally:
            # As in snapshot(): closing this generator does not end the call, which kept
            # the node walking its store until the deadline (an hour, for moves and repair).
            call.cancel()

    async def purge_token_ranges(
        self,
        ranges: Sequence[TokenSpan],
        *,
        tombstones_before: int = 0,
        all_records: bool = False,
        timeout_s: float,
        epoch: int | None = None,
    ) -> int:
        """Removes old tombstones of token ranges, or all their records; returns how many.
        A node purges only while fenced at exactly the call's epoch (shardd/fence.py): one
        fenced lower (a topology change that moved nothing, such as a node's restart
        recorded, is not fenced) is fenced at the epoch first, which only refuses routers
        behind an epoch the store holds."""
        request = replica_pb2.PurgeTokenRangesRequest(
            ranges=_token_ranges(ranges),
            tombstones_before=tombstones_before,
            all_records=all_records,
        )
        routed = epoch if epoch is not None or self._epochs is None else self._epochs.epoch
        try:
            reply = await self._call(self._replica.PurgeTokenRanges, request, timeout_s, routed)
        except grpc.aio.AioRpcError as err:
            fence = _fence_of(err)
            if routed is None or fence is None or fence >= routed:
                raise
            await self.fence(routed, timeout_s)
            reply = await self._call(self._replica.PurgeTokenRanges, request, timeout_s, routed)
        return int(reply.purged)

    async def apply_batch(
        self, records: Sequence[replica_pb2.Record], timeout_s: float, epoch: int | None = None
    ) -> None:
        """One direct, durable Apply of a batch of records (not bounded by node_call_ms)."""
        await self._call(
            self._replica.Apply, replica_pb2.ApplyRequest(records=records), timeout_s, epoch
        )

    async def read_batch(self, keys: Sequence[bytes], timeout_s: float) -> list[replica_pb2.Record]:
        """The node's records of keys, in order (version 0 where it holds none), asked for
        in pages of MAX_BATCH_BYTES of values (the node says where to resume)."""
        records: list[replica_pb2.Record] = []
        while len(records) < len(keys):
            reply = await self._call(
                self._replica.Read,
                replica_pb2.ReadRequest(keys=keys[len(records) :], max_bytes=MAX_BATCH_BYTES),
                timeout_s,
            )
            if not reply.records:
                raise RuntimeError(f"node {self.node_id} answered no record of {len(keys)}")
            records += reply.records
        return records

    async def fence(self, epoch: int, timeout_s: float) -> int:
        """Installs epoch on the node (Replica.Fence); returns the node's fence."""
        reply = await self._call(
            self._replica.Fence, replica_pb2.FenceRequest(epoch=epoch), timeout_s
        )
        return int(reply.epoch)

    # -- operations: status and backups ------------------------------------------------

    async def stats(self, timeout_s: float) -> replica_pb2.StatsResponse:
        """The node's figures (records, hints, disk, work done since it started)."""
        reply: replica_pb2.StatsResponse = await self._call(
            self._replica.Stats, replica_pb2.StatsRequest(), timeout_s
        )
        return reply

    async def identity(
        self,
        request: replica_pb2.IdentityRequest
        | replica_pb2.SetIdentityRequest
        | replica_pb2.RebuildLeaseRequest,
        timeout_s: float,
    ) -> replica_pb2.DirectoryIdentity:
        """Reads the node's data-directory identity, changes it (SetIdentityRequest), or
        takes, renews or releases its rebuild lease (RebuildLeaseRequest)."""
        if isinstance(request, replica_pb2.SetIdentityRequest):
            call = self._replica.SetIdentity
        elif isinstance(request, replica_pb2.RebuildLeaseRequest):
            call = self._replica.RebuildLease
        else:
            call = self._replica.Identity
        reply: replica_pb2.DirectoryIdentity = await self._call(call, request, timeout_s)
        return reply

    async def snapshot(
        self, batch_size: int, timeout_s: float | None
    ) -> AsyncIterator[replica_pb2.SnapshotBatch]:
        """A consistent copy of the node's store, batch by batch (no deadline when
        timeout_s is None: a large store streams as long as it takes)."""
        call = self._replica.Snapshot(
            replica_pb2.SnapshotRequest(batch_size=batch_size),
            timeout=timeout_s,
            metadata=self._metadata(None),
        )
        try:
            async for batch in call:
                yield batch
        except grpc.aio.AioRpcError as err:
            self._noticed(err)
            raise
        finally:
            # Closing this generator does not end the call: without the cancel, a Backup
            # cancelled by its client kept the node's stream, and its copy of the store,
            # open until the deadline (forever without one).
            call.cancel()

    def _routed(self, epoch: int | None) -> int | None:
        """The epoch a call goes under: its own, else the one the router serves now."""
        return self._epochs.epoch if epoch is None and self._epochs is not None else epoch

    def _metadata(self, epoch: int | None) -> tuple[tuple[str, str], ...]:
        """What every call to the node carries: the node token (if any), the epoch it was
        routed under (_routed) and the request id."""
        routed = self._routed(epoch)
        fenced = () if routed is None else ((EPOCH_KEY, str(routed)),)
        return self._auth + fenced + (requestid.outgoing() or ())

    async def _call(
        self,
        method: Callable[..., Awaitable[Reply]],
        request: object,
        timeout_s: float | None,
        epoch: int | None = None,
    ) -> Reply:
        """One unary call routed under epoch; a fence refusal is reported (_noticed)."""
        try:
            return await method(request, timeout=timeout_s, metadata=self._metadata(epoch))
        except grpc.aio.AioRpcError as err:
            self._noticed(err)
            raise

    def _noticed(self, err: grpc.aio.AioRpcError) -> None:
        """Tells the router's RouterEpoch of a node that refused a call as routed under an
        epoch older than its fence (FAILED_PRECONDITION with shardkv-fence)."""
        fence = _fence_of(err)
        if fence is not None and self._epochs is not None:
            self._epochs.refused(self.node_id, fence)


def _fence_of(err: grpc.aio.AioRpcError) -> int | None:
    """The fence a node refused a call with (None: not a fence refusal)."""
    if err.code() != grpc.StatusCode.FAILED_PRECONDITION:
        return None
    for key, value in err.trailing_metadata() or ():
        if key == FENCE_KEY and isinstance(value, str) and value.isdigit():
            return int(value)
    return None


def _token_ranges(ranges: Sequence[TokenSpan]) -> list[replica_pb2.TokenRange]:
    return [replica_pb2.TokenRange(start=start, end=end) for start, end in ranges]
