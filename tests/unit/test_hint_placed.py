"""When tombstone GC may trust the per-segment hint rule (HintHandoff.placed), driving the
real hand-off rounds over in-process nodes that keep hints in dicts (no gRPC, no mocks).

GC keeps the tombstones of segments whose owners have hints waiting; that is enough only
while every waiting hint is for a key its target owns. After a topology change a hint may
wait for a node that gave the key's range away, or that left; its write would then reach
the key's owners by re-homing, after GC purged their tombstone. So ``placed`` must be
False from a topology change until a complete round found the target without hints.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Sequence

import grpc
import pytest
from shardkv.router.placement.current import Layout, Placement
from shardkv.router.placement.ring import Ring
from shardkv.router.requests.health import NodeHealth
from shardkv.router.requests.hint_handoff import HintHandoff
from shardkv.v1 import replica_pb2

N = 3
FOUR = {"n1": 1, "n2": 1, "n3": 1, "n4": 1}


class HintNode:
    """What hand-off uses of a node: its records (last write wins) and hints per target."""

    def __init__(self) -> None:
        self.records: dict[bytes, replica_pb2.Record] = {}
        self.hints: defaultdict[str, dict[bytes, replica_pb2.Record]] = defaultdict(dict)
        self.fail = False

    def _check(self) -> None:
        if self.fail:
            raise grpc.aio.AioRpcError(
                grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), "down"
            )

    async def hint_summary(self) -> replica_pb2.HintSummaryResponse:
        self._check()
        counts = [replica_pb2.HintCount(target=t, count=len(h)) for t, h in self.hints.items()]
        return replica_pb2.HintSummaryResponse(targets=[c for c in counts if c.count])

    async def read_hints(self, target: str, limit: int) -> list[replica_pb2.Record]:
        self._check()
        return [self.hints[target][key] for key in sorted(self.hints[target])][:limit]

    async def delete_hints(self, target: str, records: Sequence[replica_pb2.Record]) -> int:
        self._check()
        parked = self.hints[target]
        gone = [r.key for r in records if r.key in parked and parked[r.key].version <= r.version]
        for key in gone:
            del parked[key]
        return len(gone)

    async def apply_now(
        self, records: Sequence[replica_pb2.Record], timeout_s: float, epoch: int | None = None
    ) -> None:
        self._check()
        for record in records:
            held = self.records.get(record.key)
            if held is None or held.version < record.version:
                self.records[record.key] = record


Setup = tuple[dict[str, HintNode], NodeHealth, Placement, HintHandoff]


def setup(weights: dict[str, int]) -> Setup:
    nodes = {node_id: HintNode() for node_id in weights}
    health = NodeHealth(nodes)
    for node_id in nodes:
        health.mark_up(node_id)
    placement = Placement(Layout(1, Ring(weights)))
    handoff = HintHandoff(
        nodes,  # type: ignore[arg-type]  # what hand-off calls, in-process
        health,
        placement=placement,
        replication=N,
        interval_s=60.0,
    )
    return nodes, health, placement, handoff


def park(holder: HintNode, target: str, keys: Sequence[bytes]) -> None:
    for key in keys:
        holder.hints[target][key] = replica_pb2.Record(key=key, value=b"v", version=1 << 20)


def owned_by(ring: Ring, node_id: str, count: int) -> list[bytes]:
    keys = (b"k%04d" % i for i in range(10_000))
    return [k for k in keys if node_id in ring.preference_list(k, N)][:count]


@pytest.mark.timeout(30)
def test_placed_only_after_a_complete_round_under_the_placement_in_force() -> None:
    asyncio.run(topology_change())


@pytest.mark.timeout(30)
def test_not_placed_while_hints_for_a_removed_id_wait_or_a_holder_is_silent() -> None:
    asyncio.run(removed_id())


async def topology_change() -> None:
    nodes, health, placement, handoff = setup(FOUR)
    assert not handoff.placed({"n3"}), "no round yet: nothing is vouched for"
    await handoff.round()
    assert handoff.placed({"n3"})
    # n3 goes down; hints parked for it under this placement are placed.
    health.mark_down("n3", "test")
    park(nodes["n4"], "n3", owned_by(placement.layout.old, "n3", 5))
    await handoff.round()
    assert handoff.pending["n3"] == 5 and handoff.placed({"n3"})
    # The topology changes (n2 leaves): n3's hints may now be for keys it gave away.
    placement.use(Layout(2, Ring({"n1": 1, "n3": 1, "n4": 1})))
    assert not handoff.placed({"n3"})
    await handoff.round()
    assert not handoff.placed({"n3"}), "n3 is down: its hints are not checked yet"
    health.mark_up("n3")
    await handoff.round()
    assert handoff.placed({"n3"}) and not nodes["n4"].hints["n3"]


async def removed_id() -> None:
    nodes, _, placement, handoff = setup(FOUR)
    await handoff.round()
    keys = owned_by(placement.layout.old, "n4", 2)
    park(nodes["n1"], "n9", keys)  # an id no longer in the topology
    nodes["n4"].fail = True  # an owner of the keys fails: re-homing waits
    await handoff.round()
    assert nodes["n1"].hints["n9"] and not handoff.placed({"n9"})
    nodes["n4"].fail = False
    await handoff.round()
    assert not nodes["n1"].hints["n9"], "re-homing was not retried"
    for key in keys:
        assert all(key in nodes[o].records for o in placement.preference_list(key, N))
    assert not handoff.pending["n9"] and handoff.placed({"n1", "n2", "n3", "n4"})
