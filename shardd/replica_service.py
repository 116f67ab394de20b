"""The internal Replica API that routers use: versioned records, hints, ranges and digests.

Each handler validates the request, delegates to NodeStorage and builds the answer; errors
are mapped by shardkv.shardd.errors. Every call that touches records is fenced
(shardkv.shardd.fence): the epoch it was routed under comes from its metadata, and a
refusal carries the node's fence in the trailing metadata (``_fenced``).
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

import grpc.aio
from shardkv.common.answers import read_answers
from shardkv.common.limits import LimitExceeded, Limits
from shardkv.common.ring_tokens import TokenRanges
from shardkv.shardd.convert import (
    hint_from_pb,
    read_response,
    record_from_pb,
    record_to_pb,
    records_from_columns,
    records_from_pb,
    stored_fields,
)
from shardkv.shardd.errors import streaming, unary
from shardkv.shardd.fence import StaleEpoch, epoch_of
from shardkv.shardd.identity import Change, DirectoryIdentity, View
from shardkv.shardd.metrics import stats_response
from shardkv.shardd.node import NodeStorage
from shardkv.shardd.ranges import digest_ranges, purge_ranges, stream_ranges
from shardkv.shardd.records import Record
from shardkv.shardd.snapshot import snapshot_batches
from shardkv.shardd.store import Marker
from shardkv.shardd.validate import check_range, check_record, check_target, response_budget
from shardkv.v1 import replica_pb2, replica_pb2_grpc

Context = grpc.aio.ServicerContext[Any, Any]
Req = TypeVar("Req")
Resp = TypeVar("Resp")


def _fenced(
    handler: Callable[[ReplicaServicer, Req, Context], Awaitable[Resp]],
) -> Callable[[ReplicaServicer, Req, Context], Awaitable[Resp]]:
    """Puts the node's fence in the trailing metadata of a call the fence refused."""

    @functools.wraps(handler)
    async def wrapper(self: ReplicaServicer, request: Req, context: Context) -> Resp:
        try:
            return await handler(self, request, context)
        except StaleEpoch as refused:
            context.set_trailing_metadata(refused.trailing_metadata())
            raise

    return wrapper


def _fenced_stream(
    handler: Callable[[ReplicaServicer, Req, Context], AsyncIterator[Resp]],
) -> Callable[[ReplicaServicer, Req, Context], AsyncIterator[Resp]]:
    """_fenced for a server-streaming handler."""

    @functools.wraps(handler)
    async def wrapper(self: ReplicaServicer, request: Req, context: Context) -> AsyncIterator[Resp]:
        try:
            async for item in handler(self, request, context):
                yield item
        except StaleEpoch as refused:
            context.set_trailing_metadata(refused.trailing_metadata())
            raise

    return wrapper


