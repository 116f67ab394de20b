"""The router's connection to one storage node: coalesced Apply and Read, and direct calls.

Single-key work (the records and hints of writes, the keys of reads, read repairs) goes
through a Coalescer per kind, so concurrent requests share one Replica.Apply or
Replica.Read call per node. Those calls travel as frames on one long-lived TCP connection
per node (shardkv.common.exchange_connection), which costs both ends a small fraction of
a gRPC call's CPU and each hop far less latency; a node without an exchange port gets
unary calls. Bulk
work that is already batched (scans, hint hand-off, health checks) is called directly
(node_calls.py).

Every call carries the topology epoch it was routed under (``shardkv-epoch`` metadata,
router/membership/fencing.py): the coordinator passes the epoch of the placement it used,
and coalesced items travel only with items of the same epoch (epoch_queues.py), so an
item routed under an old placement never leaves under a newer epoch.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Mapping, Sequence
from operator import attrgetter
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health_pb2
from shardkv.common.answers import answered
from shardkv.common.exchange_connection import ExchangeConnection
from shardkv.common.limits import DEFAULT_LIMITS, Limits
from shardkv.common.wire import NODE_ID_KEY
from shardkv.router.membership.epoch_queues import EpochQueues
from shardkv.router.membership.topology import NodeConfig
from shardkv.router.requests.coalescer import Coalescer, Deliver
from shardkv.router.requests.framing import (
    ColumnChunk,
    KeyChunk,
    apply_body,
    passthrough,
    read_body,
)
from shardkv.router.requests.node_calls import (
    EPOCH_KEY,
    MAX_BATCH_BYTES,
    FailureListener,
    NodeCalls,
)
from shardkv.router.requests.node_link import ApplyItem, MarkedRecord
from shardkv.router.requests.replica_answers import ReplicaAnswers, answers_of, split
from shardkv.serving.tally import SizeHistogram
from shardkv.v1 import replica_pb2, replica_pb2_grpc

if TYPE_CHECKING:
    from shardkv.router.membership.fencing import RouterEpoch

# Items per coalesced call: the nodes' batch limit (a node's share of a batch of 1000 keys
# is one call, not two as at 512). Bytes of values per call stay well below the 32 MiB
# message cap (a Read asks the node to stop there, ReadRequest.max_bytes).
MAX_BATCH_ITEMS = DEFAULT_LIMITS.max_batch_items
# The Replica methods sent as frames.
APPLY = "/shardkv.v1.Replica/Apply"
READ = "/shardkv.v1.Replica/Read"
# Calls of one kind outstanding to one node. One: what queues meanwhile leaves as the next,
# larger call, and a call costs far more than an item in it (at 2, batches of 100 cost the
# router and the nodes 10-20% more CPU a key and answered later; single keys alike).
MAX_IN_FLIGHT = 1
# Items queued for one node per kind of call before new ones fail with RESOURCE_EXHAUSTED.
MAX_QUEUED = 20_000


def channel_options(limits: Limits) -> list[tuple[str, int]]:
    """Message caps from Limits, and quick reconnects so a restarted node is seen soon."""
    return [
        ("grpc.max_send_message_length", limits.max_message_bytes),
        ("grpc.max_receive_message_length", limits.max_message_bytes),
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 1000),
    ]


class NodeClient(NodeCalls):
    """Calls to one node; owns its channel."""

    def __init__(
        self,
        node: NodeConfig,
        *,
        limits: Limits,
        call_timeout_s: float,
        on_failure: FailureListener,
        write_timeout_s: float | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        tls: ssl.SSLContext | None = None,
        max_queued: int = MAX_QUEUED,
        token: str | None = None,
        epochs: RouterEpoch | None = None,
    ) -> None:
        """write_timeout_s: an Apply's call timeout (None: call_timeout_s); a router gives
        a request's own bound, as only owners' acknowledgements count toward W and giving
        up on a slow owner (a stalled disk) would only fail the write sooner.
        credentials, tls: TLS to the node on its gRPC channel and on its exchange
        connection, both or neither (None: plaintext, for loopback); max_queued: the
        bound of each per-node queue (load shedding); token: the node token, sent with
        every call (shardkv.shardd.auth); epochs: the epoch the router serves, sent with
        calls that name none, and told of fence refusals (None: such calls carry none)."""
        self.address = node.address
        options = channel_options(limits)
        self._channel = (
            grpc.aio.insecure_channel(node.address, options=options)
            if credentials is None
            else grpc.aio.secure_channel(node.address, credentials, options=options)
        )
        replica = replica_pb2_grpc.ReplicaStub(self._channel)  # type: ignore[no-untyped-call]
        super().__init__(
            node.id,
            replica,
            call_timeout_s=call_timeout_s,
            on_failure=on_failure,
            token=token,
            epochs=epochs,
        )
        self._frames = ExchangeConnection(
            f"node {node.id}",
            node.address,
            exchange_port=self._exchange_port,
            tls=tls,
            authorization=dict(self._auth).get("authorization", ""),
            max_message_bytes=limits.max_message_bytes,
            connect_timeout_s=call_timeout_s,
            welcome={NODE_ID_KEY: node.id},
            refused=self._noticed,
        )
        # Unary Read fed bytes, for a node without the stream (Apply: _apply_framed).
        self._read_bytes = self._channel.unary_unary(
            "/shardkv.v1.Replica/Read",
            request_serializer=passthrough,
            response_deserializer=replica_pb2.ReadResponse.FromString,
        )
        self._health_check = self._channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        self._applies: EpochQueues[ApplyItem, bool] = EpochQueues(
            lambda epoch: Coalescer(
                node.id,
                lambda items, timeout: self._send_apply(items, timeout, epoch),
                on_failure=on_failure,
                max_items=MAX_BATCH_ITEMS,
                max_bytes=MAX_BATCH_BYTES,
                max_in_flight=MAX_IN_FLIGHT,
                call_timeout_s=write_timeout_s or call_timeout_s,
                size_of=_apply_size,
                max_pending=max_queued,
                count_of=_apply_count,
            )
        )
        self._reads: EpochQueues[bytes, replica_pb2.Record] = EpochQueues(
            lambda epoch: Coalescer(
                node.id,
                lambda keys, timeout: self._send_read(keys, timeout, epoch),
                on_failure=on_failure,
                max_items=MAX_BATCH_ITEMS,
                max_bytes=MAX_BATCH_BYTES,
                max_in_flight=MAX_IN_FLIGHT,
                call_timeout_s=call_timeout_s,
                size_of=len,
                max_pending=max_queued,
                resumable=True,  # a node answers up to max_bytes of values; the rest leaves next
            )
        )
        # Chunks of a batch's records or keys (batch_write.py, batch_read.py): one item and
        # one reply each, counted as the entries they hold; counted in the same histograms.
        # Apply fed bytes: the chunks of a call framed as one set of columns (framing.py).
        self._apply_framed = self._channel.unary_unary(
            "/shardkv.v1.Replica/Apply",
            request_serializer=passthrough,
            response_deserializer=replica_pb2.ApplyResponse.FromString,
        )
        self._chunk_applies: EpochQueues[ColumnChunk, bool] = EpochQueues(
            lambda epoch: Coalescer(
                node.id,
                lambda chunks, timeout: self._send_chunks(chunks, timeout, epoch),
                on_failure=on_failure,
                max_items=MAX_BATCH_ITEMS,
                max_bytes=MAX_BATCH_BYTES,
                max_in_flight=MAX_IN_FLIGHT,
                call_timeout_s=write_timeout_s or call_timeout_s,
                size_of=attrgetter("size"),
                max_pending=max_queued,
                count_of=attrgetter("count"),
            )
        )
        self._chunk_applies.batch_sizes = self._applies.batch_sizes
        self._chunk_reads: EpochQueues[KeyChunk, ReplicaAnswers] = EpochQueues(
            lambda epoch: Coalescer(
                node.id,
                lambda chunks, timeout: self._read_chunks(chunks, timeout, epoch),
                on_failure=on_failure,
                max_items=MAX_BATCH_ITEMS,
                max_bytes=MAX_BATCH_BYTES,
                max_in_flight=MAX_IN_FLIGHT,
                call_timeout_s=call_timeout_s,
                size_of=attrgetter("size"),
                max_pending=max_queued,
                count_of=attrgetter("count"),
            )
        )
        self._chunk_reads.batch_sizes = self._reads.batch_sizes

    def apply(
        self,
        items: Sequence[tuple[ApplyItem, Deliver[bool]]],
        deadline: float,
        epoch: int | None = None,
    ) -> None:
        """Queues records and marked records (result: applied; for a restore's: accepted)
        and hints (result: True) for this node, routed under epoch. A marked record and
        its markers always travel in one call."""
        self._applies.submit(items, deadline, epoch)

    def read(
        self,
        keys: Sequence[tuple[bytes, Deliver[replica_pb2.Record]]],
        deadline: float,
        epoch: int | None = None,
    ) -> None:
        """Queues keys to read, routed under epoch; each result is the node's record
        (version 0 when absent)."""
        self._reads.submit(keys, deadline, epoch)

    def apply_chunk(
        self, records: ColumnChunk, deliver: Deliver[bool], deadline: float, epoch: int
    ) -> None:
        """Queues records (never a restore's) as one item: deliver gets True once the node
        applied or already held every one, or the call's NodeFailure."""
        self._chunk_applies.submit([(records, deliver)], deadline, epoch)

    def read_chunk(
        self,
        keys: KeyChunk,
        deliver: Deliver[ReplicaAnswers],
        deadline: float,
        epoch: int,
    ) -> None:
        """Queues keys to read as one item: deliver gets the node's answers to all of them,
        in order, or the call's NodeFailure."""
        self._chunk_reads.submit([(keys, deliver)], deadline, epoch)

    @property
    def frames_answered(self) -> int:
        """Calls the node answered as frames on its exchange connection so far."""
        return self._frames.answered

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

    async def close(self) -> None:
        await self._applies.close()
        await self._reads.close()
        await self._chunk_applies.close()
        await self._chunk_reads.close()
        await self._frames.close()
        await self._channel.close()

    async def _exchange_port(self, timeout_s: float) -> tuple[int, Mapping[str, str]]:
        """The node's port; its welcome must name the node of the topology (welcome)."""
        identity = await self.identity(replica_pb2.IdentityRequest(), timeout_s)
        return identity.exchange_port, {}

    async def _send_apply(
        self, items: list[ApplyItem], timeout: float, epoch: int | None
    ) -> list[bool]:
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
        reply = await self._apply(request.SerializeToString(), timeout, epoch)
        if len(reply.applied) != len(request.records):
            return []  # the coalescer fails the batch as a short reply
        # A restored record's result is whether the node accepted it: False when refused
        # as possibly deleted (replica.proto, Record.restore).
        refused = set(reply.possibly_deleted)
        pairs = enumerate(zip(request.records, reply.applied, strict=True))
        applied = iter(i not in refused if record.restore else ok for i, (record, ok) in pairs)
        return [True if isinstance(item, replica_pb2.Hint) else next(applied) for item in items]

    async def _send_read(
        self, keys: list[bytes], timeout: float, epoch: int | None
    ) -> list[replica_pb2.Record]:
        """The records of keys, or of the prefix whose values fit MAX_BATCH_BYTES (the
        coalescer sends the rest in its next call)."""
        request = replica_pb2.ReadRequest(keys=keys, max_bytes=MAX_BATCH_BYTES)
        reply = await self._read(request.SerializeToString(), timeout, epoch)
        return list(reply.records)

    async def _send_chunks(
        self, chunks: list[ColumnChunk], timeout: float, epoch: int | None
    ) -> list[bool]:
        """One Apply of every chunk's records; True for each chunk the node answered whole."""
        body = apply_body(chunks)
        reply = await self._apply(body, timeout, epoch)
        if len(reply.applied) != sum(chunk.count for chunk in chunks):
            return []  # the coalescer fails the batch as a short reply
        return [True] * len(chunks)

    async def _read_chunks(
        self, chunks: list[KeyChunk], timeout: float, epoch: int | None
    ) -> list[ReplicaAnswers]:
        """The answers to every chunk's keys, split back by chunk. A node answers up to
        MAX_BATCH_BYTES of values per Read: the rest is asked again at once, within the
        same timeout, so a chunk is always answered whole. The keys are listed one by one
        only to ask for that rest, or for a node that answers records (answers_of)."""
        body = read_body(chunks, MAX_BATCH_BYTES)
        total = sum(chunk.count for chunk in chunks)
        replies: list[replica_pb2.ReadAnswers] = []
        done = 0
        end = asyncio.get_running_loop().time() + timeout
        while True:
            reply = await self._read(body, max(0.0, end - asyncio.get_running_loop().time()), epoch)
            if reply.HasField("answers"):
                answers = reply.answers
            else:
                answers = answers_of(_keys(chunks)[done:], reply)
            count = answered(answers)
            if not count:
                return []  # the coalescer fails the batch as a short reply
            replies.append(answers)
            done += count
            if done >= total:
                return split(replies, [chunk.count for chunk in chunks])
            request = replica_pb2.ReadRequest(
                keys=_keys(chunks)[done:], max_bytes=MAX_BATCH_BYTES, answers=True
            )
            body = request.SerializeToString()

    async def _apply(
        self, body: bytes, timeout: float, epoch: int | None
    ) -> replica_pb2.ApplyResponse:
        """One Apply of body (a serialized ApplyRequest) routed under epoch (None: the
        router's): a frame on the node's exchange connection, or a unary call to a node
        without one."""
        reply = await self._frames.send(APPLY, body, timeout, self._frame_metadata(epoch))
        if reply is not None:
            return replica_pb2.ApplyResponse.FromString(reply)
        applied: replica_pb2.ApplyResponse = await self._call(
            self._apply_framed, body, timeout, epoch
        )
        return applied

    async def _read(
        self, body: bytes, timeout: float, epoch: int | None
    ) -> replica_pb2.ReadResponse:
        """One Read of body (a serialized ReadRequest), as _apply."""
        reply = await self._frames.send(READ, body, timeout, self._frame_metadata(epoch))
        if reply is not None:
            return replica_pb2.ReadResponse.FromString(reply)
        read: replica_pb2.ReadResponse = await self._call(self._read_bytes, body, timeout, epoch)
        return read

    def _frame_metadata(self, epoch: int | None) -> dict[str, str]:
        """A frame's metadata: the epoch it is routed under (as a call's, _routed)."""
        routed = self._routed(epoch)
        return {} if routed is None else {EPOCH_KEY: str(routed)}


def _keys(chunks: list[KeyChunk]) -> list[bytes]:
    return [key for chunk in chunks for key in chunk.keys]


def _apply_count(item: ApplyItem) -> int:
    """Entries an item adds to an Apply: its record or hint, and a marker per target (the
    node takes at most MAX_BATCH_ITEMS of each kind a call)."""
    return 1 + len(item.targets) if isinstance(item, MarkedRecord) else 1


def _apply_size(item: ApplyItem) -> int:
    record = item if isinstance(item, replica_pb2.Record) else item.record
    return len(record.key) + len(record.value)
