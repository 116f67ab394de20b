"""Drives etcd the way its Python users do: aetcd's generated stubs on a grpc.aio channel.

One unary call per operation (KV/Put, KV/Range: linearizable, etcd's default, or
serializable, answered by the member asked from its own state, when the driver is made
so). A batch is one KV/Txn of puts or of ranges; etcd refuses a Txn of more than
--max-txn-ops operations (128 by default, and the benchmark runs etcd with its defaults),
so batches of 1000 are marked n/a. With several members the calls go round-robin over one
channel per member, as the official client's balancer does.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import grpc
from aetcd.rpc import rpc_pb2, rpc_pb2_grpc

# etcd's default --max-txn-ops.
ETCD_MAX_TXN_OPS = 128
CALL_TIMEOUT_S = 30.0


class EtcdDriver:
    """The load generator's interface (see load.Driver) over etcd's KV service."""

    def __init__(self, addresses: Sequence[str], *, serializable: bool = False) -> None:
        if not addresses:
            raise ValueError("EtcdDriver needs at least one member address")
        self.max_batch = ETCD_MAX_TXN_OPS
        self._serializable = serializable
        self._channels = [grpc.aio.insecure_channel(a) for a in addresses]
        stubs = [rpc_pb2_grpc.KVStub(c) for c in self._channels]
        self._stubs = itertools.cycle(stubs)

    async def get(self, key: bytes) -> bool:
        request = rpc_pb2.RangeRequest(key=key, serializable=self._serializable)
        reply = await next(self._stubs).Range(request, timeout=CALL_TIMEOUT_S)
        return bool(reply.kvs)

    async def put(self, key: bytes, value: bytes) -> None:
        await next(self._stubs).Put(
            rpc_pb2.PutRequest(key=key, value=value), timeout=CALL_TIMEOUT_S
        )

    async def batch_get(self, keys: Sequence[bytes]) -> int:
        ops = [rpc_pb2.RequestOp(request_range=rpc_pb2.RangeRequest(key=k)) for k in keys]
        reply = await next(self._stubs).Txn(rpc_pb2.TxnRequest(success=ops), timeout=CALL_TIMEOUT_S)
        return sum(1 for r in reply.responses if r.response_range.kvs)

    async def batch_put(self, items: Sequence[tuple[bytes, bytes]]) -> None:
        ops = [rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=k, value=v)) for k, v in items]
        await next(self._stubs).Txn(rpc_pb2.TxnRequest(success=ops), timeout=CALL_TIMEOUT_S)

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()