class ReplicaServicer(replica_pb2_grpc.ReplicaServicer):
    """shardkv.v1.Replica on one node."""

    def __init__(
        self, storage: NodeStorage, *, limits: Limits, directory: DirectoryIdentity
    ) -> None:
        self._storage = storage
        self._limits = limits
        self._directory = directory
        # The port of the node's exchange listener, advertised by Identity; the server
        # sets it once bound (0 until then).
        self.exchange_port = 0

    def _identity(self, view: View) -> replica_pb2.DirectoryIdentity:
        identity = identity_pb(view, self._storage.fence.epoch)
        identity.exchange_port = self.exchange_port
        return identity

    @unary
    @_fenced
    async def Apply(
        self, request: replica_pb2.ApplyRequest, context: Context
    ) -> replica_pb2.ApplyResponse:
        self._limits.check_batch(request.records, "Apply records")
        self._limits.check_batch(request.hints, "Apply hints")
        records = records_from_pb(request.records, self._limits)
        if request.columns:
            records += records_from_columns(request.columns, self._limits, held=len(records))
        hints = []
        for hint in request.hints:
            check_target(hint.target)
            check_record(self._limits, hint.record)
            if hint.record.restore:  # a fallback cannot judge a restore (Record.restore)
                raise LimitExceeded(f"hint for {hint.target[:64]!r} carries a restored record")
            hints.append(hint_from_pb(hint))
        self._limits.check_batch(request.markers, "Apply markers")
        markers = markers_of(request.markers, records)
        applied = await self._storage.apply(
            records, hints, markers, epoch=epoch_of(context.invocation_metadata())
        )
        return replica_pb2.ApplyResponse(
            applied=[a is True for a in applied],
            possibly_deleted=[i for i, a in enumerate(applied) if a is None],
        )

    @unary
    @_fenced
    async def Read(
        self, request: replica_pb2.ReadRequest, context: Context
    ) -> replica_pb2.ReadResponse:
        self._limits.check_batch(request.keys, "Read keys")
        keys = list(request.keys)
        max_key = self._limits.max_key_bytes
        for key in keys:
            if not 0 < len(key) <= max_key:
                self._limits.check_key(key)
        # The node's reply budget caps what the caller asks for: values are measured
        # before they are copied, so memory stays within it whatever the keys.
        budget = response_budget(self._limits)
        max_bytes = min(request.max_bytes, budget) if request.max_bytes else budget
        epoch = self._admit(context, "a read")
        # The answer's entries are built from the LMDB values as they are read.
        entries = await self._storage.read_entries(keys, stored_fields, max_bytes=max_bytes)
        # Again once read: a purge under a newer fence may have run meanwhile.
        self._storage.fence.admit(epoch, "a read")
        resume_at = len(entries) if len(entries) < len(keys) else 0
        if request.answers:
            answers = read_answers(keys, entries)
            return replica_pb2.ReadResponse(resume_at=resume_at, answers=answers)
        return read_response(keys, entries, resume_at)

    @unary
    @_fenced
    async def ScanRecords(
        self, request: replica_pb2.ScanRecordsRequest, context: Context
    ) -> replica_pb2.ScanRecordsResponse:
        start, end = check_range(request.start, request.end)
        limit = self._limits.page_size(request.limit)
        epoch = self._admit(context, "a scan")
        records, next_start = await self._storage.scan(start, end, limit)
        self._storage.fence.admit(epoch, "a scan")
        return replica_pb2.ScanRecordsResponse(
            records=[record_to_pb(r) for r in records], next_start=next_start
        )

    @streaming
    @_fenced_stream
    async def StreamRange(
        self, request: replica_pb2.StreamRangeRequest, context: Context
    ) -> AsyncIterator[replica_pb2.RecordBatch]:
        start, end = check_range(request.start, request.end)
        batch_size = self._limits.page_size(request.batch_size)
        epoch = self._admit(context, "a range stream")
        async for batch in self._storage.batches(start, end, batch_size):
            self._storage.fence.admit(epoch, "a range stream")
            yield replica_pb2.RecordBatch(records=[record_to_pb(r) for r in batch])

    @unary
    @_fenced
    async def Digest(
        self, request: replica_pb2.DigestRequest, context: Context
    ) -> replica_pb2.DigestResponse:
        start, end = check_range(request.start, request.end)
        epoch = self._admit(context, "a digest")
        digest, count = await self._storage.digest(start, end)
        self._storage.fence.admit(epoch, "a digest")
        return replica_pb2.DigestResponse(digest=digest, count=count)

    @unary
    async def HintSummary(
        self, request: replica_pb2.HintSummaryRequest, context: Context
    ) -> replica_pb2.HintSummaryResponse:
        summary = await self._storage.hint_summary()
        return replica_pb2.HintSummaryResponse(
            targets=[
                replica_pb2.HintCount(target=target, count=count)
                for target, count in sorted(summary.items())
            ]
        )

    @unary
    @_fenced
    async def ReadHints(
        self, request: replica_pb2.ReadHintsRequest, context: Context
    ) -> replica_pb2.ReadHintsResponse:
        check_target(request.target)
        limit = self._limits.page_size(request.limit)
        epoch = self._admit(context, "reading hints")
        records = await self._storage.read_hints(request.target, limit)
        self._storage.fence.admit(epoch, "reading hints")
        return replica_pb2.ReadHintsResponse(records=[record_to_pb(r) for r in records])

    @unary
    @_fenced
    async def DeleteHints(
        self, request: replica_pb2.DeleteHintsRequest, context: Context
    ) -> replica_pb2.DeleteHintsResponse:
        check_target(request.target)
        self._limits.check_batch(request.records, "DeleteHints records")
        for record in request.records:
            self._limits.check_key(record.key)
        deleted = await self._storage.delete_hints(
            request.target,
            [record_from_pb(r) for r in request.records],
            epoch=epoch_of(context.invocation_metadata()),
        )
        return replica_pb2.DeleteHintsResponse(deleted=deleted)

    @unary
    @_fenced
    async def TokenDigests(
        self, request: replica_pb2.TokenDigestsRequest, context: Context
    ) -> replica_pb2.TokenDigestsResponse:
        ranges = TokenRanges((r.start, r.end) for r in request.ranges)
        epoch = self._admit(context, "token digests")
        digests = await digest_ranges(
            self._storage,
            ranges,
            count_only=request.count_only,
            pace=request.max_records_per_second,
        )
        self._storage.fence.admit(epoch, "token digests")
        return replica_pb2.TokenDigestsResponse(
            digests=[
                replica_pb2.TokenDigest(digest=d.digest, count=d.count, bytes=d.size)
                for d in digests
            ]
        )

    @streaming
    @_fenced_stream
    async def StreamTokenRanges(
        self, request: replica_pb2.StreamTokenRangesRequest, context: Context
    ) -> AsyncIterator[replica_pb2.RecordBatch]:
        ranges = TokenRanges((r.start, r.end) for r in request.ranges)
        epoch = self._admit(context, "a token range stream")
        batches = stream_ranges(
            self._storage,
            ranges,
            batch_size=self._limits.page_size(request.batch_size),
            max_bytes=self._limits.max_message_bytes // 4,
            keys_only=request.keys_only,
            pace=request.max_records_per_second,
        )
        async for batch in batches:
            self._storage.fence.admit(epoch, "a token range stream")
            yield replica_pb2.RecordBatch(records=[record_to_pb(r) for r in batch])

    @unary
    @_fenced
    async def PurgeTokenRanges(
        self, request: replica_pb2.PurgeTokenRangesRequest, context: Context
    ) -> replica_pb2.PurgeTokenRangesResponse:
        ranges = TokenRanges((r.start, r.end) for r in request.ranges)
        epoch = epoch_of(context.invocation_metadata())
        self._storage.fence.admit_purge(epoch)
        purged = await purge_ranges(
            self._storage,
            ranges,
            tombstones_before=request.tombstones_before,
            all_records=request.all_records,
            epoch=epoch,
        )
        return replica_pb2.PurgeTokenRangesResponse(purged=purged)

    @unary
    async def Stats(
        self, request: replica_pb2.StatsRequest, context: Context
    ) -> replica_pb2.StatsResponse:
        return await stats_response(self._storage)

    @streaming
    @_fenced_stream
    async def Snapshot(
        self, request: replica_pb2.SnapshotRequest, context: Context
    ) -> AsyncIterator[replica_pb2.SnapshotBatch]:
        epoch = self._admit(context, "a snapshot")
        batches = snapshot_batches(
            self._storage.store,
            batch_size=self._limits.page_size(request.batch_size),
            max_bytes=self._limits.max_message_bytes // 4,
        )
        async for target, batch in batches:
            self._storage.fence.admit(epoch, "a snapshot")
            yield replica_pb2.SnapshotBatch(
                records=[record_to_pb(r) for r in batch], hint_target=target
            )

    @unary
    async def Identity(
        self, request: replica_pb2.IdentityRequest, context: Context
    ) -> replica_pb2.DirectoryIdentity:
        return self._identity(self._directory.view())

    @unary
    async def SetIdentity(
        self, request: replica_pb2.SetIdentityRequest, context: Context
    ) -> replica_pb2.DirectoryIdentity:
        change = Change(
            expect_generation=request.expect_generation,
            expect_claimed=request.expect_claimed,
            expect_cluster_id=request.expect_cluster_id,
            cluster_id=request.cluster_id,
            generation=request.generation,
            advance_boot=request.advance_boot,
            rebuild_by=request.rebuild_by,
        )
        return self._identity(await self._directory.change(change))

    @unary
    async def RebuildLease(
        self, request: replica_pb2.RebuildLeaseRequest, context: Context
    ) -> replica_pb2.DirectoryIdentity:
        if not request.router_id:
            raise LimitExceeded("RebuildLease needs a router_id")
        view = self._directory.lease(request.router_id, release=request.release)
        return self._identity(view)

    @unary
    async def Fence(
        self, request: replica_pb2.FenceRequest, context: Context
    ) -> replica_pb2.FenceResponse:
        epoch = await self._storage.raise_fence(request.epoch)
        return replica_pb2.FenceResponse(epoch=epoch)

    def _admit(self, context: Context, what: str) -> int | None:
        """The epoch the call was routed under, once the fence admitted it for a read."""
        epoch = epoch_of(context.invocation_metadata())
        self._storage.fence.admit(epoch, what)
        return epoch


