"""The router's connection to one storage node: coalesced Apply and Read, and direct calls.

Single-key work (the records and hints of writes, the keys of reads, read repairs) goes
through a Coalescer per kind, so concurrent requests share one Replica.Apply or
Replica.Read call per node. Bulk work that is already batched (scans, hint hand-off,
health checks) is called directly.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import grpc
from grpc_health.v1 import health_pb2
from shardkv.common import requestid
from shardkv.common.limits import Limits
from shardkv.router.membership.topology import NodeConfig
from shardkv.router.requests.coalescer import Coalescer, Deliver, NodeFailure
from shardkv.serving.tally import SizeHistogram
from shardkv.v1 import replica_pb2, replica_pb2_grpc

# Items per coalesced call (the node's batch limit is 1000) and bytes of values per call
# (well below the 32 MiB message cap; a Read asks the node to stop there, ReadRequest.max_bytes).
MAX_BATCH_ITEMS = 512
MAX_BATCH_BYTES = 8 << 20
# Calls of one kind outstanding to one node: the second lets a node commit one batch
# while the next travels.
MAX_IN_FLIGHT = 2
# Items queued for one node per kind of call before new ones fail with RESOURCE_EXHAUSTED.
MAX_QUEUED = 20_000


@dataclass(frozen=True, slots=True)
class MarkedRecord:
    """A record for an owner of its key, which also keeps a marker for each of targets
    (other owners that did not acknowledge it) in the same commit (replica.proto, Marker)."""

    record: replica_pb2.Record
    targets: tuple[str, ...]


# What one Apply carries per item: a record for an owner, a hint for a fallback, or a
# record with markers for an owner.
ApplyItem = replica_pb2.Record | replica_pb2.Hint | MarkedRecord
# A token range [start, end) (shardkv.common.ring_tokens).
TokenSpan = tuple[int, int]
# Told of failed calls with the timeout they had; the router marks nodes down from it.
FailureListener = Callable[[NodeFailure, float], None]


class NodeLink(Protocol):
    """What the coordinator needs of a node: coalesced applies and reads. NodeClient is
    the real one; the unit tests drive the coordinator with in-process fakes."""

    def apply(self, items: Sequence[tuple[ApplyItem, Deliver[bool]]], deadline: float) -> None:
        """Queues items; each callback gets its result or a NodeFailure, exactly once."""

    def read(
        self, keys: Sequence[tuple[bytes, Deliver[replica_pb2.Record]]], deadline: float
    ) -> None:
        """Queues keys; each callback gets the node's record (version 0: none) or a failure."""


def channel_options(limits: Limits) -> list[tuple[str, int]]:
    """Message caps from Limits, and quick reconnects so a restarted node is seen soon."""
    return [
        ("grpc.max_send_message_length", limits.max_message_bytes),
        ("grpc.max_receive_message_length", limits.max_message_bytes),
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 1000),
    ]


