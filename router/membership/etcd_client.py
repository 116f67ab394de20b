"""The etcd calls the topology store makes (read a key, compare-and-swap it, watch it), over
aetcd's generated etcd v3 stubs on grpc.aio channels, failing over between endpoints.

aetcd's high-level ``Client`` is not used: it talks to one endpoint, and its watcher only
reports a stream that fails with an error (one that simply ends leaves the watch waiting
for ever). Here every call has a deadline, a call an endpoint cannot answer moves to the
next endpoint, and a watch ends with an exception whatever ends its stream, so the caller
always learns that it must watch again. A watch asks for a member with a leader
(etcd's ``hasleader`` metadata, as clientv3's ``WithRequireLeader``): a member cut off
from its cluster cancels it instead of leaving it silent.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio
from aetcd import rpc  # type: ignore[import-untyped]
from shardkv.router.membership.topology_store import StoreUnavailable

log = logging.getLogger(__name__)

# Deadline of one unary call to one member (a linearizable read or a Txn takes a few ms;
# a member without a leader takes this long to say so, then the next one is asked).
CALL_TIMEOUT_S = 2.0
# Dead connections are noticed by keepalive pings (etcd refuses pings more often than every
# 5 s: --grpc-keepalive-min-time); a restarted member is retried at least every 2 s.
CHANNEL_OPTIONS = (
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2_000),
)
_REQUIRE_LEADER = (("hasleader", "true"),)
_DELETE = 1  # mvccpb.Event.DELETE


@dataclass(frozen=True)
class Stored:
    """A key's value and the revision of its last change; value None when absent."""

    value: bytes | None
    mod_revision: int
    # The store's revision when this was read (watching from revision + 1 misses nothing).
    revision: int


class Compacted(Exception):
    """The watch asked for history etcd has compacted away: read the key again."""

    def __init__(self, revision: int) -> None:
        super().__init__(f"etcd history is compacted up to revision {revision}")
        self.revision = revision


class EtcdClient:
    """A few etcd v3 calls on one cluster given by its members' host:port."""

    def __init__(self, endpoints: Sequence[str], *, call_timeout_s: float = CALL_TIMEOUT_S):
        if not endpoints:
            raise ValueError("etcd needs at least one endpoint")
        self.endpoints = tuple(endpoints)
        self.name = f"etcd at {','.join(self.endpoints)}"
        self._timeout_s = call_timeout_s
        self._channels: dict[int, grpc.aio.Channel] = {}
        self._current = 0

    def _channel(self) -> grpc.aio.Channel:
        index = self._current
        if index not in self._channels:
            self._channels[index] = grpc.aio.insecure_channel(
                self.endpoints[index], options=CHANNEL_OPTIONS
            )
        return self._channels[index]

    def _next(self) -> None:
        self._current = (self._current + 1) % len(self.endpoints)

    async def _call(self, method: str, request: Any) -> Any:
        """request on KV/method, on each member in turn until one answers."""
        failure = ""
        for _ in self.endpoints:
            endpoint = self.endpoints[self._current]
            call: Callable[..., Awaitable[Any]] = getattr(rpc.KVStub(self._channel()), method)
            try:
                return await call(request, timeout=self._timeout_s)
            except grpc.aio.AioRpcError as err:
                failure = f"{endpoint}: {err.code().name}: {err.details()}"
                if err.code() not in (
                    grpc.StatusCode.UNAVAILABLE,
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                ):
                    raise StoreUnavailable(f"{self.name} refused {method} ({failure})") from err
                self._next()
        raise StoreUnavailable(f"{self.name} is unreachable (last: {failure})")

    async def get(self, key: bytes) -> Stored:
        """The key as a linearizable read finds it."""
        reply = await self._call("Range", rpc.RangeRequest(key=key))
        return _stored(reply.kvs, reply.header.revision)

    async def keys(self, prefix: bytes, *, limit: int) -> tuple[int, list[bytes]]:
        """How many keys start with prefix, and up to limit of them."""
        reply = await self._call(
            "Range",
            rpc.RangeRequest(
                key=prefix, range_end=_prefix_end(prefix), keys_only=True, limit=limit
            ),
        )
        return int(reply.count), [bytes(kv.key) for kv in reply.kvs]

    async def swap(self, key: bytes, value: bytes, *, mod_revision: int) -> tuple[bool, Stored]:
        """Puts value if key's mod_revision is still mod_revision (0: key absent), in one Txn;
        returns whether it did and the key as it is after the Txn."""
        read = rpc.RequestOp(request_range=rpc.RangeRequest(key=key))
        compare = rpc.Compare(
            key=key,
            target=rpc.Compare.MOD,
            result=rpc.Compare.EQUAL,
            mod_revision=mod_revision,
        )
        request = rpc.TxnRequest(
            compare=[compare],
            success=[rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=value)), read],
            failure=[read],
        )
        reply = await self._call("Txn", request)
        after = reply.responses[-1].response_range
        return bool(reply.succeeded), _stored(after.kvs, reply.header.revision)

    async def watch(
        self, key: bytes, *, start_revision: int, on_ready: Callable[[], None]
    ) -> AsyncIterator[Stored]:
        """Every change of key from start_revision on (value None: deleted); calls on_ready
        once etcd has accepted the watch. Never ends: raises Compacted when that history
        is gone, StoreUnavailable when the stream breaks for any other reason (the next
        watch goes to the next member)."""
        endpoint = self.endpoints[self._current]
        call = rpc.WatchStub(self._channel()).Watch(metadata=_REQUIRE_LEADER)
        create = rpc.WatchCreateRequest(key=key, start_revision=start_revision)
        try:
            await call.write(rpc.WatchRequest(create_request=create))
            while True:
                response = await call.read()
                if response is grpc.aio.EOF:
                    raise StoreUnavailable(f"{self.name}: the watch on {endpoint} ended")
                if response.compact_revision:
                    raise Compacted(response.compact_revision)
                if response.canceled:
                    raise StoreUnavailable(
                        f"{self.name}: {endpoint} cancelled the watch ({response.cancel_reason})"
                    )
                if response.created:
                    on_ready()
                for event in response.events:
                    kv = event.kv
                    value = None if event.type == _DELETE else bytes(kv.value)
                    yield Stored(value, kv.mod_revision, kv.mod_revision)
        except grpc.aio.AioRpcError as err:
            self._next()
            raise StoreUnavailable(
                f"{self.name}: the watch on {endpoint} failed ({err.code().name}: {err.details()})"
            ) from err
        except StoreUnavailable:
            self._next()
            raise
        finally:
            call.cancel()

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()


def _stored(kvs: Sequence[Any], revision: int) -> Stored:
    if not kvs:
        return Stored(None, 0, revision)
    return Stored(bytes(kvs[0].value), kvs[0].mod_revision, revision)


def _prefix_end(prefix: bytes) -> bytes:
    """The range end that covers every key starting with prefix (etcd's GetPrefixRangeEnd)."""
    end = bytearray(prefix)
    for index in range(len(end) - 1, -1, -1):
        if end[index] < 0xFF:
            end[index] += 1
            return bytes(end[: index + 1])
    return b"\0"