def identity_pb(view: View, fence: int) -> replica_pb2.DirectoryIdentity:
    identity = view.identity
    return replica_pb2.DirectoryIdentity(
        node_id=identity.node_id,
        cluster_id=identity.cluster_id,
        generation=identity.generation,
        claimed=identity.claimed,
        boot=view.boot,
        advanced_boot=identity.advanced_boot,
        rebuild_by=view.rebuild_by,
        rebuild_idle_ms=view.rebuild_idle_ms,
        fence_epoch=fence,
    )


def markers_of(messages: Sequence[replica_pb2.Marker], records: Sequence[Record]) -> list[Marker]:
    """The request's markers, each stamped with its record's (version, writer): the record
    of the same key in the same request, so that the two commit together."""
    if not messages:
        return []
    stamps: dict[bytes, tuple[int, int]] = {}
    for record in records:
        stamps[record.key] = max(stamps.get(record.key, (0, 0)), record.stamp)
    markers = []
    for marker in messages:
        check_target(marker.target)
        stamp = stamps.get(marker.key)
        if stamp is None:
            raise LimitExceeded(
                f"marker of key {marker.key[:64]!r} for {marker.target[:64]!r} has no record of"
                " that key in the same request"
            )
        markers.append(Marker(marker.key, marker.target, stamp))
    return markers
