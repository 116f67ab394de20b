"""What a node must be to join: a usable id, address and weight, reachable, and empty."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import grpc
from shardkv.common.node_ids import BadNodeId, check_node_id
from shardkv.common.ring_tokens import TOKEN_SPACE
from shardkv.router.membership.move_plan import BadNode, MoveConflict
from shardkv.router.membership.topology import (
    NodeConfig,
    Topology,
    TopologyError,
    check_placement,
)
from shardkv.router.placement.ring import MAX_WEIGHT
from shardkv.router.requests.node_client import NodeClient

# Bulk calls (a walk of a node's whole store) get this long.
BULK_TIMEOUT_S = 3600.0


def check_new_node(node_id: str, address: str, weight: int) -> None:
    """Raises BadNode unless the id, address (host:port) and weight are usable."""
    try:
        check_node_id(node_id)
    except BadNodeId as err:
        raise BadNode(str(err)) from None
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise BadNode(f"node {node_id!r}: address {address!r} is not host:port")
    if not 1 <= weight <= MAX_WEIGHT:
        raise BadNode(
            f"node {node_id!r}: weight {weight} is outside 1..{MAX_WEIGHT} (weights are"
            f" relative shares of the ring; between 1 and {MAX_WEIGHT} every node keeps a share)"
        )


def check_placement_with(
    topology: Topology, nodes: tuple[NodeConfig, ...], error: type[Exception]
) -> None:
    """Raises error unless topology with nodes instead of its own gives every node ring
    points and every key N distinct owners, before and after the move (the message names
    the node, its weight and the rule)."""
    try:
        check_placement(replace(topology, nodes=nodes))
    except TopologyError as err:
        raise error(str(err)) from None


async def probe_new_node(connect: Callable[[NodeConfig], NodeClient], node: NodeConfig) -> None:
    """Refuses a node that is unreachable or already holds records."""
    client = connect(node)
    try:
        problem = await client.check(5.0)
        if problem is not None:
            raise MoveConflict(f"cannot reach node {node.id!r} at {node.address}: {problem}")
        try:
            [whole] = await client.token_digests(
                [(0, TOKEN_SPACE)], count_only=True, pace=0, timeout_s=BULK_TIMEOUT_S
            )
        except grpc.aio.AioRpcError as err:
            raise MoveConflict(
                f"node {node.id!r} at {node.address} cannot count its records:"
                f" {err.code().name} {err.details()}"
            ) from err
        if whole.count:
            raise MoveConflict(
                f"node {node.id!r} at {node.address} already holds {whole.count} records;"
                " only an empty node can join (stale data could bring deleted keys back):"
                " wipe its data directory first"
            )
    finally:
        await client.close()
