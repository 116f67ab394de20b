"""The Admin service: the operator's read-only view of the topology and each node's state."""

from __future__ import annotations

from typing import Any

import grpc
from shardkv.router.health import DOWN, UP, NodeHealth
from shardkv.router.hints import HintHandoff
from shardkv.router.ring import Ring
from shardkv.router.topology import Topology
from shardkv.v1 import admin_pb2, admin_pb2_grpc

Context = grpc.aio.ServicerContext[Any, Any]


class AdminService(admin_pb2_grpc.AdminServicer):
    """shardkv.v1.Admin: topology, ring shares, node states and pending hints."""

    def __init__(
        self,
        *,
        router_id: str,
        topology: Topology,
        ring: Ring,
        health: NodeHealth,
        handoff: HintHandoff,
    ) -> None:
        self._router_id = router_id
        self._topology = topology
        self._shares = ring.shares()
        self._health = health
        self._handoff = handoff

    def _nodes(self) -> list[admin_pb2.NodeStatus]:
        return [
            admin_pb2.NodeStatus(
                id=node.id,
                address=node.address,
                weight=node.weight,
                state=self._health.state(node.id),
                last_error=self._health.last_error(node.id),
                hints_pending=self._handoff.pending.get(node.id, 0),
                ring_share=self._shares[node.id],
            )
            for node in self._topology.nodes
        ]

    async def GetTopology(
        self, request: admin_pb2.GetTopologyRequest, context: Context
    ) -> admin_pb2.Topology:
        t = self._topology
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
