"""Claims of fresh data directories that identity.py's rounds cannot make alone: a new
cluster's claims found half made by another router (completed here), and a joining node's
directory, claimed by the move itself before it streams into it.

Routers claim the directories of a new cluster (every node expected at generation 0) once
every node answered unclaimed (identity.py). Several routers started together all do, each
claim a compare-and-set on the node, so for a moment some directories are claimed and the
others still fresh; a router that claimed a few and was then paused or killed leaves them
so for good. A router starting meanwhile must not read that as "the cluster was claimed,
these directories were wiped since" and rebuild every fresh node: issue 15's multi-host
run saw a router do just that to four of five fresh nodes, and every write then failed.

The two cannot be told apart by the directories alone, but by what the claimed ones hold:
in a half-made claim nothing was ever written, since no router serves before its first
round of claims. When the claimed nodes hold no record and no hint, a fresh directory
beside them lost nothing a rebuild could bring back (a rebuild copies only what the other
owners hold), so completing the claims is as safe as rebuilding and keeps the cluster
writable. Once anything was written, a fresh directory among claimed ones is a lost one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

import grpc
from shardkv.router.membership.move_plan import MoveConflict
from shardkv.router.membership.topology import NodeConfig, Topology
from shardkv.router.requests.node_client import NodeClient
from shardkv.v1 import replica_pb2

log = logging.getLogger(__name__)

# A move's claim of its joining node's directory gets this long per call.
CLAIM_TIMEOUT_S = 5.0


async def claims_half_made(
    topology: Topology,
    identities: Mapping[str, replica_pb2.DirectoryIdentity],
    clients: Mapping[str, NodeClient],
    timeout_s: float,
) -> bool:
    """True when topology is a new cluster's (every node at generation 0), every node
    answered (identities, fresh from this round), some directories are claimed and some
    not, the claimed ones by this cluster at generation 0 under their node's id, and none
    of the claimed nodes holds a record or a hint (asked now: Replica.Stats)."""
    if any(node.generation != 0 for node in topology.nodes):
        return False
    claimed: list[NodeConfig] = []
    for node in topology.nodes:
        identity = identities.get(node.id)
        if identity is None or identity.node_id != node.id:
            return False
        if identity.claimed:
            if identity.generation != 0 or not _ours(topology, identity):
                return False
            claimed.append(node)
    if not claimed or len(claimed) == len(topology.nodes):
        return False
    held = await asyncio.gather(*(_held(clients.get(n.id), timeout_s) for n in claimed))
    if any(count != 0 for count in held):
        return False
    fresh = [n.id for n in topology.nodes if n not in claimed]
    log.info(
        "directories of this new cluster half claimed (%s claimed, %s fresh) and nothing"
        " written yet: another router is claiming them or stopped while it did; completing"
        " the claims",
        ", ".join(n.id for n in claimed),
        ", ".join(fresh),
    )
    return True


def _ours(topology: Topology, identity: replica_pb2.DirectoryIdentity) -> bool:
    ours, theirs = topology.cluster_id, identity.cluster_id
    return not (ours and theirs and ours != theirs)


async def _held(client: NodeClient | None, timeout_s: float) -> int | None:
    """Records plus hints the node holds; None when it cannot tell (counts as held)."""
    if client is None:
        return None
    try:
        stats = await client.stats(timeout_s)
    except grpc.aio.AioRpcError as err:
        log.debug("stats of %s: %s", client.address, err.code().name)
        return None
    return stats.records + stats.hints


async def claim_joining(client: NodeClient, node: NodeConfig, topology: Topology) -> None:
    """Claims a joining node's fresh directory at its expected generation before a move
    streams into it (a no-op when already claimed, by a guard or an earlier attempt).
    Without it a quick move could switch before any guard saw the node joining, and the
    switched member's unclaimed directory would read as a replaced disk and be rebuilt:
    purged, and copied again from other owners it may not have (N=1)."""
    try:
        identity = await client.identity(replica_pb2.IdentityRequest(), CLAIM_TIMEOUT_S)
    except grpc.aio.AioRpcError as err:
        raise MoveConflict(
            f"cannot read the data directory of joining node {node.id}:"
            f" {err.code().name} {err.details()}"
        ) from err
    if identity.claimed:
        return
    request = replica_pb2.SetIdentityRequest(
        expect_generation=identity.generation,
        expect_claimed=False,
        expect_cluster_id=identity.cluster_id,
        cluster_id=topology.cluster_id or identity.cluster_id,
        generation=node.generation,
        advance_boot=True,
    )
    try:
        await client.identity(request, CLAIM_TIMEOUT_S)
    except grpc.aio.AioRpcError as err:
        again = await client.identity(replica_pb2.IdentityRequest(), CLAIM_TIMEOUT_S)
        if not again.claimed:
            raise
        log.debug("directory of %s claimed meanwhile: %s", node.id, err.details())
        return
    log.info("data directory of joining %s claimed: generation %d", node.id, node.generation)
