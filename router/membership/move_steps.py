"""The I/O steps of a move around its stream: counting, fencing each epoch on the nodes,
re-homing hints, and dropping what was given away."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

import grpc
from shardkv.router.membership.fencing import fence_nodes
from shardkv.router.membership.live_topology import ClientFactory, Membership
from shardkv.router.membership.move_plan import (
    MoveConflict,
    MoveProgress,
    Transfer,
    describe_error,
    given_away,
)
from shardkv.router.membership.node_checks import BULK_TIMEOUT_S
from shardkv.router.membership.range_streamer import rehome_hints
from shardkv.router.membership.topology import NodeConfig, Topology
from shardkv.router.placement.current import Piece
from shardkv.router.requests.health import NodeHealth
from shardkv.router.requests.node_client import NodeClient

log = logging.getLogger(__name__)


async def count_transfers(
    clients: Mapping[str, NodeClient], transfers: list[Transfer], progress: MoveProgress
) -> list[Transfer]:
    """Counts what each transfer will stream; a giver that cannot answer is replaced by
    the surviving owners of its pieces."""

    async def count(transfer: Transfer) -> list[Transfer]:
        try:
            digests = await _client(clients, transfer.source).token_digests(
                transfer.ranges, count_only=True, pace=0, timeout_s=BULK_TIMEOUT_S
            )
        except grpc.aio.AioRpcError as err:
            if not transfer.from_giver:
                raise
            log.warning(
                "move %s: %s cannot count (%s); copying from surviving owners instead",
                progress.id, transfer.source, err.code().name,
            )  # fmt: skip
            return transfer.fallback()
        progress.keys_total += sum(d.count for d in digests)
        progress.bytes_total += sum(d.bytes for d in digests)
        return [transfer]

    planned = await asyncio.gather(*(count(t) for t in transfers))
    return [t for group in planned for t in group]


class MoveSteps:
    """Fencing, re-homing and dropping for the moves of one router."""

    def __init__(
        self, membership: Membership, health: NodeHealth, probe_client: ClientFactory
    ) -> None:
        self._membership = membership
        self._health = health
        self._probe_client = probe_client

    async def fence(self, topology: Topology, nodes: tuple[NodeConfig, ...]) -> None:
        """Installs topology's epoch on nodes (those DOWN skipped: move_driver.py); a node
        no longer in this router's topology gets a channel of its own for it."""
        clients = self._membership.clients
        extra = {n.id: self._probe_client(n) for n in nodes if n.id not in clients}
        try:
            await fence_nodes(
                {**clients, **extra},
                [n.id for n in nodes],
                topology.epoch,
                skip={n.id for n in nodes if self._health.is_down(n.id)},
            )
        finally:
            await asyncio.gather(*(c.close() for c in extra.values()))

    async def rehome(self, final: Topology, progress: MoveProgress) -> None:
        """Hints parked for the removed node go to the current owners of their keys."""
        try:
            await rehome_hints(
                self._membership.clients,
                self._membership.placement,
                final.replication,
                progress.node_id,
            )
        except (grpc.aio.AioRpcError, MoveConflict) as err:
            log.warning(
                "move %s: hints for %s not all re-homed (%s); repair covers their keys",
                progress.id,
                progress.node_id,
                describe_error(err),
            )

    async def drop(self, changed: list[Piece], final: Topology, progress: MoveProgress) -> None:
        """Nodes that gave pieces away and stay in the cluster drop those records."""
        members = {n.id for n in final.nodes}
        for node_id, ranges in given_away(changed, members.__contains__).items():
            try:
                progress.keys_dropped += await _client(
                    self._membership.clients, node_id
                ).purge_token_ranges(
                    ranges, all_records=True, timeout_s=BULK_TIMEOUT_S, epoch=final.epoch
                )
            except grpc.aio.AioRpcError as err:
                log.warning(
                    "move %s: %s could not drop the ranges it gave away (%s %s); they are"
                    " harmless copies until dropped",
                    progress.id, node_id, err.code().name, err.details(),
                )  # fmt: skip


def _client(clients: Mapping[str, NodeClient], node_id: str) -> NodeClient:
    try:
        return clients[node_id]
    except KeyError:
        raise MoveConflict(f"node {node_id!r} is not in the topology any more") from None
