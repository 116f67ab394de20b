"""Where a hint goes (router/requests/hint_delivery.py), on real rings: its target while the
target owns the key and is not joining, else every current owner of the key."""

from __future__ import annotations

import pytest
from shardkv.router.placement.current import Layout, Placement
from shardkv.router.placement.ring import Ring
from shardkv.router.requests.hint_delivery import destinations

N = 3
KEYS = [b"k%03d" % i for i in range(300)]
FOUR = Ring({"n1": 1, "n2": 1, "n3": 1, "n4": 1})
FIVE = Ring({"n1": 1, "n2": 1, "n3": 1, "n4": 1, "n5": 1})


@pytest.mark.timeout(30)
def test_a_target_that_owns_the_key_gets_it_alone() -> None:
    placement = Placement(Layout(2, FOUR))
    for key in KEYS:
        for owner in FOUR.preference_list(key, N):
            assert destinations(placement, N, owner, key) == (owner,)


@pytest.mark.timeout(30)
def test_a_hint_for_a_node_that_gave_the_range_away_goes_to_the_new_owners() -> None:
    placement = Placement(Layout(3, FIVE))  # n5 was added after the hints were parked
    given = [k for k in KEYS if "n5" in FIVE.preference_list(k, N)]
    assert given
    for key in given:
        giver = next(
            n for n in FOUR.preference_list(key, N) if n not in FIVE.preference_list(key, N)
        )
        assert destinations(placement, N, giver, key) == FIVE.preference_list(key, N)


@pytest.mark.timeout(30)
def test_a_removed_id_is_never_a_destination() -> None:
    placement = Placement(Layout(4, FOUR))  # n5 left
    for key in KEYS:
        assert destinations(placement, N, "n5", key) == FOUR.preference_list(key, N)


@pytest.mark.timeout(30)
def test_a_joining_node_gets_hints_only_with_the_other_owners() -> None:
    placement = Placement(Layout(5, FOUR, FIVE))  # n5 joins (again)
    pending = [k for k in KEYS if "n5" in FIVE.preference_list(k, N)]
    assert pending
    for key in pending:
        owners = placement.preference_list(key, N)
        assert "n5" in owners
        assert destinations(placement, N, "n5", key) == owners


@pytest.mark.timeout(30)
def test_a_hint_for_an_owner_giving_the_key_away_during_a_move_reaches_every_owner() -> None:
    """The move streams the giver's copy of the range to the new owner and drops it after
    the switch: a hint handed to the giver alone during the transition would leave the
    new owner with the copy streamed before it, and the write on one replica fewer."""
    for layout in (Layout(6, FOUR, FIVE), Layout(7, FIVE, FOUR)):  # n5 joins; n5 leaves
        placement = Placement(layout)
        assert layout.new is not None
        moving = [
            k for k in KEYS if layout.old.preference_list(k, N) != layout.new.preference_list(k, N)
        ]
        assert moving
        for key in moving:
            owners = placement.preference_list(key, N)
            new = layout.new.preference_list(key, N)
            for giver in (o for o in layout.old.preference_list(key, N) if o not in new):
                assert destinations(placement, N, giver, key) == owners, (key, giver)
