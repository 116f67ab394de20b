"""The etcd calls shardkv makes (read, compare-and-swap, watch; leases and keys held by
them) over aetcd's etcd v3 stubs on grpc.aio channels, failing over between endpoints.

Not aetcd's ``Client``: it talks to one endpoint, and its watcher misses a stream that
simply ends. Here every call has a deadline, a call an endpoint cannot answer moves to the
next one, and a watch ends with an exception whatever ends its stream, so the caller knows
to watch again. A watch asks for a member with a leader (``hasleader``, as clientv3's
``WithRequireLeader``): a member cut off from its cluster cancels it, not silence.

A ``Lease`` is held, not trusted: it counts as alive only until the last renewal etcd
answered (timed when it was sent) plus the TTL etcd gave, so the holder stops believing
in it no later than etcd can expire it. Its keeper renews at a third of the TTL and
reports the loss once, with the reason; whoever acts on a lease checks ``alive()`` before
each step (and fences the step itself where it can).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import grpc.aio
from aetcd import rpc  # type: ignore[import-untyped]
from shardkv.router.membership.etcd_security import PLAINTEXT, EtcdAccessError, EtcdSecurity
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
# A keeper whose renewal failed tries again this soon (while the lease may still be alive).
RENEW_RETRY_S = 0.5
T = TypeVar("T")
Metadata = tuple[tuple[str, str], ...]
_RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
_REFUSED = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)


@dataclass(frozen=True)
class Stored:
    """A key's value and the revision of its last change; value None when absent."""

    value: bytes | None
    mod_revision: int
    # The store's revision when this was read (watching from revision + 1 misses nothing).
    revision: int


@dataclass(frozen=True)
class Claim:
    """What put_if_absent found: whether this call created the key, and the key's holder."""

    won: bool
    # The key's value and the lease it is attached to (0: none) after the Txn.
    value: bytes | None
    lease: int
    mod_revision: int


class Compacted(Exception):
    """The watch asked for history etcd has compacted away: read the key again."""

    def __init__(self, revision: int) -> None:
        super().__init__(f"etcd history is compacted up to revision {revision}")
        self.revision = revision


