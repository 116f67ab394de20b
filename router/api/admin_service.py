"""The Admin service: topology and node states, node add/remove and their progress, repair,
and the operator calls (status, backup, restore: router/api/operations.py).

Handlers check the request, delegate to the Membership, Rebalancer or AntiEntropy, and map
their domain errors to status codes through one table.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from shardkv.router.api.operations import Operations
from shardkv.router.membership.live_topology import Membership
from shardkv.router.membership.move_driver import Rebalancer
from shardkv.router.membership.move_plan import BadNode, MoveConflict, NodeExists, NodeUnknown
from shardkv.router.membership.topology import TopologyError
from shardkv.router.repair.anti_entropy import AntiEntropy
from shardkv.router.requests.health import DOWN, UP, NodeHealth
from shardkv.router.requests.hint_handoff import HintHandoff
from shardkv.v1 import admin_pb2, admin_pb2_grpc, replica_pb2

log = logging.getLogger(__name__)
Context = grpc.aio.ServicerContext[Any, Any]

_STATUS_OF: dict[type[Exception], grpc.StatusCode] = {
    MoveConflict: grpc.StatusCode.FAILED_PRECONDITION,
    NodeExists: grpc.StatusCode.ALREADY_EXISTS,
    NodeUnknown: grpc.StatusCode.NOT_FOUND,
    BadNode: grpc.StatusCode.INVALID_ARGUMENT,
    TopologyError: grpc.StatusCode.FAILED_PRECONDITION,
}

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Handler = Callable[["AdminService", Req, Context], Awaitable[Resp]]


def _mapped(handler: Handler[Req, Resp]) -> Handler[Req, Resp]:
    """Turns domain errors into status codes; anything unknown is logged and INTERNAL."""

    @functools.wraps(handler)
    async def wrapper(self: AdminService, request: Req, context: Context) -> Resp:
        try:
            return await handler(self, request, context)
        except tuple(_STATUS_OF) as err:
            code = next(c for t, c in _STATUS_OF.items() if isinstance(err, t))
            await context.abort(code, str(err))
        except OSError as err:
            log.error("%s failed: %s", handler.__name__, err)
            await context.abort(grpc.StatusCode.INTERNAL, f"{handler.__name__}: {err}")
        raise AssertionError("abort returned")  # pragma: no cover

    return wrapper


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
        operations: Operations,
    ) -> None:
        self._router_id = router_id
        self._membership = membership
        self._health = health
        self._handoff = handoff
        self._rebalancer = rebalancer
        self._antientropy = antientropy
        self._operations = operations

    def _nodes(self) -> list[admin_pb2.NodeStatus]:
        shares = self._membership.shares()
        return [
            admin_pb2.NodeStatus(
                id=node.id,
                address=node.address,
                weight=node.weight,
                state=self._health.state(node.id),
                last_error=self._health.last_error(node.id),
                hints_pending=self._handoff.pending.get(node.id, 0),
                ring_share=shares[node.id],
                membership=node.state,
            )
            for node in self._membership.topology.nodes
        ]

    async def GetTopology(
        self, request: admin_pb2.GetTopologyRequest, context: Context
    ) -> admin_pb2.Topology:
        t = self._membership.topology
        return admin_pb2.Topology(
            epoch=t.epoch,
            replication=t.replication,
            read_quorum=t.read_quorum,
            write_quorum=t.write_quorum,
            nodes=self._nodes(),
            router_id=self._router_id,
        )

    async def GetHealth(
        self, request: admin_pb2.GetHealthRequest, context: Context
    ) -> admin_pb2.ClusterHealth:
        nodes = self._nodes()
        up = sum(1 for n in nodes if n.state == UP)
        down = sum(1 for n in nodes if n.state == DOWN)
        return admin_pb2.ClusterHealth(
            healthy=up == len(nodes), nodes_up=up, nodes_down=down, nodes=nodes
        )

    @_mapped
    async def AddNode(self, request: admin_pb2.AddNodeRequest, context: Context) -> admin_pb2.Move:
        progress = await self._rebalancer.add_node(request.id, request.address, request.weight or 1)
        return progress.to_proto()

    @_mapped
    async def RemoveNode(
        self, request: admin_pb2.RemoveNodeRequest, context: Context
    ) -> admin_pb2.Move:
        return (await self._rebalancer.remove_node(request.id)).to_proto()

    async def GetMoves(
        self, request: admin_pb2.GetMovesRequest, context: Context
    ) -> admin_pb2.GetMovesResponse:
        current = self._rebalancer.current
        return admin_pb2.GetMovesResponse(
            current=current.to_proto() if current is not None else None,
            history=[move.to_proto() for move in self._rebalancer.history],
        )

    @_mapped
    async def Repair(
        self, request: admin_pb2.RepairRequest, context: Context
    ) -> admin_pb2.RepairStatus:
        status = self._antientropy.request()
        return status.to_proto(running=self._antientropy.running)

    async def GetRepair(
        self, request: admin_pb2.GetRepairRequest, context: Context
    ) -> admin_pb2.RepairStatus:
        return self._antientropy.status.to_proto(running=self._antientropy.running)

    async def GetStatus(
        self, request: admin_pb2.GetStatusRequest, context: Context
    ) -> admin_pb2.ClusterStatus:
        topology = await self.GetTopology(admin_pb2.GetTopologyRequest(), context)
        return await self._operations.status(topology)

    async def Backup(
        self, request: admin_pb2.BackupRequest, context: Context
    ) -> AsyncIterator[replica_pb2.SnapshotBatch]:
        async for batch in self._operations.backup(request, context):
            yield batch

    async def Restore(
        self, request: admin_pb2.RestoreRequest, context: Context
    ) -> admin_pb2.RestoreResponse:
        return await self._operations.restore(request, context)
