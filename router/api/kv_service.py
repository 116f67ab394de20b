"""The public KV service of the router: check the request, delegate, map errors to codes.

Each handler has one shape (etcd's v3rpc): validate against Limits, work out the deadline
and the number of replicas needed, call the Coordinator (or the scan), and turn the
outcome into a response. Errors end the call through the shared status table
(shardkv.serving.status; the router's entries in shardkv.router.api.errors).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import grpc
from shardkv.common.answers import get_result
from shardkv.common.limits import LimitExceeded, Limits, scan_range
from shardkv.router.api.errors import AnswerTooLarge, Exhausted, Unavailable, unary
from shardkv.router.membership.topology import Topology
from shardkv.router.requests.coordinator import Coordinator, Mutations, WriteOutcome
from shardkv.router.requests.health import NodeHealth
from shardkv.router.requests.node_client import NodeClient
from shardkv.router.requests.outcomes import ReadFailure
from shardkv.router.requests.quorum import replicas_needed
from shardkv.router.requests.read_budget import ReadBudget, too_large
from shardkv.router.requests.scan import scan_page
from shardkv.router.requests.writes import any_set
from shardkv.v1 import kv_pb2, kv_pb2_grpc

Context = grpc.aio.ServicerContext[Any, Any]


def _item_status(outcome: WriteOutcome) -> kv_pb2.ItemStatus:
    if outcome.error is None:
        return kv_pb2.ItemStatus()
    return kv_pb2.ItemStatus(code=outcome.code.value[0], message=outcome.error)


def _failed(outcome: ReadFailure | WriteOutcome) -> Exception:
    """The error a failed single-key outcome is answered with."""
    if outcome.code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return Exhausted(outcome.error)
    return Unavailable(outcome.error)


class KVService(kv_pb2_grpc.KVServicer):
    """shardkv.v1.KV on the router: every key is read and written by quorum."""

    def __init__(
        self,
        coordinator: Coordinator,
        clients: Mapping[str, NodeClient],
        health: NodeHealth,
        *,
        topology: Topology,
        limits: Limits,
        router_id: str,
    ) -> None:
        self._coordinator = coordinator
        self._router_id = router_id
        self._clients = clients
        self._health = health
        self._topology = topology
        self._limits = limits
        self._request_s = topology.timeouts.request_ms / 1000
        # The port answered to ExchangePort (set once the exchange listener is bound).
        self.exchange_port = 0

    def _deadline(self, context: Context) -> float:
        """Loop time by which to answer: the client's deadline, at most request_ms away (a
        router bounds what one request may hold, whatever deadline the client set)."""
        remaining: float | None = context.time_remaining()
        if remaining is None or remaining > self._request_s:
            remaining = self._request_s
        return asyncio.get_running_loop().time() + remaining

    def _reads_needed(self, consistency: int) -> int:
        t = self._topology
        return replicas_needed(consistency, replication=t.replication, default=t.read_quorum)

    def _writes_needed(self, consistency: int) -> int:
        t = self._topology
        return replicas_needed(consistency, replication=t.replication, default=t.write_quorum)

    async def _write_one(
        self, key: bytes, value: bytes | None, consistency: int, context: Context
    ) -> int:
        """Writes value to key (None: deletes it)."""
        self._limits.check_key(key)
        if value is not None:
            self._limits.check_value(key, value)
        needed = self._writes_needed(consistency)
        mutations = Mutations.of([(key, value)])
        [outcome] = await self._coordinator.write(mutations, needed, self._deadline(context))
        if outcome.error is not None:
            raise _failed(outcome)
        return outcome.version

    @unary
    async def Get(self, request: kv_pb2.GetRequest, context: Context) -> kv_pb2.GetResponse:
        self._limits.check_key(request.key)
        needed = self._reads_needed(request.consistency)
        [outcome] = await self._coordinator.read([request.key], needed, self._deadline(context))
        if isinstance(outcome, ReadFailure):
            raise _failed(outcome)
        result = get_result(outcome)
        return kv_pb2.GetResponse(found=result.found, value=result.value, version=result.version)

    @unary
    async def Put(self, request: kv_pb2.PutRequest, context: Context) -> kv_pb2.PutResponse:
        return kv_pb2.PutResponse(
            version=await self._write_one(request.key, request.value, request.consistency, context)
        )

    @unary
    async def Delete(
        self, request: kv_pb2.DeleteRequest, context: Context
    ) -> kv_pb2.DeleteResponse:
        return kv_pb2.DeleteResponse(
            version=await self._write_one(request.key, None, request.consistency, context)
        )

    @unary
    async def BatchGet(self, request: kv_pb2.BatchGetRequest, context: Context) -> bytes:
        """Each distinct key is read once, holding at most a few answers' worth of records
        (read_budget.py); the answer is complete, or RESOURCE_EXHAUSTED naming the message
        limit when it cannot fit in one message (a key named twice counts twice)."""
        self._limits.check_batch(request.keys, "BatchGet")
        keys = list(request.keys)
        self._limits.check_keys(keys, "BatchGet")
        needed = self._reads_needed(request.consistency)
        # Told by a set, cheaper than a dict kept in order, and only built when named twice.
        distinct = keys if len(set(keys)) == len(keys) else list(dict.fromkeys(keys))
        # One answer per replica asked: the N owners, and a pending owner during a move.
        budget = ReadBudget.for_read(self._limits, len(distinct), self._topology.replication + 1)
        deadline = self._deadline(context)
        read = await self._coordinator.read(distinct, needed, deadline, budget=budget)
        if len(distinct) < len(keys):  # a key named twice: an answer per key named
            by_key = dict(zip(distinct, read, strict=True))
            read = [by_key[key] for key in keys]
        # Each key's entry (common/answers.py): as its newest replica serialized it, or as
        # the router wrote it (a failure, a key read by the general path); measured (a key
        # named a thousand times would make a thousand copies), then joined.
        size = sum(map(len, read))
        problem = too_large(self._limits, len(keys), len(distinct), size, budget)
        if problem is not None:
            raise AnswerTooLarge(f"the answer to BatchGet {problem}: ask for fewer keys per call")
        # The entries joined are the serialized BatchGetResponse (a message parsed only to
        # be serialized again would cost ~0.1 µs a key): answered as bytes (services.py).
        return b"".join(read)

    @unary
    async def BatchWrite(
        self, request: kv_pb2.BatchWriteRequest, context: Context
    ) -> kv_pb2.BatchWriteResponse:
        batch = request.mutations
        self._limits.check_batch(batch, "BatchWrite")
        # As columns (writes.py): no object per mutation. Each message is wrapped once, not
        # once per column (0.41 -> 0.26 µs a mutation).
        listed = list(batch)
        keys = [m.key for m in listed]
        values = [m.value for m in listed]
        deletes = bytes([m.delete for m in listed])
        if any_set(deletes):  # a delete's value is dropped, whatever was sent
            pairs = zip(values, deletes, strict=True)
            values = [b"" if delete else value for value, delete in pairs]
        self._limits.check_writes(keys, values, "BatchWrite mutation")
        mutations = Mutations(keys, values, deletes)
        needed = self._writes_needed(request.consistency)
        outcomes = await self._coordinator.write(mutations, needed, self._deadline(context))
        response = kv_pb2.BatchWriteResponse()
        add = response.results.add  # in place, as BatchGet's
        for o in outcomes:
            # No status message where it would be empty: a third of the per-key cost.
            if o.error is None:
                add(version=o.version)
            else:
                add(version=o.version, status=_item_status(o))
        return response

    @unary
    async def ExchangePort(
        self, request: kv_pb2.ExchangePortRequest, context: Context
    ) -> kv_pb2.ExchangePortResponse:
        return kv_pb2.ExchangePortResponse(port=self.exchange_port, router_id=self._router_id)

    @unary
    async def Scan(self, request: kv_pb2.ScanRequest, context: Context) -> kv_pb2.ScanResponse:
        start, end = scan_range(request.prefix, request.start, request.end)
        limit = self._limits.page_size(request.limit)
        needed = self._reads_needed(request.consistency)
        page_token = request.page_token
        if page_token and page_token < start:
            raise LimitExceeded(f"page_token {page_token[:64]!r} sorts before the range start")
        if page_token and end and page_token >= end:
            return kv_pb2.ScanResponse()
        page = await scan_page(
            self._clients,
            self._health,
            placement=self._coordinator.placement,
            epochs=self._coordinator.epochs,
            replication=self._topology.replication,
            needed=needed,
            start=page_token or start,
            end=end,
            limit=limit,
            max_bytes=self._limits.max_message_bytes // 2,
            deadline=self._deadline(context),
        )
        return kv_pb2.ScanResponse(
            records=[
                kv_pb2.KeyValue(key=r.key, value=r.value, version=r.version) for r in page.records
            ],
            next_page_token=page.next_token,
        )