class EtcdClient:
    """A few etcd v3 calls on one cluster given by its members' host:port, with TLS and a
    user when security says so."""

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        call_timeout_s: float = CALL_TIMEOUT_S,
        security: EtcdSecurity = PLAINTEXT,
    ):
        if not endpoints:
            raise ValueError("etcd needs at least one endpoint")
        self.endpoints = tuple(endpoints)
        self.name = f"etcd at {','.join(self.endpoints)}"
        self._timeout_s = call_timeout_s
        self._security = security
        self._channels: dict[int, grpc.aio.Channel] = {}
        self._tokens: dict[int, str] = {}  # per member: simple tokens are a member's own
        self._current = 0

    def _channel(self) -> grpc.aio.Channel:
        index = self._current
        if index not in self._channels:
            self._channels[index] = self._security.channel(self.endpoints[index], CHANNEL_OPTIONS)
        return self._channels[index]

    async def _metadata(self) -> Metadata:
        """The current member's auth token as call metadata (authenticating first)."""
        if self._security.user is None:
            return ()
        index = self._current
        if index not in self._tokens:
            self._tokens[index] = await self._security.token(
                self._channel(), self.endpoints[index], self._timeout_s
            )
        return (("token", self._tokens[index]),)

    def _next(self) -> None:
        self._current = (self._current + 1) % len(self.endpoints)

    async def _call(self, method: str, request: Any) -> Any:
        """request on KV/method, on each member in turn until one answers."""
        return await self._on_members(
            f"KV/{method}",
            lambda channel, metadata: getattr(rpc.KVStub(channel), method)(
                request, timeout=self._timeout_s, metadata=metadata
            ),
        )

    async def _on_members(
        self, what: str, invoke: Callable[[grpc.aio.Channel, Metadata], Awaitable[T]]
    ) -> T:
        """invoke on each member's channel (with its token) in turn until one answers;
        raises StoreUnavailable naming etcd, what and the last failure (EtcdAccessError
        when etcd refuses the credentials)."""
        failure, tried, renewed = "", 0, False
        while tried < len(self.endpoints):
            index = self._current
            try:
                return await invoke(self._channel(), await self._metadata())
            except grpc.aio.AioRpcError as err:
                code = err.code()
                failure = f"{self.endpoints[index]}: {code.name}: {err.details()}"
                if code == grpc.StatusCode.UNAUTHENTICATED and not renewed:
                    renewed = self._tokens.pop(index, None) is not None
                    if renewed:
                        continue  # the member forgot the token: authenticate again
                if code in _REFUSED or "user name is empty" in str(err.details()):
                    raise EtcdAccessError(
                        f"{self.name} refused {what} ({failure}): check --etcd-user,"
                        " --etcd-password-file and --etcd-cert"
                    ) from None
                if code not in _RETRYABLE:
                    raise StoreUnavailable(f"{self.name} refused {what} ({failure})") from err
                self._next()
                tried += 1
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

    async def put_if_absent(self, key: bytes, value: bytes, *, lease: int) -> Claim:
        """Creates key with value attached to lease unless the key exists (a Txn on its
        create_revision == 0); returns whether this call created it and who holds it."""
        read = rpc.RequestOp(request_range=rpc.RangeRequest(key=key))
        absent = rpc.Compare(
            key=key, target=rpc.Compare.CREATE, result=rpc.Compare.EQUAL, create_revision=0
        )
        put = rpc.PutRequest(key=key, value=value, lease=lease)
        request = rpc.TxnRequest(
            compare=[absent], success=[rpc.RequestOp(request_put=put), read], failure=[read]
        )
        reply = await self._call("Txn", request)
        kvs = reply.responses[-1].response_range.kvs
        if not kvs:  # only when the key was deleted by a later Txn of another member
            return Claim(bool(reply.succeeded), None, 0, 0)
        return Claim(bool(reply.succeeded), bytes(kvs[0].value), kvs[0].lease, kvs[0].mod_revision)

    async def grant(self, ttl_s: int) -> Lease:
        """A new lease of ttl_s seconds (etcd may grant more: its minimum TTL), not kept
        alive until Lease.keep_alive is called."""
        sent = time.monotonic()
        reply = await self._on_members(
            "Lease/LeaseGrant",
            lambda channel, metadata: rpc.LeaseStub(channel).LeaseGrant(
                rpc.LeaseGrantRequest(TTL=ttl_s), timeout=self._timeout_s, metadata=metadata
            ),
        )
        if reply.error:
            raise StoreUnavailable(f"{self.name} refused a lease of {ttl_s} s: {reply.error}")
        return Lease(self, int(reply.ID), int(reply.TTL), expires=sent + reply.TTL)

    async def renew(self, lease: int, *, within_s: float | None = None) -> int:
        """Renews lease once; returns the TTL etcd gave it, 0 when it no longer exists.
        within_s is shared among the members, so one that does not answer leaves the
        others time to."""
        timeout_s = min(self._timeout_s, (within_s or self._timeout_s) / len(self.endpoints))

        async def once(channel: grpc.aio.Channel, metadata: Metadata) -> int:
            call = rpc.LeaseStub(channel).LeaseKeepAlive(timeout=timeout_s, metadata=metadata)
            try:
                await call.write(rpc.LeaseKeepAliveRequest(ID=lease))
                reply = await call.read()
            finally:
                call.cancel()
            if reply is grpc.aio.EOF:
                raise StoreUnavailable(f"{self.name} ended the keep-alive of lease {lease:x}")
            return int(reply.TTL)

        return await self._on_members("Lease/LeaseKeepAlive", once)

    async def revoke(self, lease: int) -> None:
        """Ends lease and deletes the keys attached to it (a lease already gone is fine)."""
        try:
            await self._on_members(
                "Lease/LeaseRevoke",
                lambda channel, metadata: rpc.LeaseStub(channel).LeaseRevoke(
                    rpc.LeaseRevokeRequest(ID=lease), timeout=self._timeout_s, metadata=metadata
                ),
            )
        except StoreUnavailable as err:
            if isinstance(err.__cause__, grpc.aio.AioRpcError) and (
                err.__cause__.code() == grpc.StatusCode.NOT_FOUND
            ):
                return
            raise

    async def watch(
        self, key: bytes, *, start_revision: int, on_ready: Callable[[], None]
    ) -> AsyncIterator[Stored]:
        """Every change of key from start_revision on (value None: deleted); calls on_ready
        once etcd has accepted the watch. Never ends: raises Compacted when that history
        is gone, StoreUnavailable when the stream breaks for any other reason (the next
        watch goes to the next member)."""
        index, endpoint = self._current, self.endpoints[self._current]
        call = None
        create = rpc.WatchCreateRequest(key=key, start_revision=start_revision)
        try:
            metadata = _REQUIRE_LEADER + await self._metadata()
            call = rpc.WatchStub(self._channel()).Watch(metadata=metadata)
            await call.write(rpc.WatchRequest(create_request=create))
            while True:
                response = await call.read()
                if response is grpc.aio.EOF:
                    raise StoreUnavailable(f"{self.name}: the watch on {endpoint} ended")
                if response.compact_revision:
                    raise Compacted(response.compact_revision)
                if response.canceled:
                    if "Unauthenticated" in response.cancel_reason:
                        self._tokens.pop(index, None)  # an expired token: get a new one
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
            if err.code() == grpc.StatusCode.UNAUTHENTICATED:
                self._tokens.pop(index, None)  # the next watch authenticates again
            self._next()
            raise StoreUnavailable(
                f"{self.name}: the watch on {endpoint} failed ({err.code().name}: {err.details()})"
            ) from err
        except StoreUnavailable:
            self._next()
            raise
        finally:
            if call is not None:
                call.cancel()

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()