class NodeClient:
    """Calls to one node; owns its channel."""

    def __init__(
        self,
        node: NodeConfig,
        *,
        limits: Limits,
        call_timeout_s: float,
        on_failure: FailureListener,
        credentials: grpc.ChannelCredentials | None = None,
        max_queued: int = MAX_QUEUED,
        token: str | None = None,
    ) -> None:
        """credentials: TLS to the node (None: plaintext, for loopback); max_queued: the
        bound of each per-node queue (load shedding); token: the node token, sent with
        every call (shardkv.shardd.auth)."""
        self.node_id = node.id
        self._auth = (("authorization", f"Bearer {token}"),) if token else ()
        self.address = node.address
        options = channel_options(limits)
        self._channel = (
            grpc.aio.insecure_channel(node.address, options=options)
            if credentials is None
            else grpc.aio.secure_channel(node.address, credentials, options=options)
        )
        self._replica = replica_pb2_grpc.ReplicaStub(self._channel)  # type: ignore[no-untyped-call]
        self._health_check = self._channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        self._call_timeout_s = call_timeout_s
        self._on_failure = on_failure
        self._applies: Coalescer[ApplyItem, bool] = Coalescer(
            node.id,
            self._send_apply,
            on_failure=on_failure,
            max_items=MAX_BATCH_ITEMS,
            max_bytes=MAX_BATCH_BYTES,
            max_in_flight=MAX_IN_FLIGHT,
            call_timeout_s=call_timeout_s,
            size_of=_apply_size,
            max_pending=max_queued,
        )
        self._reads: Coalescer[bytes, replica_pb2.Record] = Coalescer(
            node.id,
            self._send_read,
            on_failure=on_failure,
            max_items=MAX_BATCH_ITEMS,
            max_bytes=MAX_BATCH_BYTES,
            max_in_flight=MAX_IN_FLIGHT,
            call_timeout_s=call_timeout_s,
            size_of=len,
            max_pending=max_queued,
            resumable=True,  # a node answers up to max_bytes of values; the rest leaves next
        )

    def apply(self, items: Sequence[tuple[ApplyItem, Deliver[bool]]], deadline: float) -> None:
        """Queues records and marked records (result: applied; for a restore's: accepted)
        and hints (result: True) for this node. A marked record and its markers always
        travel in one call."""
        self._applies.submit(items, deadline)

    def read(
        self, keys: Sequence[tuple[bytes, Deliver[replica_pb2.Record]]], deadline: float
    ) -> None:
        """Queues keys to read; each result is the node's record (version 0 when absent)."""
        self._reads.submit(keys, deadline)

    async def apply_now(self, records: Sequence[replica_pb2.Record], timeout_s: float) -> None:
        """One direct Apply of records that are already a batch (hint hand-off)."""
        await self._replica.Apply(
            replica_pb2.ApplyRequest(records=records),
            timeout=min(timeout_s, self._call_timeout_s),
            metadata=self._metadata(),
        )

    async def scan_records(
        self, start: bytes, end: bytes, limit: int, timeout_s: float
    ) -> replica_pb2.ScanRecordsResponse | NodeFailure:
        timeout = min(timeout_s, self._call_timeout_s)
        try:
            reply: replica_pb2.ScanRecordsResponse = await self._replica.ScanRecords(
                replica_pb2.ScanRecordsRequest(start=start, end=end, limit=limit),
                timeout=timeout,
                metadata=self._metadata(),
            )
            return reply
        except grpc.aio.AioRpcError as err:
            failure = NodeFailure(self.node_id, err.code(), err.details() or "")
            self._on_failure(failure, timeout)
            return failure

    async def hint_summary(self) -> replica_pb2.HintSummaryResponse:
        reply: replica_pb2.HintSummaryResponse = await self._replica.HintSummary(
            replica_pb2.HintSummaryRequest(),
            timeout=self._call_timeout_s,
            metadata=self._metadata(),
        )
        return reply

    async def read_hints(self, target: str, limit: int) -> list[replica_pb2.Record]:
        reply = await self._replica.ReadHints(
            replica_pb2.ReadHintsRequest(target=target, limit=limit),
            timeout=self._call_timeout_s,
            metadata=self._metadata(),
        )
        return list(reply.records)

    async def delete_hints(self, target: str, records: Sequence[replica_pb2.Record]) -> int:
        reply = await self._replica.DeleteHints(
            replica_pb2.DeleteHintsRequest(target=target, records=records),
            timeout=self._call_timeout_s,
            metadata=self._metadata(),
        )
        return int(reply.deleted)

    # -- range work (moves and anti-entropy): bulk calls with their own, longer timeouts --

    async def token_digests(
        self, ranges: Sequence[TokenSpan], *, count_only: bool, pace: int, timeout_s: float
    ) -> list[replica_pb2.TokenDigest]:
        """Digest (or count) of each token range, in order (one walk of the node's store)."""
        reply = await self._replica.TokenDigests(
            replica_pb2.TokenDigestsRequest(
                ranges=_token_ranges(ranges), count_only=count_only, max_records_per_second=pace
            ),
            timeout=timeout_s,
            metadata=self._metadata(),
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
            metadata=self._metadata(),
        )
        try:
            async for batch in call:
                yield list(batch.records)
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
    ) -> int:
        """Removes old tombstones of token ranges, or all their records; returns how many."""
        reply = await self._replica.PurgeTokenRanges(
            replica_pb2.PurgeTokenRangesRequest(
                ranges=_token_ranges(ranges),
                tombstones_before=tombstones_before,
                all_records=all_records,
            ),
            timeout=timeout_s,
            metadata=self._metadata(),
        )
        return int(reply.purged)

    async def apply_batch(self, records: Sequence[replica_pb2.Record], timeout_s: float) -> None:
        """One direct, durable Apply of a batch of records (not bounded by node_call_ms)."""
        await self._replica.Apply(
            replica_pb2.ApplyRequest(records=records), timeout=timeout_s, metadata=self._metadata()
        )

    async def read_batch(self, keys: Sequence[bytes], timeout_s: float) -> list[replica_pb2.Record]:
        """The node's records of keys, in order (version 0 where it holds none), asked for
        in pages of MAX_BATCH_BYTES of values (the node says where to resume)."""
        records: list[replica_pb2.Record] = []
        while len(records) < len(keys):
            reply = await self._replica.Read(
                replica_pb2.ReadRequest(keys=keys[len(records) :], max_bytes=MAX_BATCH_BYTES),
                timeout=timeout_s,
                metadata=self._metadata(),
            )
            if not reply.records:
                raise RuntimeError(f"node {self.node_id} answered no record of {len(keys)}")
            records += reply.records
        return records

    # -- operations: status and backups ------------------------------------------------

    async def stats(self, timeout_s: float) -> replica_pb2.StatsResponse:
        """The node's figures (records, hints, disk, work done since it started)."""
        reply: replica_pb2.StatsResponse = await self._replica.Stats(
            replica_pb2.StatsRequest(), timeout=timeout_s, metadata=self._metadata()
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
        reply: replica_pb2.DirectoryIdentity = await call(
            request, timeout=timeout_s, metadata=self._metadata()
        )
        return reply

    async def snapshot(
        self, batch_size: int, timeout_s: float | None
    ) -> AsyncIterator[replica_pb2.SnapshotBatch]:
        """A consistent copy of the node's store, batch by batch (no deadline when
        timeout_s is None: a large store streams as long as it takes)."""
        call = self._replica.Snapshot(
            replica_pb2.SnapshotRequest(batch_size=batch_size),
            timeout=timeout_s,
            metadata=self._metadata(),
        )
        try:
            async for batch in call:
                yield batch
        finally:
            # Closing this generator does not end the call: without the cancel, a Backup
            # cancelled by its client kept the node's stream, and its copy of the store,
            # open until the deadline (forever without one).
            call.cancel()

    def batch_sizes(self) -> dict[str, SizeHistogram]:
        """Items per coalesced call, by kind of call (for the metrics endpoint)."""
        return {"apply": self._applies.batch_sizes, "read": self._reads.batch_sizes}

    async def check(self, timeout_s: float) -> str | None:
        """None when the node's health service answers SERVING, else what went wrong."""
        try:
            reply = await self._health_check(health_pb2.HealthCheckRequest(), timeout=timeout_s)
        except grpc.aio.AioRpcError as err:
            return f"{err.code().name}: {err.details()}"
        if reply.status != health_pb2.HealthCheckResponse.SERVING:
            return f"status {health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}"
        return None

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        """What every call to the node carries: the node token (if any) and the request id."""
        return self._auth + (requestid.outgoing() or ())

    async def close(self) -> None:
        await self._applies.close()
        await self._reads.close()
        await self._channel.close()

    async def _send_apply(self, items: list[ApplyItem], timeout: float) -> list[bool]:
        request = replica_pb2.ApplyRequest()
        for item in items:
            if isinstance(item, replica_pb2.Hint):
                request.hints.append(item)
            elif isinstance(item, MarkedRecord):
                request.records.append(item.record)
                for target in item.targets:
                    request.markers.add(key=item.record.key, target=target)
            else:
                request.records.append(item)
        reply = await self._replica.Apply(request, timeout=timeout, metadata=self._metadata())
        if len(reply.applied) != len(request.records):
            return []  # the coalescer fails the batch as a short reply
        # A restored record's result is whether the node accepted it: False when refused
        # as possibly deleted (replica.proto, Record.restore).
        refused = set(reply.possibly_deleted)
        pairs = enumerate(zip(request.records, reply.applied, strict=True))
        applied = iter(i not in refused if record.restore else ok for i, (record, ok) in pairs)
        return [True if isinstance(item, replica_pb2.Hint) else next(applied) for item in items]

    async def _send_read(self, keys: list[bytes], timeout: float) -> list[replica_pb2.Record]:
        """The records of keys, or of the prefix whose values fit MAX_BATCH_BYTES (the
        coalescer sends the rest in its next call)."""
        reply = await self._replica.Read(
            replica_pb2.ReadRequest(keys=keys, max_bytes=MAX_BATCH_BYTES),
            timeout=timeout,
            metadata=self._metadata(),
        )
        return list(reply.records)


def _token_ranges(ranges: Sequence[TokenSpan]) -> list[replica_pb2.TokenRange]:
    return [replica_pb2.TokenRange(start=start, end=end) for start, end in ranges]


def _apply_size(item: ApplyItem) -> int:
    record = item if isinstance(item, replica_pb2.Record) else item.record
    return len(record.key) + len(record.value)
