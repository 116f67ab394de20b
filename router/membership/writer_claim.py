"""A router's writer id held in etcd under a lease, so that no two routers on any hosts
stamp versions with one writer number.

With ``--topology etcd://...`` a router claims ``PREFIX/writers/<writer number>`` (the
number, not the id: two ids with one CRC-32 would tie the same way) by a put-if-absent
on a lease it keeps alive, before it serves. A key already held makes it wait up to one
lease TTL (a router killed just before frees its id that late), then refuse to start,
naming the holder. A clean stop revokes the lease; a router that dies loses it within
the TTL.

While running, the router hands out no version once its lease may have expired
(``ClaimedClock``: writes answer UNAVAILABLE naming the lease): from then on another
router may hold the id. That check is by the monotonic clock, so a router resumed after
a pause (SIGSTOP, a stalled VM) refuses at once, before its keeper has run. Meanwhile it
tries to claim the id again, on a new lease, and writes again only if it wins.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time

from shardkv.common.hlc import ClockStateError, HybridClock, Reservation, writer_number
from shardkv.router.membership.etcd_client import EtcdClient, Lease
from shardkv.router.membership.topology_store import StoreUnavailable

log = logging.getLogger(__name__)

# The lease's TTL: how long a dead router's id stays taken, and how long etcd may be away
# before this router stops writing.
LEASE_TTL_S = 10
# Between attempts to claim the id, at start and after the lease was lost.
RETRY_S = 0.5


class WriterIdTaken(Exception):
    """Another router holds this router's writer id in etcd; the message names it."""


class WriterClaim:
    """This router's writer id in etcd: claimed by acquire(), kept by its lease, claimed
    again after a loss, released by release()."""

    def __init__(self, client: EtcdClient, prefix: str, router_id: str, *, ttl_s: int) -> None:
        number = writer_number(router_id)
        self.key = f"{prefix}/writers/{number:08x}".encode()
        self._what = f"writer id {router_id!r} (writer number {number:#010x})"
        self._value = f"router {router_id!r} on {socket.gethostname()} pid {os.getpid()}".encode()
        self._client = client
        self._ttl_s = ttl_s
        self._lease: Lease | None = None
        self._lost_why = ""  # why the last lease was lost, while claiming the id again
        self._regain: asyncio.Task[None] | None = None

    async def acquire(self) -> None:
        """Claims the id, waiting up to the TTL (plus a second) for a holder to let go;
        raises WriterIdTaken naming the holder, StoreUnavailable."""
        deadline = time.monotonic() + self._ttl_s + 1
        while (holder := await self._try_claim()) is not None:
            if time.monotonic() >= deadline:
                raise WriterIdTaken(
                    f"{self._what} is held in {self._client.name} by {holder} (key"
                    f" {self.key.decode()}): two routers with one writer id would hand out"
                    " equal versions for different values; give this router another --id"
                    f" (a router that died frees its id within its lease's TTL of"
                    f" {self._ttl_s} s)"
                )
            await asyncio.sleep(RETRY_S)
        log.info("holding %s in %s (key %s)", self._what, self._client.name, self.key.decode())

    async def _try_claim(self) -> str | None:
        """Claims the id on a new lease and keeps it alive; None when this won, otherwise
        the holder (the lease is revoked)."""
        lease = await self._client.grant(self._ttl_s)
        try:
            claim = await self._client.put_if_absent(self.key, self._value, lease=lease.id)
        except BaseException:
            with contextlib.suppress(StoreUnavailable):  # else it expires within the TTL
                await asyncio.shield(self._client.revoke(lease.id))
            raise
        if not claim.won:
            await self._client.revoke(lease.id)
            value = (claim.value or b"a router that just let go").decode("utf-8", "replace")
            return f"{value} (lease {claim.lease:x})"
        self._lease = lease
        lease.keep_alive(self._lost)
        return None

    def lapsed(self) -> str:
        """Why the id may be held elsewhere now; empty while this router surely holds it."""
        lease = self._lease
        if lease is None:
            return f"{self._what} is not held: claiming it again ({self._lost_why})"
        if not lease.alive():
            return f"{self._what} may be held elsewhere: {lease.lost or 'its lease expired'}"
        return ""

    def _lost(self, reason: str) -> None:
        self._lost_why = reason
        log.error("%s: %s; writes refused until it is claimed again", self._what, reason)
        self._regain = asyncio.create_task(self._claim_again(), name="writer-id-claim")

    async def _claim_again(self) -> None:
        """Revokes the lost lease (its key, if etcd still had it) and claims the id on a new
        one until that wins; logs once who holds it meanwhile."""
        lost, self._lease = self._lease, None
        told = ""  # what was last logged: the holder, or that etcd is unreachable
        while True:
            try:
                if lost is not None:
                    await self._client.revoke(lost.id)
                    lost = None
                holder = await self._try_claim()
            except StoreUnavailable as err:
                if told != "unreachable":
                    log.warning("%s: cannot claim it again yet: %s", self._what, err)
                    told = "unreachable"
            else:
                if holder is None:
                    log.warning("%s is held again: writes accepted", self._what)
                    return
                if holder != told:
                    log.error("%s is held by %s: this router refuses writes", self._what, holder)
                    told = holder
            await asyncio.sleep(RETRY_S)

    async def release(self) -> None:
        """Revokes the lease, freeing the id at once (when etcd cannot be reached, it is
        free within the TTL), and closes the client."""
        if self._regain is not None:
            self._regain.cancel()
            await asyncio.gather(self._regain, return_exceptions=True)
        try:
            if self._lease is not None:
                await self._lease.revoke()
                log.info("released %s", self._what)
        except StoreUnavailable as err:
            log.warning("%s: not released (%s); free within %d s", self._what, err, self._ttl_s)
        finally:
            await self._client.close()


class ClaimedClock(HybridClock):
    """The router's clock while its writer id is held in etcd: no version while the claim
    may have lapsed (another router could then stamp the same versions)."""

    def __init__(
        self,
        claim: WriterClaim,
        *,
        offset_s: float,
        max_offset_ms: int | None,
        state: Reservation | None,
    ) -> None:
        super().__init__(offset_s=offset_s, max_offset_ms=max_offset_ms, state=state)
        self._claim = claim

    def now_many(self, count: int) -> int:  # now() comes here too
        if lapsed := self._claim.lapsed():
            raise ClockStateError(f"this router hands out no versions: {lapsed}")
        return super().now_many(count)