class Lease:
    """An etcd lease this process holds (see the module docstring): alive() until it may
    have expired; keep_alive() renews it in a task and reports its loss once."""

    def __init__(self, client: EtcdClient, lease_id: int, ttl_s: int, *, expires: float):
        self.id = lease_id
        self.ttl_s = ttl_s
        self._client = client
        self._expires = expires  # monotonic: etcd cannot have expired it before this
        self._lost = ""
        self._keeper: asyncio.Task[None] | None = None

    def alive(self) -> bool:
        """Whether etcd surely still holds the lease (checked before acting on it)."""
        return not self._lost and time.monotonic() < self._expires

    @property
    def lost(self) -> str:
        """Why the lease was lost; empty while it is held."""
        return self._lost

    def keep_alive(self, on_lost: Callable[[str], None]) -> None:
        """Renews the lease every TTL/3 in a task; calls on_lost(reason) once when it may
        have expired (no renewal answered in time, or etcd says it is gone), then stops."""
        assert self._keeper is None, f"lease {self.id:x} is kept alive already"
        self._keeper = asyncio.create_task(self._keep(on_lost), name=f"lease-{self.id:x}")

    async def _keep(self, on_lost: Callable[[str], None]) -> None:
        failure = ""
        while True:
            pause = self.ttl_s / 3 if not failure else RENEW_RETRY_S
            await asyncio.sleep(min(pause, max(0.0, self._expires - time.monotonic())))
            left = self._expires - time.monotonic()
            if left <= 0:
                self._lose(f"no renewal answered within its TTL of {self.ttl_s} s ({failure})")
                break
            sent = time.monotonic()
            try:
                renewal = self._client.renew(self.id, within_s=left)
                ttl = await asyncio.wait_for(renewal, timeout=left)
            except (StoreUnavailable, TimeoutError) as err:
                failure = str(err) or "the renewal timed out"
                log.warning("lease %x: renewal failed (%.1f s left): %s", self.id, left, failure)
                continue
            if ttl <= 0:
                self._lose(f"{self._client.name} no longer holds it (expired or revoked)")
                break
            failure, self._expires = "", sent + ttl
        on_lost(self._lost)

    def _lose(self, reason: str) -> None:
        self._lost = f"etcd lease {self.id:x} (TTL {self.ttl_s} s) is lost: {reason}"
        log.error("%s", self._lost)

    async def revoke(self) -> None:
        """Stops renewing and revokes the lease, deleting the keys attached to it."""
        if self._keeper is not None:
            self._keeper.cancel()
            await asyncio.gather(self._keeper, return_exceptions=True)
        if not self._lost:
            self._lost = f"etcd lease {self.id:x} was revoked"
        await self._client.revoke(self.id)


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
