"""Weights cannot take a node off the ring or leave a key with fewer than N owners (issue 14
item 2): the bound, the rule behind it, and every place a topology enters."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from shardkv.router.membership.move_plan import BadNode, MoveConflict
from shardkv.router.membership.node_checks import check_new_node, check_placement_with
from shardkv.router.membership.topology import (
    JOINING,
    MoveRecord,
    NodeConfig,
    TopologyError,
    check_placement,
    parse_topology,
)
from shardkv.router.placement.ring import (
    DEFAULT_VNODES,
    MAX_WEIGHT,
    PlacementError,
    Ring,
    check_weights,
    ketama_groups,
)

HEAD = """
epoch = 1
replication = 3
read_quorum = 2
write_quorum = 2
"""


def toml(weights: list[int]) -> str:
    return HEAD + "".join(
        f'\n[[nodes]]\nid = "n{i}"\naddress = "127.0.0.1:{7100 + i}"\nweight = {w}\n'
        for i, w in enumerate(weights, start=1)
    )


@pytest.mark.parametrize("weights", [[1, 1, 1], [1, 2, 3], [1, 1, 1, MAX_WEIGHT], [7, 100, 1, 50]])
def test_ketama_groups_are_the_points_uhashring_makes(weights: list[int]) -> None:
    named = {f"n{i}": w for i, w in enumerate(weights)}
    counts = Counter(Ring(named)._owners)
    for node_id, groups in ketama_groups(named).items():
        # 4 points a group; a 32-bit collision may merge two points of the ring.
        assert groups * 4 - 2 <= counts[node_id] <= groups * 4


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, MAX_WEIGHT), min_size=1, max_size=300))
def test_every_weight_in_bounds_gives_every_node_points(weights: list[int]) -> None:
    groups = ketama_groups({f"n{i}": w for i, w in enumerate(weights)})
    assert min(groups.values()) >= 1


def test_the_reported_weight_is_refused_naming_node_weight_and_rule() -> None:
    with pytest.raises(PlacementError) as refused:
        check_weights({"n1": 1, "n2": 1, "n3": 1, "n4": 100_000}, 3)
    message = str(refused.value)
    assert "'n4'" in message and "weight 100000" in message
    assert f"maximum of {MAX_WEIGHT}" in message
    check_weights({"n1": 1, "n2": 1, "n3": 1, "n4": MAX_WEIGHT}, 3)
    with pytest.raises(PlacementError, match="exceeds the maximum"):
        Ring({"n1": 1, "n2": MAX_WEIGHT + 1})
    for bad in (0, -1, True, 1.5):
        with pytest.raises(PlacementError, match="integer >= 1"):
            check_weights({"n1": 1, "n2": bad}, 1)  # type: ignore[dict-item]


def test_a_node_without_ring_points_and_too_few_owners_are_refused() -> None:
    # With fewer virtual nodes than the weight ratio, the light node would get no points.
    with pytest.raises(PlacementError) as pointless:
        check_weights({"a": 1, "b": 100}, 1, vnodes=1)
    message = str(pointless.value)
    assert "'a' (weight 1) would get no ring points beside 'b' (weight 100)" in message
    with pytest.raises(PlacementError, match="no ring points"):
        Ring({"a": 1, "b": 100}, vnodes=1)
    with pytest.raises(PlacementError, match="fewer than replication N=3"):
        check_weights({"a": 1, "b": 1}, 3)
    assert DEFAULT_VNODES >= MAX_WEIGHT  # the bound that makes pointless nodes impossible


@pytest.mark.parametrize(
    ("weights", "named"),
    [
        ([1, 1, 100_000], "node 'n3': weight 100000 exceeds the maximum of 100"),
        ([1, MAX_WEIGHT + 1, 1], f"node 'n2': weight {MAX_WEIGHT + 1} exceeds the maximum"),
    ],
)
def test_cluster_toml_is_refused_at_load(weights: list[int], named: str) -> None:
    with pytest.raises(TopologyError, match=named):
        parse_topology(toml(weights))
    assert parse_topology(toml([1, 1, MAX_WEIGHT])).nodes[2].weight == MAX_WEIGHT


def test_a_move_that_would_break_placement_is_refused_before_and_while_it_runs() -> None:
    topology = parse_topology(toml([1, 1, 1]))
    huge = NodeConfig("n4", "127.0.0.1:7104", 100_000, JOINING)
    nodes = (*topology.nodes, huge)
    # AddNode: INVALID_ARGUMENT, before anything is written.
    with pytest.raises(BadNode, match="'n4': weight 100000"):
        check_new_node("n4", "127.0.0.1:7104", 100_000)
    with pytest.raises(BadNode, match="'n4': weight 100000"):
        check_placement_with(topology, nodes, BadNode)
    with pytest.raises(MoveConflict, match="'n4': weight 100000"):
        check_placement_with(topology, nodes, MoveConflict)
    # Any step of a move, however it was built, is checked before it is persisted.
    transition = replace(topology, nodes=nodes, move=MoveRecord("add-n4@1", "r1", 0))
    with pytest.raises(TopologyError, match=r"weight 100000 .*\(once the move is done\)"):
        check_placement(transition)
    check_placement(topology)
    check_new_node("n4", "127.0.0.1:7104", MAX_WEIGHT)
