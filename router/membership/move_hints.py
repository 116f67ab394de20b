"""What a removal does with hints: those parked for the removed node, and those it holds.

Hints parked for a node that leaves go to the current owners of their keys (a write
acknowledged through such a hint may be on too few real replicas otherwise). Hints and
markers the leaving node holds for others (it was a fallback while an owner was down, or
an owner keeping markers) would leave the cluster with it, while their targets still own
the keys; so before the node leaves they are parked again, for the same targets, on a
node that stays, and the hand-off delivers them from there (router/requests/hint_handoff.py),
as Cassandra's decommission transfers a node's hints to a live peer. A hint is deleted
from the leaving node only once the keeper stored it durably, so at every moment some
node holds it (and tombstone GC, which waits while any node reports hints for a key's
owners, keeps waiting).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from shardkv.router.membership.move_plan import MoveConflict, client_of
from shardkv.router.membership.range_streamer import apply_with_retry
from shardkv.router.placement.current import Placement
from shardkv.router.requests.health import NodeHealth
from shardkv.router.requests.node_client import NodeClient
from shardkv.v1 import replica_pb2

log = logging.getLogger(__name__)

# Hints moved per ReadHints call.
HINT_PAGE = 500
# One Apply of a page of hints to the node that keeps them.
PARK_TIMEOUT_S = 30.0


async def rehome_hints(
    clients: Mapping[str, NodeClient], placement: Placement, replication: int, gone: str
) -> int:
    """Hands hints parked for a node that left the cluster to the current owners of their
    keys, then deletes them. Returns how many were re-homed."""
    moved = 0
    for holder_id, holder in list(clients.items()):
        while records := await holder.read_hints(gone, HINT_PAGE):
            by_owner: dict[str, list[replica_pb2.Record]] = {}
            for record in records:
                for owner in placement.preference_list(record.key, replication):
                    by_owner.setdefault(owner, []).append(record)
            for owner, owned in by_owner.items():
                await apply_with_retry(clients[owner], owned, owner)
            moved += await holder.delete_hints(gone, records)
            log.info("re-homed %d hint(s) for %s held by %s", len(records), gone, holder_id)
            if len(records) < HINT_PAGE:
                break
    return moved


async def hand_over_held_hints(
    clients: Mapping[str, NodeClient], health: NodeHealth, leaving: str
) -> int:
    """Parks every hint and marker leaving holds again on a node that stays and is UP (for
    a marker: the leaving node's record of the key, as hand-off would send it), for the
    same target, and deletes it from leaving. Returns how many moved; a failed call
    raises (grpc.aio.AioRpcError, MoveConflict) and what is left stays on leaving."""
    holder = client_of(clients, leaving)
    summary = await holder.hint_summary()
    moved = 0
    for entry in summary.targets:
        keeper_id = _keeper(clients, health, leaving, entry.target)
        keeper = clients[keeper_id]
        count = 0
        while records := await holder.read_hints(entry.target, HINT_PAGE):
            await keeper.park_hints(entry.target, records, PARK_TIMEOUT_S)
            count += await holder.delete_hints(entry.target, records)
            if len(records) < HINT_PAGE:
                break
        log.info(
            "hints_handed_over target=%s from=%s to=%s count=%d",
            entry.target, leaving, keeper_id, count,
        )  # fmt: skip
        moved += count
    return moved


def _keeper(
    clients: Mapping[str, NodeClient], health: NodeHealth, leaving: str, target: str
) -> str:
    """The node that takes over leaving's hints for target: the first UP node that stays
    and is not the target itself."""
    for node_id in sorted(clients):
        if node_id not in (leaving, target) and health.is_up(node_id):
            return node_id
    raise MoveConflict(f"no node that stays is UP to keep the hints {leaving} holds for {target}")
