"""One driver per move on the etcd back end: the right to drive is a key held on a lease.

``PREFIX/move-driver`` names the router driving the move in progress and is attached to an
etcd lease that router keeps alive (etcd_client.Lease). A router begins, resumes, aborts
or takes over a move only once it holds the key, and checks before every step that its
lease is surely still alive (by its own monotonic clock, so a router resumed from a pause
stops before its next step). The lease is not what makes a late step harmless: fencing
is (fencing.py). A router taking a move over first moves the topology to epoch + 1 naming
itself driver (a compare-and-swap) and fences that epoch on every node of the move, so
whatever the old driver still sends (a stream's batch, a switch, a drop) is refused.

When the driver dies, its lease expires within TTL_S and the key goes with it; every
router looks every WATCH_S for a move whose driver holds no key and takes it over, at the
step it had reached (drops included). A driver whose move failed keeps the key while it
runs (the move waits for an operator: repeat it, or abort it); a driver that stops cleanly
releases it, and so does a router whose step's compare-and-swap failed (claimed). With
the file back end there is no lease: repeating the request resumes a move, through any
router.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from shardkv.router.membership.etcd_client import EtcdClient, Lease
from shardkv.router.membership.move_plan import MoveConflict
from shardkv.router.membership.store_etcd import EtcdTopologyStore
from shardkv.router.membership.topology import Topology
from shardkv.router.membership.topology_store import StoreUnavailable, TopologyStore

log = logging.getLogger(__name__)

# How long a dead driver holds its move, and how often routers look for such a move.
TTL_S = 5
WATCH_S = 1.0
_RETRY_S = 0.2


class MoveLease:
    """This router's claim to drive the move in progress."""

    def __init__(self, client: EtcdClient, prefix: str, router_id: str) -> None:
        self.key = f"{prefix}/move-driver".encode()
        self._client = client
        self._router_id = router_id
        self._lease: Lease | None = None

    async def acquire(self, move_id: str) -> str | None:
        """Holds the key for this router; None once it does, otherwise who holds it. A key
        left by an earlier run of this router (same id, another lease) is waited out, at
        most TTL_S."""
        if self._lease is not None and self._lease.alive():
            return None
        deadline = time.monotonic() + TTL_S + 1
        while True:
            lease = await self._client.grant(TTL_S)
            value = f"{self._router_id} {move_id}".encode()
            try:
                claim = await self._client.put_if_absent(self.key, value, lease=lease.id)
            except BaseException:
                with contextlib.suppress(StoreUnavailable):
                    await asyncio.shield(self._client.revoke(lease.id))
                raise
            if claim.won:
                self._lease = lease
                lease.keep_alive(lambda reason: log.error("driving moves: %s", reason))
                log.info("holding %s for move %s", self.key.decode(), move_id)
                return None
            await self._client.revoke(lease.id)
            holder = (claim.value or b"").decode("utf-8", "replace")
            if holder.split(" ", 1)[0] != self._router_id or time.monotonic() > deadline:
                return holder or "a router that just let go"
            await asyncio.sleep(_RETRY_S)

    def lapsed(self) -> str:
        """Why this router may not drive now; empty while its lease surely holds."""
        lease = self._lease
        if lease is None:
            return f"this router does not hold {self.key.decode()}"
        if not lease.alive():
            return f"the lease on {self.key.decode()} may have expired: {lease.lost or 'TTL'}"
        return ""

    async def holder(self) -> str | None:
        """Who holds the key (router id and move), None when nobody does."""
        stored = await self._client.get(self.key)
        return None if stored.value is None else stored.value.decode("utf-8", "replace")

    async def release(self) -> None:
        """Lets go of the key (revokes the lease); nothing when not held."""
        lease, self._lease = self._lease, None
        if lease is not None:
            with contextlib.suppress(StoreUnavailable):
                await lease.revoke()


async def claim(lease: MoveLease | None, move_id: str) -> None:
    """Holds the move lease (None: the file back end, nothing to hold), or raises
    MoveConflict naming its holder."""
    if lease is None:
        return
    holder = await lease.acquire(move_id)
    if holder is not None:
        raise MoveConflict(
            f"move {move_id} is driven by {holder}, which holds {lease.key.decode()};"
            " another router takes it over only once that lease expires"
        )


@contextlib.asynccontextmanager
async def claimed(lease: MoveLease | None, move_id: str) -> AsyncIterator[None]:
    """Holds the move lease around the commit of a move's step. A lease taken here is let
    go when the commit fails: no move of this router's is stored then, and a lease kept
    for none would refuse every other router's change for as long as this one runs. (A
    commit whose outcome is unknown may have stored the move: without a lease, another
    router takes it over, take_over_orphans.)"""
    held = lease is not None and not lease.lapsed()
    await claim(lease, move_id)
    try:
        yield
    except BaseException:
        if lease is not None and not held:
            await lease.release()
        raise


def move_lease(store: TopologyStore | None, router_id: str) -> MoveLease | None:
    """The move lease of a router whose topology lives in etcd; None otherwise."""
    if isinstance(store, EtcdTopologyStore):
        return MoveLease(store.client, store.target.prefix, router_id)
    return None


async def take_over_orphans(
    lease: MoveLease,
    topology: Callable[[], Topology],
    router_id: str,
    take_over: Callable[[], Awaitable[object]],
) -> None:
    """Every WATCH_S: a move driven by another router that holds no key (it died, or
    paused past its lease) is taken over by take_over() (errors are logged: another
    router may win the key first, and the next look decides again)."""
    while True:
        await asyncio.sleep(WATCH_S)
        move = topology().move
        if move is None or move.driver == router_id:
            continue
        try:
            if await lease.holder() is None:
                log.warning(
                    "move %s: driver %s holds no lease; taking it over", move.id, move.driver
                )
                await take_over()
        except Exception as err:
            log.info("move %s not taken over now: %r", move.id, err)
