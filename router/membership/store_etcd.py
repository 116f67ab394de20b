"""The topology in etcd, for routers on several hosts: one key, changed by a Txn on its
mod_revision, followed by a watch.

``--topology etcd://HOST:PORT[,HOST:PORT...]/PREFIX`` keeps the topology under
``PREFIX/topology`` as the same TOML text as cluster.toml. A router that finds PREFIX
empty seeds it from its ``--config`` file (a create-if-absent Txn, so of two routers
seeding at once one wins and both serve what it wrote); otherwise the file's membership
is ignored and says so in the log. A PREFIX holding anything else is refused, never
overwritten.

A change is a Txn comparing the key's mod_revision with the revision of the topology it
was computed from. Routers follow the key by watch, from the revision they last read;
when etcd has compacted that history away they read the key again and watch from there.
When etcd cannot be reached the router keeps serving its last topology, refuses changes
(StoreUnavailable: UNAVAILABLE naming etcd) and catches up when etcd returns.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from shardkv.router.membership.etcd_client import Compacted, EtcdClient, Stored
from shardkv.router.membership.etcd_security import PLAINTEXT, EtcdAccessError, EtcdSecurity
from shardkv.router.membership.topology import Topology, TopologyError, parse_topology
from shardkv.router.membership.topology_store import (
    StoreUnavailable,
    TopologyConflict,
    dump_topology,
)

log = logging.getLogger(__name__)

# A router starting while etcd is away waits this long for it, then exits naming it.
START_WAIT_S = 10.0
# Between attempts to watch again while etcd is away.
RETRY_S = (0.2, 2.0)
_ENDPOINT = re.compile(r"^[A-Za-z0-9.\-]+:\d{1,5}$|^\[[0-9A-Fa-f:.]+\]:\d{1,5}$")


@dataclass(frozen=True)
class EtcdTarget:
    """Where the topology lives in etcd: the members, and the prefix of the cluster's keys."""

    endpoints: tuple[str, ...]
    prefix: str

    @property
    def key(self) -> bytes:
        return f"{self.prefix}/topology".encode()

    def __str__(self) -> str:
        return f"etcd://{','.join(self.endpoints)}{self.prefix}"


def parse_etcd_url(text: str) -> EtcdTarget:
    """etcd://HOST:PORT[,HOST:PORT...]/PREFIX; raises ValueError saying what is wrong."""
    scheme, sep, rest = text.partition("://")
    if scheme != "etcd" or not sep:
        raise ValueError(f"{text!r} is not etcd://HOST:PORT[,HOST:PORT...]/PREFIX")
    hosts, slash, path = rest.partition("/")
    prefix = "/" + path.strip("/")
    if not slash or prefix == "/":
        raise ValueError(f"{text!r} names no PREFIX (etcd://HOST:PORT/PREFIX, e.g. /shardkv/prod)")
    endpoints = tuple(hosts.split(","))
    for endpoint in endpoints:
        port = endpoint.rpartition(":")[2]
        if not _ENDPOINT.match(endpoint) or not 0 < int(port) < 65536:
            raise ValueError(f"{text!r}: {endpoint!r} is not HOST:PORT")
    return EtcdTarget(endpoints, prefix)


