"""Data-directory identities: the node's record of its own (shardd.identity), the router's
verdict on it (router.membership.identity.classify), the topology fields that hold what is
expected, and the placement's uncounted owners (one more reply each)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from shardkv.router.membership.identity import (
    AHEAD,
    BEHIND,
    FOREIGN,
    NEW,
    OK,
    REBUILDING,
    classify,
)
from shardkv.router.membership.topology import NodeConfig, TopologyError, parse_topology
from shardkv.router.membership.topology_store import dump_topology
from shardkv.router.placement.current import Layout, Placement
from shardkv.router.placement.ring import Ring
from shardkv.shardd.identity import Change, DirectoryIdentity, IdentityConflict, WrongNode
from shardkv.shardd.store import Store
from shardkv.v1 import replica_pb2

TOML = """
epoch = 4
replication = 3
read_quorum = 2
write_quorum = 2
cluster_id = "prod-1"

[[nodes]]
id = "n1"
address = "127.0.0.1:7101"
generation = 3

[[nodes]]
id = "n2"
address = "127.0.0.1:7102"

[[nodes]]
id = "n3"
address = "127.0.0.1:7103"
"""


def test_the_topology_keeps_the_cluster_id_and_each_nodes_generation() -> None:
    topology = parse_topology(TOML)
    assert topology.cluster_id == "prod-1"
    assert [n.generation for n in topology.nodes] == [3, 0, 0]
    assert parse_topology(dump_topology(topology)) == topology
    plain = parse_topology(TOML.replace('cluster_id = "prod-1"\n', ""))
    assert plain.cluster_id == "" and "cluster_id" not in dump_topology(plain)
    with pytest.raises(TopologyError, match="generation = -1 must be at least 0"):
        parse_topology(TOML.replace("generation = 3", "generation = -1"))
    with pytest.raises(TopologyError, match="cluster_id"):
        parse_topology(TOML.replace('"prod-1"', '"../x"'))


def identity(**fields: object) -> replica_pb2.DirectoryIdentity:
    base: dict[str, object] = {
        "node_id": "n1",
        "cluster_id": "prod-1",
        "generation": 3,
        "claimed": True,
    }
    return replica_pb2.DirectoryIdentity(**{**base, **fields})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("fields", "state"),
    [
        ({}, OK),
        ({"generation": 4}, OK),  # advanced, not recorded yet
        ({"generation": 5}, AHEAD),
        ({"generation": 2}, BEHIND),
        ({"claimed": False, "generation": 0, "cluster_id": ""}, NEW),
        ({"cluster_id": "other"}, FOREIGN),
        ({"cluster_id": ""}, OK),  # claimed by a cluster without a name
        ({"node_id": "n2"}, FOREIGN),
        ({"rebuild_by": "r2", "rebuild_idle_ms": 100}, REBUILDING),
        ({"rebuild_by": "r2", "rebuild_idle_ms": 60_000}, OK),  # the lease lapsed
    ],
)
def test_a_directory_is_judged_against_the_topology(fields: dict[str, object], state: str) -> None:
    topology = parse_topology(TOML)
    assert classify(topology.nodes[0], topology, identity(**fields))[0] == state


def test_uncounted_owners_need_one_more_reply_each() -> None:
    ring = Ring({"n1": 1, "n2": 1, "n3": 1, "n4": 1})
    placement = Placement(Layout(1, ring))
    key = b"some key"
    owners = placement.preference_list(key, 3)
    assert placement.pending_owners(key, 3) == ()
    placement.set_uncounted(frozenset({owners[0]}))
    assert placement.pending_owners(key, 3) == (owners[0],)
    assert placement.preference_list(key, 3) == owners  # it still takes writes
    outsider = next(n for n in ("n1", "n2", "n3", "n4") if n not in owners)
    placement.set_uncounted(frozenset({outsider}))
    assert placement.pending_owners(key, 3) == ()
    moving = Placement(Layout(2, ring, Ring({"n1": 1, "n2": 1, "n3": 1, "n4": 1, "n5": 1})))
    joining = moving.pending_owners(key, 3)
    moving.set_uncounted(frozenset(owners[:2]))
    assert moving.pending_owners(key, 3) == owners[:2] + joining


def test_shardd_keeps_its_directorys_identity(tmp_path: Path) -> None:
    async def main() -> None:
        store = Store(tmp_path / "n1")
        directory = DirectoryIdentity.open(store, "n1")
        fresh = directory.view()
        assert (fresh.identity.generation, fresh.identity.claimed) == (0, False)
        claim = Change(0, False, "", cluster_id="c", generation=0, advance_boot=True)
        claimed = await directory.change(claim)
        assert claimed.identity.claimed and claimed.identity.advanced_boot == directory.boot
        with pytest.raises(
            IdentityConflict, match="the caller saw node n1, unclaimed, generation 0"
        ):
            await directory.change(Change(0, False, "", cluster_id="c", generation=0))
        directory.lease("r1", release=False)
        with pytest.raises(IdentityConflict, match="router r1 holds the rebuild lease"):
            directory.lease("r2", release=False)
        with pytest.raises(IdentityConflict, match="r2 no longer holds"):
            await directory.change(Change(0, True, "c", "c", 1, rebuild_by="r2"))
        done = await directory.change(Change(0, True, "c", "c", 1, rebuild_by="r1"))
        assert done.identity.generation == 1 and done.rebuild_by == ""
        store.close()
        reopened = Store(tmp_path / "n1")
        again = DirectoryIdentity.open(reopened, "n1")
        assert again.identity.generation == 1 and again.boot != directory.boot
        with pytest.raises(WrongNode, match="belongs to node 'n1', not to 'n2'"):
            DirectoryIdentity.open(reopened, "n2")
        reopened.close()

    asyncio.run(main())


def test_a_node_config_defaults_to_generation_zero() -> None:
    assert NodeConfig("n9", "127.0.0.1:1").generation == 0
