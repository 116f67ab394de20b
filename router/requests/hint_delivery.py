"""Where a hint goes: to its target while the target owns the key, else to the key's owners.

A hint names the node that missed a write (its target). The topology may have changed
since it was parked: the target may have given the key's range away (a node was added),
or left the cluster (removed, or its join aborted). Handing such a hint to its target
would put the record on a node that no longer owns the key, where nothing reads, repairs
or purges it, while the key's real owners miss the write. So each hint goes to its target
only if the target is a current owner of the key and stays one through a move in
progress, and otherwise to every current owner of the key (old and pending): it is
re-homed. A target that gives the key's range away in the move gets its hint only with
the key's other owners: the move streams the target's copy to the new owner and drops it
after the switch, so a hint handed to the target alone would leave the new owner with the
older copy streamed before it. A hint is delivered once every node it goes to holds
its record or a newer one (Apply keeps the newer, so a repeat is harmless); only then may
the holder delete it.

A node id that left the topology is no destination: its hints are re-homed at the next
hand-off round. A node joining under an id that was in the cluster before could find
hints parked for its predecessor that a holder kept while it was unreachable; so while a
node is joining, every hint for it is re-homed too: it gets one only as an owner of the
key, with the key's other owners. (Such a stale hint is harmless to last-write-wins anyway
once it reaches the owners: no tombstone is purged while any node fails to report its
hints, router/repair/anti_entropy.py.)
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import grpc
from shardkv.router.placement.current import Placement
from shardkv.router.requests.health import NodeHealth
from shardkv.router.requests.node_client import NodeClient
from shardkv.v1 import replica_pb2

log = logging.getLogger(__name__)

# One Apply of a page of hints to one destination.
APPLY_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class Delivered:
    """What one page of hints came to: the records every destination now holds (the
    holder may delete their hints), and how many of those went to owners other than the
    hints' target."""

    records: list[replica_pb2.Record]
    rehomed: int


def destinations(
    placement: Placement, replication: int, target: str, key: bytes
) -> tuple[str, ...]:
    """The nodes a hint of key for target goes to: the target alone if it owns the key
    and keeps owning it through the move in progress, else every current owner of the
    key (old and pending)."""
    owners = placement.preference_list(key, replication)
    new = placement.layout.new
    if new is None:
        return (target,) if target in owners else owners
    joining = target not in placement.layout.old.nodes
    staying = target in new.preference_list(key, replication)
    return (target,) if staying and not joining else owners


async def deliver(
    records: Sequence[replica_pb2.Record],
    target: str,
    *,
    clients: Mapping[str, NodeClient],
    health: NodeHealth,
    placement: Placement,
    replication: int,
) -> Delivered:
    """Applies a page of target's hints to their destinations, one Apply per destination,
    routed under the epoch of the placement that chose them (a node fenced at a later one
    refuses, as it refuses a write routed so); a record with a destination that is down
    or failed is not delivered (it waits for the next round)."""
    epoch = placement.layout.epoch
    by_node: dict[str, list[int]] = {}
    rehomed: set[int] = set()
    for index, record in enumerate(records):
        nodes = destinations(placement, replication, target, record.key)
        if nodes != (target,):
            rehomed.add(index)
        for node_id in nodes:
            by_node.setdefault(node_id, []).append(index)
    failed: set[int] = set()

    async def send(node_id: str, indices: list[int]) -> None:
        client = clients.get(node_id)
        if client is None or not health.is_up(node_id):
            failed.update(indices)
            return
        try:
            await client.apply_now([records[i] for i in indices], APPLY_TIMEOUT_S, epoch)
        except grpc.aio.AioRpcError as err:
            log.info(
                "hint_delivery_failed target=%s to=%s records=%d code=%s detail=%r",
                target, node_id, len(indices), err.code().name, err.details(),
            )  # fmt: skip
            failed.update(indices)

    await asyncio.gather(*(send(node_id, indices) for node_id, indices in by_node.items()))
    done = [record for index, record in enumerate(records) if index not in failed]
    return Delivered(done, len(rehomed - failed))