class EtcdTopologyStore:
    """The topology under one etcd key (see the module docstring)."""

    def __init__(self, target: EtcdTarget, client: EtcdClient) -> None:
        self.target = target
        self.name = f"{client.name} (key {target.key.decode()})"
        self._client = client
        # The newest topology this store has read, written or seen in the watch, with the
        # key's mod_revision then: a swap from it compares that revision.
        self._seen: tuple[Topology, int] | None = None
        self._closed = False

    @property
    def client(self) -> EtcdClient:
        """The etcd client this store uses (move_lease.py holds its leases on it)."""
        return self._client

    def _parse(self, stored: Stored) -> Topology:
        if stored.value is None:
            raise TopologyError(
                f"{self.name} holds no topology (deleted?): restore it, or start a router"
                " on an empty prefix to seed it"
            )
        topology = parse_topology(stored.value.decode("utf-8", "replace"), source=self.name)
        if self._seen is None or stored.mod_revision >= self._seen[1]:
            self._seen = (topology, stored.mod_revision)
        return topology

    async def load(self) -> Topology:
        return self._parse(await self._client.get(self.target.key))

    async def compare_and_swap(self, expected: Topology, new: Topology) -> None:
        if new.epoch <= expected.epoch:
            raise ValueError(f"epoch {new.epoch} does not follow epoch {expected.epoch}")
        text = dump_topology(new).encode()
        for _ in range(2):
            seen = self._seen
            if seen is None or seen[0] != expected:
                stored = await self._client.get(self.target.key)
                seen = (self._parse(stored), stored.mod_revision)
                if seen[0] != expected:
                    raise TopologyConflict(self.name, seen[0], expected)
            done, after = await self._client.swap(self.target.key, text, mod_revision=seen[1])
            current = self._parse(after)
            # A call retried on another member after a timeout may find its own write.
            if done or current == new:
                return
            if current != expected:
                raise TopologyConflict(self.name, current, expected)
            # Only the revision moved (the same text stored again): once more from it.
        raise StoreUnavailable(f"{self.name}: the key keeps being rewritten; try again")

    async def watch(self) -> AsyncIterator[Topology]:
        """The key's topology now, then at every change; a compacted history is read again,
        an unreachable etcd retried with back-off (logged once per outage)."""
        revision = 0  # changes after this revision are not seen yet; 0: read the key first
        outage: float | None = None
        delay = RETRY_S[0]

        def ready() -> None:
            nonlocal outage, delay
            if outage is not None:
                log.warning(
                    "%s is reachable again after %.1f s: following it", self.name,
                    time.monotonic() - outage,
                )  # fmt: skip
            outage, delay = None, RETRY_S[0]

        while not self._closed:
            try:
                if revision == 0:
                    stored = await self._client.get(self.target.key)
                    revision = stored.revision
                    if (topology := self._readable(stored)) is not None:
                        yield topology
                changes = self._client.watch(
                    self.target.key, start_revision=revision + 1, on_ready=ready
                )
                async for stored in changes:
                    revision = stored.revision
                    if (topology := self._readable(stored)) is not None:
                        yield topology
            except Compacted as err:
                log.warning("%s: %s: reading the key again and watching from there", self.name, err)
                revision = 0
            except StoreUnavailable as err:
                if self._closed:
                    return
                if outage is None:
                    outage = time.monotonic()
                    log.warning(
                        "following %s: %s; serving the last topology, changes refused until"
                        " etcd returns", self.target.key.decode(), err,
                    )  # fmt: skip
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_S[1])

    def _readable(self, stored: Stored) -> Topology | None:
        try:
            return self._parse(stored)
        except TopologyError as err:
            log.error("ignoring what etcd holds: %s", err)
            return None

    async def close(self) -> None:
        self._closed = True
        await self._client.close()


async def open_etcd_store(
    target: EtcdTarget,
    *,
    seed: Topology,
    seed_source: str,
    wait_s: float = START_WAIT_S,
    security: EtcdSecurity = PLAINTEXT,
) -> tuple[EtcdTopologyStore, Topology]:
    """Connects (waiting up to wait_s for etcd), seeds an empty prefix from seed, and returns
    the store with the topology to serve. Raises StoreUnavailable naming etcd when it
    does not answer in time (EtcdAccessError at once when it refuses the credentials),
    TopologyError when the prefix holds something else."""
    client = EtcdClient(target.endpoints, security=security)
    store = EtcdTopologyStore(target, client)
    try:
        return store, await _open(store, client, seed, seed_source, wait_s)
    except BaseException:
        await client.close()
        raise


async def _open(
    store: EtcdTopologyStore, client: EtcdClient, seed: Topology, source: str, wait_s: float
) -> Topology:
    deadline = time.monotonic() + wait_s
    prefix = f"{store.target.prefix}/".encode()
    while True:
        try:
            stored = await client.get(store.target.key)
            if stored.value is not None:
                break
            count, some = await client.keys(prefix, limit=3)
        except StoreUnavailable as err:
            if isinstance(err, EtcdAccessError):
                raise  # waiting will not change the credentials
            if time.monotonic() >= deadline:
                raise StoreUnavailable(f"{err} (waited {wait_s:g} s at start)") from None
            await asyncio.sleep(0.5)
            continue
        if store.target.key in some:
            continue  # another router seeded it between our two reads
        if count:
            raise TopologyError(
                f"{store.name}: the prefix holds {count} key(s) but no shardkv topology (e.g."
                f" {', '.join(k.decode('utf-8', 'replace') for k in some)}); refusing to use"
                " or seed it (nothing was written): choose another prefix"
            )
        done, stored = await client.swap(
            store.target.key, dump_topology(seed).encode(), mod_revision=0
        )
        if done:
            log.info("seeded %s from %s at epoch %d", store.name, source, seed.epoch)
            return store._parse(stored)
        break
    try:
        topology = store._parse(stored)
    except TopologyError as err:
        raise TopologyError(
            f"{err}: this is not a shardkv topology; refusing to start (nothing was overwritten)"
        ) from None
    log.info(
        "serving the topology %s holds (epoch %d, %d nodes); the membership in %s is ignored"
        " (it only seeds an empty prefix)",
        store.name, topology.epoch, len(topology.nodes), source,
    )  # fmt: skip
    return topology
