"""The pure parts of topology changes: pieces, transfer plans, pending-owner quorums, and
cluster.toml written back (no processes)."""

from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path

import pytest
from shardkv.common.ring_tokens import TOKEN_SPACE, TokenRanges, ring_token
from shardkv.router.membership.move_plan import MoveConflict, given_away, plan_transfers
from shardkv.router.membership.topology import (
    JOINING,
    MoveRecord,
    NodeConfig,
    Topology,
    TopologyError,
    load_topology,
    parse_topology,
)
from shardkv.router.membership.topology_store import dump_topology, save_topology
from shardkv.router.placement.current import Layout, Placement, pieces, segment_cuts
from shardkv.router.placement.ring import Ring

N = 3
KEYS = [b"key/%05d" % i for i in range(20_000)]
TOKENS = {key: ring_token(key) for key in KEYS}


def ring(count: int) -> Ring:
    return Ring({f"n{i}": 1 for i in range(1, count + 1)})


@pytest.mark.parametrize("count", [3, 5])
def test_adding_a_node_moves_only_keys_whose_preference_list_changes(count: int) -> None:
    old, new = ring(count), ring(count + 1)
    cut = pieces(old, new, N)
    assert cut[0].start == 0 and cut[-1].end == TOKEN_SPACE
    assert all(a.end == b.start for a, b in itertools.pairwise(cut))
    changed = [p for p in cut if p.old != p.new]
    transfers = plan_transfers(changed, lambda node_id: False)
    assert {t.target for t in transfers} == {f"n{count + 1}"}
    assert all(t.from_giver for t in transfers)

    # A key travels iff its preference list changes, and exactly once.
    moved: dict[bytes, int] = {}
    for transfer in transfers:
        ranges = TokenRanges(transfer.ranges)
        for key in KEYS:
            if ranges.find(TOKENS[key]) >= 0:
                moved[key] = moved.get(key, 0) + 1
    ideal = {k for k in KEYS if old.preference_list(k, N) != new.preference_list(k, N)}
    assert set(moved) == ideal and set(moved.values()) == {1}
    # Each of n + 1 nodes holds N / (n + 1) of the keys: the new node's share, about 1/n of
    # all stored replicas.
    fraction = len(ideal) / (len(KEYS) * N)
    assert abs(fraction - 1 / (count + 1)) < 0.03, fraction


def test_a_down_giver_is_replaced_by_every_surviving_owner() -> None:
    old, new = ring(4), ring(3)  # n4 leaves
    changed = [p for p in pieces(old, new, N) if p.old != p.new]
    transfers = plan_transfers(changed, lambda node_id: node_id == "n4")
    assert transfers and not any(t.source == "n4" or t.from_giver for t in transfers)
    for piece in changed:
        sources = {t.source for t in transfers if piece in t.pieces}
        assert sources == {o for o in piece.old if o != "n4"}
    fallback = plan_transfers(changed, lambda node_id: False)[0].fallback()
    assert all(not t.from_giver and t.source != "n4" for t in fallback)
    with pytest.raises(MoveConflict, match="no reachable owner"):
        plan_transfers(pieces(Ring({"a": 1}), Ring({"b": 1}), 1), lambda node_id: True)


def test_given_away_ranges_belong_to_the_nodes_pushed_out() -> None:
    old, new = ring(3), ring(4)
    changed = [p for p in pieces(old, new, N) if p.old != p.new]
    dropped = given_away(changed, lambda node_id: True)
    for node_id, ranges in dropped.items():
        found = TokenRanges(ranges)
        for key in KEYS[:3000]:
            if found.find(TOKENS[key]) >= 0:
                assert node_id in old.preference_list(key, N)
                assert node_id not in new.preference_list(key, N)


def test_pending_owners_raise_the_quorum_during_a_move() -> None:
    old, new = ring(3), ring(4)
    placement = Placement(Layout(1, old))
    key = next(k for k in KEYS if "n4" in new.preference_list(k, N))
    assert placement.preference_list(key, N) == old.preference_list(key, N)
    assert placement.pending_owners(key, N) == ()
    placement.use(Layout(2, old, new))
    owners = placement.preference_list(key, N)
    assert owners[:N] == old.preference_list(key, N) and owners[N:] == ("n4",)
    assert placement.pending_owners(key, N) == ("n4",)
    assert not set(placement.fallbacks(key, N)) & set(owners)


def test_segment_cuts_split_the_token_space_evenly() -> None:
    cuts = list(segment_cuts(4096))
    assert len(cuts) == 4096 and cuts[1] - cuts[0] == TOKEN_SPACE // 4096
    segments = pieces(ring(3), ring(3), N, cuts=cuts)
    assert all(p.old == p.new for p in segments) and len(segments) >= 4096


def test_topology_is_written_back_atomically_and_reads_back_equal(tmp_path: Path) -> None:
    nodes = (NodeConfig("n1", "127.0.0.1:7101"), NodeConfig("n2", "127.0.0.1:7102", 2))
    stable = Topology(3, 2, 1, 2, nodes)
    moving = replace(
        stable,
        epoch=4,
        nodes=(*nodes, NodeConfig("n3", "127.0.0.1:7103", 1, JOINING)),
        # Node ids are plain names (shardkv.common.node_ids); a router id may need escaping.
        move=MoveRecord("add-n3@3", 'r"1', 12345),
    )
    path = tmp_path / "cluster.toml"
    for topology in (stable, moving):
        save_topology(path, topology)
        assert load_topology(path) == topology
        assert parse_topology(dump_topology(topology)) == topology
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        ('state = "joining"', "there is no [move]"),
        ('state = "gone"', "not one of"),
        ('[move]\nid = "x"\ndriver = "r1"\nstarted_ms = 1', "no node is joining"),
    ],
)
def test_bad_move_state_is_refused(extra: str, problem: str) -> None:
    text = (
        "epoch = 1\nreplication = 1\nread_quorum = 1\nwrite_quorum = 1\n"
        '[[nodes]]\nid = "n1"\naddress = "h:1"\n'
    )
    if extra.startswith("[move]"):
        text = text.replace("[[nodes]]", extra + "\n[[nodes]]")
    else:
        text += extra + "\n"
    with pytest.raises(TopologyError, match=problem.replace("[", r"\[").replace("]", r"\]")):
        parse_topology(text)
