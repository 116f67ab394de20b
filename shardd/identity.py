"""The identity of a node's data directory: whose it is and how current, kept in the store.

The directory records, in one entry of the store's "meta" database (written in one
fsync'd LMDB transaction): the node id it was made for, the cluster that claimed it, a
generation, and the run ("boot") under which the generation last advanced. shardd writes
the node id when it creates the directory and refuses to start on a directory made for
another node (WrongNode: exit 2, naming both ids). Routers read the identity
(Replica.Identity), compare it with the generation the topology expects of the node
(router/membership/identity.py says when which one advances) and change it by
compare-and-set (Replica.SetIdentity): a claim of a fresh directory, a new run recorded,
a rebuild completed. Every run of the process gets a random boot id, so a router can tell a
restart it did not see.

One router at a time may rebuild the node: it holds the rebuild lease, which it renews
while it copies and which another router may take once it was left idle for
LEASE_IDLE_S. The lease lives in memory only: a restarted node holds none.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from dataclasses import asdict, dataclass, replace

from shardkv.shardd.store import Store

_KEY = b"identity"
# A rebuild lease left unrenewed this long may be taken by another router.
LEASE_IDLE_S = 10.0


class WrongNode(Exception):
    """The data directory was made for another node id: the node must not start on it."""


class IdentityConflict(Exception):
    """The directory's identity is not what the caller saw, or another router holds the
    rebuild lease (FAILED_PRECONDITION); the message says what it is."""


@dataclass(frozen=True)
class Identity:
    """What the directory records about itself."""

    node_id: str
    cluster_id: str = ""
    generation: int = 0
    # False until a router claimed the directory (fresh, or made before identities).
    claimed: bool = False
    # The boot under which the generation last advanced ("" never).
    advanced_boot: str = ""

    def encode(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def decode(cls, raw: bytes) -> Identity:
        fields = json.loads(raw)
        return cls(
            node_id=str(fields["node_id"]),
            cluster_id=str(fields.get("cluster_id", "")),
            generation=int(fields.get("generation", 0)),
            claimed=bool(fields.get("claimed", False)),
            advanced_boot=str(fields.get("advanced_boot", "")),
        )

    def describe(self) -> str:
        state = f"cluster {self.cluster_id or '(unnamed)'}" if self.claimed else "unclaimed"
        return f"node {self.node_id}, {state}, generation {self.generation}"


@dataclass(frozen=True)
class View:
    """The identity as Replica.Identity answers it: the record, this run and the lease."""

    identity: Identity
    boot: str
    rebuild_by: str
    rebuild_idle_ms: int


@dataclass(frozen=True)
class Change:
    """A compare-and-set of the identity (SetIdentityRequest)."""

    expect_generation: int
    expect_claimed: bool
    expect_cluster_id: str
    cluster_id: str
    generation: int
    advance_boot: bool = False
    # Non-empty: the change completes this router's rebuild and releases its lease.
    rebuild_by: str = ""


class DirectoryIdentity:
    """The identity of one open store, this run's boot id and the rebuild lease."""

    def __init__(self, store: Store, identity: Identity) -> None:
        self._store = store
        self._identity = identity
        self.boot = secrets.token_hex(8)
        self._lock = asyncio.Lock()
        self._lease = ""
        self._renewed = 0.0

    @classmethod
    def open(cls, store: Store, node_id: str) -> DirectoryIdentity:
        """Reads the directory's identity, recording one for node_id in a directory that
        has none (a fresh one, or one made before identities); raises WrongNode when the
        directory was made for another node. Blocking: call it on a worker thread."""
        raw = store.meta(_KEY)
        if raw is None:
            identity = Identity(node_id)
            store.meta(_KEY, identity.encode())
        else:
            identity = Identity.decode(raw)
        if identity.node_id != node_id:
            raise WrongNode(
                f"the data directory {store.path} belongs to node {identity.node_id!r}, not to"
                f" {node_id!r} (--id): start {identity.node_id} on it, or give {node_id} its own"
                " directory"
            )
        return cls(store, identity)

    @property
    def identity(self) -> Identity:
        return self._identity

    def view(self) -> View:
        idle = time.monotonic() - self._renewed if self._lease else 0.0
        return View(self._identity, self.boot, self._lease, int(idle * 1000))

    async def change(self, change: Change) -> View:
        """Applies change if the identity is still what its caller saw, durably (one
        fsync'd transaction) before answering; raises IdentityConflict otherwise."""
        async with self._lock:
            now = self._identity
            seen = (change.expect_generation, change.expect_claimed, change.expect_cluster_id)
            if seen != (now.generation, now.claimed, now.cluster_id):
                saw = Identity(
                    now.node_id,
                    change.expect_cluster_id,
                    change.expect_generation,
                    change.expect_claimed,
                )
                raise IdentityConflict(
                    f"the directory is {now.describe()}; the caller saw {saw.describe()}"
                )
            if change.rebuild_by and change.rebuild_by != self._lease:
                raise IdentityConflict(
                    f"router {change.rebuild_by} no longer holds the rebuild lease"
                    f" (held by {self._lease or 'nobody'})"
                )
            new = replace(
                now,
                cluster_id=change.cluster_id,
                generation=change.generation,
                claimed=True,
                advanced_boot=self.boot if change.advance_boot else now.advanced_boot,
            )
            await asyncio.to_thread(self._store.meta, _KEY, new.encode())
            self._identity = new
            if change.rebuild_by:
                self._lease = ""
            return self.view()

    def lease(self, router_id: str, *, release: bool) -> View:
        """Takes or renews the rebuild lease for router_id, or releases it; raises
        IdentityConflict while another router holds it and renewed it recently."""
        if release:
            if self._lease == router_id:
                self._lease = ""
            return self.view()
        idle = time.monotonic() - self._renewed
        if self._lease and self._lease != router_id and idle < LEASE_IDLE_S:
            raise IdentityConflict(
                f"router {self._lease} holds the rebuild lease of node {self._identity.node_id}"
                f" (renewed {idle:.1f} s ago; it lapses after {LEASE_IDLE_S:g} s idle)"
            )
        self._lease, self._renewed = router_id, time.monotonic()
        return self.view()
