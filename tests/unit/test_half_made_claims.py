"""When a router completes a new cluster's claims that another router half made
(router/membership/claims.py): only while nothing was written, and only in a new cluster
whose every node answered, with the claimed directories this cluster's at generation 0."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import grpc
import pytest
from shardkv.router.membership.claims import claims_half_made
from shardkv.router.membership.topology import Topology, parse_topology
from shardkv.v1 import replica_pb2

TOML = """
epoch = 1
replication = 3
read_quorum = 2
write_quorum = 2
cluster_id = "c1"
""" + "".join(f'[[nodes]]\nid = "n{i}"\naddress = "127.0.0.1:{7100 + i}"\n' for i in range(1, 6))


class FakeClient:
    """Answers Replica.Stats with fixed figures, or fails UNAVAILABLE."""

    def __init__(self, address: str, records: int = 0, hints: int = 0, down: bool = False):
        self.address, self.records, self.hints, self.down = address, records, hints, down

    async def stats(self, timeout_s: float) -> replica_pb2.StatsResponse:
        if self.down:
            raise grpc.aio.AioRpcError(
                grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata()
            )
        return replica_pb2.StatsResponse(records=self.records, hints=self.hints)


def judge(
    topology: Topology,
    claimed: int,
    *,
    clients: dict[str, FakeClient] | None = None,
    **claimed_fields: Any,
) -> bool:
    """Whether the first `claimed` nodes claimed (with claimed_fields) and the rest fresh
    read as half-made claims."""
    identities = {}
    for index, node in enumerate(topology.nodes):
        fields: dict[str, Any] = {"node_id": node.id}
        if index < claimed:
            fields.update({"claimed": True, "cluster_id": "c1", **claimed_fields})
        identities[node.id] = replica_pb2.DirectoryIdentity(**fields)
    clients = clients or {n.id: FakeClient(n.address) for n in topology.nodes}
    return asyncio.run(claims_half_made(topology, identities, cast(Any, clients), 1.0))


def test_claims_half_made_in_an_empty_new_cluster_are_completed() -> None:
    topology = parse_topology(TOML)
    assert judge(topology, 1)
    assert judge(topology, 4)
    assert judge(topology, 2, cluster_id="")  # claimed by a router of an unnamed cluster


@pytest.mark.parametrize(
    "stats",
    [{"records": 1}, {"hints": 3}, {"down": True}],
    ids=["a record written", "a hint parked", "cannot tell"],
)
def test_a_fresh_directory_beside_written_ones_is_not_a_half_made_claim(
    stats: dict[str, Any],
) -> None:
    topology = parse_topology(TOML)
    clients = {n.id: FakeClient(n.address) for n in topology.nodes}
    clients["n2"] = FakeClient("127.0.0.1:7102", **stats)
    assert not judge(topology, 3, clients=clients)


def test_only_a_new_cluster_whose_nodes_all_answered() -> None:
    topology = parse_topology(TOML)
    assert not judge(topology, 0)  # nothing claimed: the plain first claim
    assert not judge(topology, 5)  # all claimed: nothing to complete
    assert not judge(topology, 2, generation=1)
    assert not judge(topology, 2, cluster_id="other")
    advanced = parse_topology(TOML.replace('"n5"\n', '"n5"\ngeneration = 1\n', 1))
    assert advanced.node("n5").generation == 1
    assert not judge(advanced, 2)
    identities = {
        n.id: replica_pb2.DirectoryIdentity(node_id=n.id, claimed=n.id == "n1")
        for n in topology.nodes[:4]
    }  # n5 did not answer
    clients = {n.id: FakeClient(n.address) for n in topology.nodes}
    assert not asyncio.run(claims_half_made(topology, identities, cast(Any, clients), 1.0))
