"""The public KV API served by one node on its own: it versions writes with its own clock.

Each handler validates the request, delegates to NodeStorage and builds the answer; errors
end the call through the status table (shardkv.serving.status, the node's entries in
shardkv.shardd.errors). Consistency levels are checked but mean nothing to a single node.
Scan pages may hold fewer live records than the limit (tombstones count toward it and are
dropped), like a filtered page in DynamoDB: keep paging while next_page_token is not empty.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import grpc.aio
from shardkv.common.limits import LimitExceeded, Limits, scan_range
from shardkv.shardd.errors import unary
from shardkv.shardd.node import NodeStorage, Write
from shardkv.shardd.records import Record
from shardkv.shardd.validate import check_consistency, response_budget
from shardkv.v1 import kv_pb2, kv_pb2_grpc

T = TypeVar("T")
Context = grpc.aio.ServicerContext[Any, Any]
_OK = kv_pb2.ItemStatus(code=grpc.StatusCode.OK.value[0])
_INVALID = grpc.StatusCode.INVALID_ARGUMENT.value[0]
_EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]


class KVServicer(kv_pb2_grpc.KVServicer):
    """shardkv.v1.KV on a single node."""

    def __init__(self, storage: NodeStorage, *, limits: Limits) -> None:
        self._storage = storage
        self._limits = limits
        # The port answered to ExchangePort (set once the exchange listener is bound).
        self.exchange_port = 0

    @unary
    async def ExchangePort(
        self, request: kv_pb2.ExchangePortRequest, context: Context
    ) -> kv_pb2.ExchangePortResponse:
        return kv_pb2.ExchangePortResponse(port=self.exchange_port)

    @unary
    async def Get(self, request: kv_pb2.GetRequest, context: Context) -> kv_pb2.GetResponse:
        check_consistency(request.consistency)
        self._limits.check_key(request.key)
        [record] = await self._storage.read([request.key])
        if record is None or record.tombstone:
            return kv_pb2.GetResponse(found=False)
        return kv_pb2.GetResponse(found=True, value=record.value, version=record.version)

    @unary
    async def Put(self, request: kv_pb2.PutRequest, context: Context) -> kv_pb2.PutResponse:
        check_consistency(request.consistency)
        self._limits.check_key(request.key)
        self._limits.check_value(request.key, request.value)
        [record] = await self._storage.write([Write(request.key, request.value)])
        return kv_pb2.PutResponse(version=record.version)

    @unary
    async def Delete(
        self, request: kv_pb2.DeleteRequest, context: Context
    ) -> kv_pb2.DeleteResponse:
        check_consistency(request.consistency)
        self._limits.check_key(request.key)
        [record] = await self._storage.write([Write(request.key, delete=True)])
        return kv_pb2.DeleteResponse(version=record.version)

    @unary
    async def BatchGet(
        self, request: kv_pb2.BatchGetRequest, context: Context
    ) -> kv_pb2.BatchGetResponse:
        """Items fail on their own: a bad key, or one beyond what fits in the answer (read
        within the reply budget, each key once: a key named a thousand times costs one
        read and no more memory than the answer)."""
        check_consistency(request.consistency)
        self._limits.check_batch(request.keys, "BatchGet keys")
        errors = {i: _item_error(self._limits.check_key, key) for i, key in enumerate(request.keys)}
        valid = [i for i, error in errors.items() if error is None]
        budget = response_budget(self._limits)
        read = await self._storage.read([request.keys[i] for i in valid], max_bytes=budget)
        records = dict(zip(valid, read, strict=False))
        results = []
        for i, key in enumerate(request.keys):
            status = errors[i] or _OK
            if status is _OK and i not in records:
                status = kv_pb2.ItemStatus(
                    code=_EXHAUSTED,
                    message=(
                        f"key {key[:64]!r} would make the answer exceed the message limit of"
                        f" {self._limits.max_message_bytes} bytes; read it in a smaller batch"
                    ),
                )
            results.append(_get_result(key, records.get(i), status))
        return kv_pb2.BatchGetResponse(results=results)

    @unary
    async def BatchWrite(
        self, request: kv_pb2.BatchWriteRequest, context: Context
    ) -> kv_pb2.BatchWriteResponse:
        """One commit for the whole batch; an invalid mutation fails alone."""
        check_consistency(request.consistency)
        self._limits.check_batch(request.mutations, "BatchWrite mutations")
        errors = {i: _item_error(self._check_mutation, m) for i, m in enumerate(request.mutations)}
        valid = [i for i, error in errors.items() if error is None]
        writes = [_write_of(request.mutations[i]) for i in valid]
        written = dict(zip(valid, await self._storage.write(writes) if writes else [], strict=True))
        results = [
            kv_pb2.WriteResult(version=written[i].version, status=_OK)
            if i in written
            else kv_pb2.WriteResult(status=errors[i])
            for i in range(len(request.mutations))
        ]
        return kv_pb2.BatchWriteResponse(results=results)

    @unary
    async def Scan(self, request: kv_pb2.ScanRequest, context: Context) -> kv_pb2.ScanResponse:
        check_consistency(request.consistency)
        start, end = _scan_bounds(request)
        limit = self._limits.page_size(request.limit)
        if end and start >= end:
            return kv_pb2.ScanResponse()
        records, next_start = await self._storage.scan(start, end, limit)
        return kv_pb2.ScanResponse(
            records=[
                kv_pb2.KeyValue(key=r.key, value=r.value, version=r.version)
                for r in records
                if not r.tombstone
            ],
            next_page_token=next_start,
        )

    def _check_mutation(self, mutation: kv_pb2.Mutation) -> None:
        self._limits.check_key(mutation.key)
        if not mutation.delete:
            self._limits.check_value(mutation.key, mutation.value)


def _scan_bounds(request: kv_pb2.ScanRequest) -> tuple[bytes, bytes]:
    """The range still to scan: the request's range, resumed at its page token. A token
    outside the range cannot widen it."""
    start, end = scan_range(request.prefix, request.start, request.end)
    return max(start, request.page_token), end


def _write_of(mutation: kv_pb2.Mutation) -> Write:
    return Write(mutation.key, b"" if mutation.delete else mutation.value, mutation.delete)


def _item_error(check: Callable[[T], None], item: T) -> kv_pb2.ItemStatus | None:
    """The INVALID_ARGUMENT status of an item that fails check; None when it passes."""
    try:
        check(item)
    except LimitExceeded as exc:
        return kv_pb2.ItemStatus(code=_INVALID, message=str(exc))
    return None


def _get_result(key: bytes, record: Record | None, status: kv_pb2.ItemStatus) -> kv_pb2.GetResult:
    if record is None or record.tombstone:
        return kv_pb2.GetResult(key=key, found=False, status=status)
    return kv_pb2.GetResult(
        key=key, found=True, value=record.value, version=record.version, status=status
    )
