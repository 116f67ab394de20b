"""The Admin service: topology and node states, node add/remove and their progress, repair,
rebuilds of nodes whose data directory was lost, and the operator calls (status, backup,
restore: router/api/operations.py).

Handlers check the request and delegate to the Membership, Rebalancer or AntiEntropy; every
handler ends a failed call through the shared status table (shardkv.serving.status; the
router's entries in shardkv.router.api.errors).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
from shardkv.router.api.errors import streaming, unary
from shardkv.router.api.operations import Operations
from shardkv.router.membership.identity import IdentityGuard
from shardkv.router.membership.live_topology import Membership
from shardkv.router.membership.move_driver import Rebalancer
from shardkv.router.repair.anti_entropy import AntiEntropy
from shardkv.router.repair.rebuild import Rebuilder
from shardkv.router.requests.health import DOWN, UP, NodeHealth
from shardkv.router.requests.hint_handoff import HintHandoff
from shardkv.v1 import admin_pb2, admin_pb2_grpc, replica_pb2

Context = grpc.aio.ServicerContext[Any, Any]


class AdminService(admin_pb2_grpc.AdminServicer):
    """shardkv.v1.Admin: topology, node states, hints, moves and repair."""

    def __init__(
        self,
        *,
        router_id: str,
        membership: Membership,
        health: NodeHealth,
        handoff: HintHandoff,
        rebalancer: Rebalancer,
        antientropy: AntiEntropy,
        guard: IdentityGuard,
        rebuilder: Rebuilder,
        operations: Operations,
    ) -> None:
        self._router_id = router_id
        self._membership = membership
        self._health = health
        self._handoff = handoff
        self._rebalancer = rebalancer
        self._antientropy = antientropy
        self._guard = guard
        self._rebuilder = rebuilder
        self._operations = operations

    def _nodes(self) -> list[admin_pb2.NodeStatus]:
        shares = self._membership.shares()
        nodes = []
        for node in self._membership.topology.nodes:
            directory = self._guard.view(node.id)
            nodes.append(
                admin_pb2.NodeStatus(
                    id=node.id,
                    address=node.address,
                    weight=node.weight,
                    state=self._health.state(node.id),
                    last_error=self._health.last_error(node.id),
                    hints_pending=self._handoff.pending.get(node.id, 0),
                    ring_share=shares[node.id],
                    membership=node.state,
                    directory=directory.state,
                    generation=directory.identity.generation if directory.identity else 0,
                    expected_generation=node.generation,
                )
            )
        return nodes

    def _topology(self) -> admin_pb2.Topology:
        t = self._membership.topology
        return admin_pb2.Topology(
            epoch=t.epoch,
            replication=t.replication,
            read_quorum=t.read_quorum,
            write_quorum=t.write_quorum,
            nodes=self._nodes(),
            router_id=self._router_id,
        )

    @unary
    async def GetTopology(
        self, request: admin_pb2.GetTopologyRequest, context: Context
    ) -> admin_pb2.Topology:
        return self._topology()

    @unary
    async def GetHealth(
        self, request: admin_pb2.GetHealthRequest, context: Context
    ) -> admin_pb2.ClusterHealth:
        nodes = self._nodes()
        up = sum(1 for n in nodes if n.state == UP)
        down = sum(1 for n in nodes if n.state == DOWN)
        return admin_pb2.ClusterHealth(
            healthy=up == len(nodes), nodes_up=up, nodes_down=down, nodes=nodes
        )

    @unary
    async def AddNode(self, request: admin_pb2.AddNodeRequest, context: Context) -> admin_pb2.Move:
        progress = await self._rebalancer.add_node(request.id, request.address, request.weight or 1)
        return progress.to_proto()

    @unary
    async def RemoveNode(
        self, request: admin_pb2.RemoveNodeRequest, context: Context
    ) -> admin_pb2.Move:
        return (await self._rebalancer.remove_node(request.id)).to_proto()

    @unary
    async def GetMoves(
        self, request: admin_pb2.GetMovesRequest, context: Context
    ) -> admin_pb2.GetMovesResponse:
        current = self._rebalancer.current
        return admin_pb2.GetMovesResponse(
            current=current.to_proto() if current is not None else None,
            history=[move.to_proto() for move in self._rebalancer.history],
        )

    @unary
    async def Repair(
        self, request: admin_pb2.RepairRequest, context: Context
    ) -> admin_pb2.RepairStatus:
        status = self._antientropy.request()
        return status.to_proto(running=self._antientropy.running)

    @unary
    async def GetRepair(
        self, request: admin_pb2.GetRepairRequest, context: Context
    ) -> admin_pb2.RepairStatus:
        return self._antientropy.status.to_proto(running=self._antientropy.running)

    @unary
    async def GetStatus(
        self, request: admin_pb2.GetStatusRequest, context: Context
    ) -> admin_pb2.ClusterStatus:
        status = await self._operations.status(self._topology())
        status.rebuilds.extend(self._rebuilds())
        return status

    @unary
    async def RebuildNode(
        self, request: admin_pb2.RebuildNodeRequest, context: Context
    ) -> admin_pb2.Rebuild:
        return self._rebuilder.request(request.id).to_proto()

    @unary
    async def GetRebuilds(
        self, request: admin_pb2.GetRebuildsRequest, context: Context
    ) -> admin_pb2.GetRebuildsResponse:
        return admin_pb2.GetRebuildsResponse(rebuilds=self._rebuilds())

    def _rebuilds(self) -> list[admin_pb2.Rebuild]:
        return [progress.to_proto() for _, progress in sorted(self._rebuilder.latest.items())]

    @streaming
    async def Backup(
        self, request: admin_pb2.BackupRequest, context: Context
    ) -> AsyncIterator[replica_pb2.SnapshotBatch]:
        async for batch in self._operations.backup(request, context):
            yield batch

    @unary
    async def Restore(
        self, request: admin_pb2.RestoreRequest, context: Context
    ) -> admin_pb2.RestoreResponse:
        return await self._operations.restore(request, context)
