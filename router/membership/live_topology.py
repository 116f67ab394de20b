"""The router's live node set: applies a new topology to a running router, persists it, and
picks up changes other routers stored.

Several routers may serve one cluster. A change (node add or remove) is made through one
router, which stores every step with a higher epoch by compare-and-swap on its topology
store (cluster.toml or etcd, topology_store.py): a step computed from a topology the store
no longer holds is refused (TopologyConflict, FAILED_PRECONDITION naming what won), and
this router then serves what the store holds if it is newer. Every router follows the
store (the file is polled every ``timeouts.watch_interval_ms``; etcd is watched) and
adopts a topology whose epoch is higher than the one it serves; one at its own epoch with
other content cannot come from a router (every change raises the epoch) and is refused
with an error in the log. A router started later reads the store at start. A router need
not follow in time: a move fences every node at each new epoch (fencing.py), a node
refuses what a router routes under an older one, and the router then reloads the store at
once (``reload``) and routes the request again.

Adopting a topology opens channels (and health checks) to new nodes before the placement
names them, and closes a removed node's channel only after the settle delay, when no
request can still be using it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from shardkv.router.membership.fencing import RouterEpoch
from shardkv.router.membership.topology import (
    DROP,
    NodeConfig,
    Topology,
    TopologyError,
    check_placement,
)
from shardkv.router.membership.topology_store import TopologyConflict, TopologyStore
from shardkv.router.placement.current import Layout, Placement
from shardkv.router.placement.ring import Ring
from shardkv.router.requests.health import HealthMonitor, NodeHealth
from shardkv.router.requests.node_client import NodeClient

log = logging.getLogger(__name__)

ClientFactory = Callable[[NodeConfig], NodeClient]


def layout_of(topology: Topology) -> Layout:
    """The rings of a topology: while a move streams, the ring before it and the ring after
    it; once it switched (its drops pending), the ring after it alone."""
    move = topology.move
    if move is not None and move.phase == DROP:
        return Layout(topology.epoch, Ring(topology.weights(joined=True)))
    old = Ring(topology.weights(joined=False))
    if move is None:
        return Layout(topology.epoch, old)
    return Layout(topology.epoch, old, Ring(topology.weights(joined=True)))


class Membership:
    """The topology in force on this router, its placement and its node channels."""

    def __init__(
        self,
        topology: Topology,
        *,
        store: TopologyStore | None,
        clients: dict[str, NodeClient],
        health: NodeHealth,
        new_client: ClientFactory,
        epochs: RouterEpoch | None = None,
    ) -> None:
        """clients is the dict every service reads (changed in place); store is where the
        topology is kept, None when changes cannot be persisted (they are then refused).
        The membership owns the store and closes it when stopped. epochs is told of
        every epoch adopted and reloads through this membership."""
        self.store = store
        self.epochs = epochs or RouterEpoch(topology.epoch)
        self.epochs.bind(self.reload)
        self.clients = clients
        self.health = health
        self._topology = topology
        self._layout = layout_of(topology)
        self.placement = Placement(self._layout)
        self._new_client = new_client
        self._monitor: HealthMonitor | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._watcher: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    @property
    def topology(self) -> Topology:
        return self._topology

    @property
    def layout(self) -> Layout:
        return self._layout

    def shares(self) -> dict[str, float]:
        """Each node's share of primary ownership under the authoritative ring (0 for a
        node still joining)."""
        shares = self._layout.old.shares()
        return {node.id: shares.get(node.id, 0.0) for node in self._topology.nodes}

    def start(self, monitor: HealthMonitor) -> None:
        """Starts following the store for changes made through other routers."""
        self._monitor = monitor
        if self.store is not None:
            self._watcher = asyncio.create_task(self._follow(self.store), name="topology-watch")

    async def stop(self) -> None:
        tasks = [*self._tasks, *([self._watcher] if self._watcher else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.store is not None:
            await self.store.close()

    async def reload(self) -> None:
        """Reads the store now and adopts what it holds if newer (a node refused a call
        as routed under an older epoch than its fence)."""
        if self.store is None:
            return
        topology = await self.store.load()
        async with self._lock:
            self._consider(topology, self.store.name)

    async def commit(self, topology: Topology, *, expected: Topology) -> None:
        """Stores topology if the store still holds expected (the topology it was computed
        from), then serves it; raises TopologyConflict (FAILED_PRECONDITION) naming what
        the store holds otherwise, after adopting that when it is newer, and
        StoreUnavailable when the store cannot be reached. A topology that would leave a
        node without ring points or a key with fewer than N owners is refused
        (TopologyError), whichever step of a move produced it."""
        if self.store is None:
            raise TopologyError("this router was started without a topology store to write")
        check_placement(topology)
        async with self._lock:
            try:
                await self.store.compare_and_swap(expected, topology)
            except TopologyConflict as err:
                log.warning("topology change to epoch %d refused: %s", topology.epoch, err)
                self._consider(err.stored, self.store.name)
                raise
            self._adopt(topology)

    def _adopt(self, topology: Topology) -> None:
        """Serves topology: channels to new nodes first, then the placement, then closes
        channels of nodes that left (after the settle delay)."""
        old_nodes = {node.id: node for node in self._topology.nodes}
        new_nodes = {node.id: node for node in topology.nodes}
        retired: list[NodeClient] = []
        for node_id, node in new_nodes.items():
            known = old_nodes.get(node_id)
            if known is not None and known.address == node.address and node_id in self.clients:
                continue
            if node_id in self.clients:
                retired.append(self.clients[node_id])
            self.clients[node_id] = self._new_client(node)
            if self._monitor is not None:
                self._monitor.unwatch(node_id)
                self._monitor.watch(node_id, self.clients[node_id].check)
            else:
                self.health.add(node_id)
        self._topology = topology
        self._layout = layout_of(topology)
        self.placement.use(self._layout)
        self.epochs.epoch = topology.epoch
        for node_id in old_nodes.keys() - new_nodes.keys():
            client = self.clients.pop(node_id, None)
            if client is not None:
                retired.append(client)
            if self._monitor is not None:
                self._monitor.unwatch(node_id)
        if retired:
            self._spawn(self._close_later(retired, topology.rebalance.settle_ms / 1000))
        log.info("serving topology epoch %d: %s", topology.epoch, _nodes(topology))

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _close_later(self, clients: list[NodeClient], delay_s: float) -> None:
        await asyncio.sleep(delay_s)
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)

    async def _follow(self, store: TopologyStore) -> None:
        """Considers every topology the store holds from now on (a watch that fails is
        logged and begun again: a router must never stop following)."""
        while True:
            try:
                async for topology in store.watch():
                    async with self._lock:
                        self._consider(topology, store.name)
                return  # the store was closed
            except Exception:
                log.exception("following %s failed; following it again", store.name)
                await asyncio.sleep(1.0)

    def _consider(self, topology: Topology, source: str) -> None:
        """Adopts topology if it is newer than the one served; says why not otherwise."""
        served = self._topology
        quorums = (topology.replication, topology.read_quorum, topology.write_quorum)
        if topology == served:
            return
        if quorums != (served.replication, served.read_quorum, served.write_quorum):
            log.warning(
                "%s changed N/R/W to %s: ignored until this router restarts", source, quorums
            )
        elif topology.epoch > served.epoch:
            log.info("%s changed: epoch %d -> %d", source, served.epoch, topology.epoch)
            self._adopt(topology)
        elif topology.epoch == served.epoch:
            log.error(
                "%s holds epoch %d with other content than this router serves at that epoch"
                " (nodes %s, move %s; serving nodes %s, move %s): every change raises the"
                " epoch, so it was written outside shardkv. Not adopted, and topology"
                " changes are refused until the store is fixed",
                source,
                topology.epoch,
                _nodes(topology),
                topology.move.id if topology.move else "none",
                _nodes(served),
                served.move.id if served.move else "none",
            )
        else:
            log.warning(
                "%s changed without a higher epoch (%d, serving %d): ignored",
                source,
                topology.epoch,
                served.epoch,
            )


def _nodes(topology: Topology) -> str:
    return ", ".join(
        f"{n.id}@{n.address}" + ("" if n.state == "member" else f" ({n.state})")
        for n in topology.nodes
    )
