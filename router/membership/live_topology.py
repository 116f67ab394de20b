"""The router's live node set: applies a new topology to a running router, persists it, and
picks up changes other routers wrote to cluster.toml.

Several routers may serve one cluster. A change (node add or remove) is made through one
router, which writes every step to cluster.toml atomically (topology_file.py) with a
higher epoch. Every router re-reads the file when its modification time changes (checked
every ``timeouts.watch_interval_ms``) and adopts it when its epoch is higher than the one
it serves; a router started later reads it at start. The rebalance settle delay
(``[rebalance] settle_ms``) must therefore exceed the watch interval, so all routers
follow a transition before ranges are streamed and before given-away ranges are dropped.

Adopting a topology opens channels (and health checks) to new nodes before the placement
names them, and closes a removed node's channel only after the settle delay, when no
request can still be using it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from shardkv.router.membership.topology import (
    NodeConfig,
    Topology,
    TopologyError,
    check_placement,
    load_topology,
)
from shardkv.router.membership.topology_store import save_topology
from shardkv.router.placement.current import Layout, Placement
from shardkv.router.placement.ring import Ring
from shardkv.router.requests.health import HealthMonitor, NodeHealth
from shardkv.router.requests.node_client import NodeClient

log = logging.getLogger(__name__)

ClientFactory = Callable[[NodeConfig], NodeClient]


def layout_of(topology: Topology) -> Layout:
    """The rings of a topology: during a move, the ring before it and the ring after it."""
    old = Ring(topology.weights(joined=False))
    if topology.move is None:
        return Layout(topology.epoch, old)
    return Layout(topology.epoch, old, Ring(topology.weights(joined=True)))


class Membership:
    """The topology in force on this router, its placement and its node channels."""

    def __init__(
        self,
        topology: Topology,
        *,
        path: Path | None,
        clients: dict[str, NodeClient],
        health: NodeHealth,
        new_client: ClientFactory,
    ) -> None:
        """clients is the dict every service reads (changed in place); path is cluster.toml,
        None when changes cannot be persisted (they are then refused)."""
        self.path = path
        self.clients = clients
        self.health = health
        self._topology = topology
        self._layout = layout_of(topology)
        self.placement = Placement(self._layout)
        self._new_client = new_client
        self._monitor: HealthMonitor | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._watcher: asyncio.Task[None] | None = None
        self._file_stamp = self._stamp()
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
        """Starts watching cluster.toml for changes made through other routers."""
        self._monitor = monitor
        if self.path is not None:
            self._watcher = asyncio.create_task(self._watch(self.path), name="topology-watch")

    async def stop(self) -> None:
        tasks = [*self._tasks, *([self._watcher] if self._watcher else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def commit(self, topology: Topology) -> None:
        """Persists topology to cluster.toml, then serves it. A topology that would leave a
        node without ring points or a key with fewer than N owners is refused
        (TopologyError), whichever step of a move produced it."""
        if self.path is None:
            raise TopologyError("this router was started without a topology file to write")
        check_placement(topology)
        async with self._lock:
            await asyncio.to_thread(save_topology, self.path, topology)
            self._file_stamp = self._stamp()
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
        for node_id in old_nodes.keys() - new_nodes.keys():
            client = self.clients.pop(node_id, None)
            if client is not None:
                retired.append(client)
            if self._monitor is not None:
                self._monitor.unwatch(node_id)
        if retired:
            self._spawn(self._close_later(retired, topology.rebalance.settle_ms / 1000))
        log.info(
            "serving topology epoch %d: %s",
            topology.epoch,
            ", ".join(
                f"{n.id}@{n.address}" + ("" if n.state == "member" else f" ({n.state})")
                for n in topology.nodes
            ),
        )

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _close_later(self, clients: list[NodeClient], delay_s: float) -> None:
        await asyncio.sleep(delay_s)
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)

    def _stamp(self) -> tuple[int, int] | None:
        try:
            stat = self.path.stat() if self.path else None
        except OSError:
            return None
        return None if stat is None else (stat.st_mtime_ns, stat.st_size)

    async def _watch(self, path: Path) -> None:
        """Adopts the file's topology whenever it changed and carries a higher epoch."""
        interval_s = self._topology.timeouts.watch_interval_ms / 1000
        while True:
            await asyncio.sleep(interval_s)
            stamp = self._stamp()
            if stamp is None or stamp == self._file_stamp:
                continue
            async with self._lock:
                try:
                    topology = await asyncio.to_thread(load_topology, path)
                except TopologyError as err:
                    log.warning("ignoring changed topology file: %s", err)
                    self._file_stamp = stamp
                    continue
                self._file_stamp = stamp
                served = self._topology
                quorums = (topology.replication, topology.read_quorum, topology.write_quorum)
                if quorums != (served.replication, served.read_quorum, served.write_quorum):
                    log.warning(
                        "%s changed N/R/W to %s: ignored until this router restarts", path, quorums
                    )
                elif topology.epoch > self._topology.epoch:
                    log.info(
                        "%s changed: epoch %d -> %d", path, self._topology.epoch, topology.epoch
                    )
                    self._adopt(topology)
                elif topology != self._topology:
                    log.warning(
                        "%s changed without a higher epoch (%d, serving %d): ignored",
                        path,
                        topology.epoch,
                        self._topology.epoch,
                    )
