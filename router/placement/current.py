"""Where keys live right now: one ring, or during a move the old ring and the new one.

While a node joins or leaves, the old ring stays authoritative and the new one is pending.
Following Cassandra's pending ranges, a key's owners are then the union of its old and new
preference lists, and a request needs its usual quorum plus one reply for every pending
owner (a node in the new list but not the old). So W + pending acknowledgements of
the union include at least W of the old owners and at least W of the new ones, and a write
acknowledged during the move is on a quorum of whichever list is in force after the switch.
Reads likewise ask both lists and wait for R + pending answers, newest winning.

A node whose data directory is not what the topology expects (wiped, restored from an old
copy, being rebuilt: router/membership/identity.py) is a pending owner of its ranges the
same way: it stays in the preference lists and takes writes, but each of its keys needs
one more reply, so R + pending replies always include R from owners that count (and
W + pending acknowledgements W of them). Such nodes are the placement's ``uncounted``.

``Placement`` is the mutable handle the coordinator holds; a topology change swaps its
immutable ``Layout`` in one assignment. ``pieces`` cuts the token space where either ring
has a point (and at extra cuts), so every piece has one old and one new preference list:
the unit of moving and of comparing ranges.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from shardkv.common.ring_tokens import TOKEN_SPACE
from shardkv.router.placement.ring import Ring


@dataclass(frozen=True)
class Layout:
    """The rings of one topology epoch: new is None unless a move is in progress."""

    epoch: int
    old: Ring
    new: Ring | None = None


class Placement:
    """Owners and fallbacks of keys under the current Layout; swapped by ``use``."""

    def __init__(self, layout: Layout) -> None:
        self._layout = layout
        # Owners that do not count toward quorums (their directory is being checked or rebuilt).
        self._uncounted: frozenset[str] = frozenset()

    @property
    def layout(self) -> Layout:
        return self._layout

    def use(self, layout: Layout) -> None:
        """Switches every later lookup to layout (requests in flight keep their owners)."""
        self._layout = layout

    @property
    def uncounted(self) -> frozenset[str]:
        return self._uncounted

    def set_uncounted(self, nodes: frozenset[str]) -> None:
        """Nodes whose replies no longer count from the next request on: each key they own
        needs one more reply per such owner (requests in flight keep their quorums)."""
        self._uncounted = nodes

    def preference_list(self, key: bytes, n: int) -> tuple[str, ...]:
        """The key's owners: its old preference list, then the pending owners (if moving)."""
        layout = self._layout
        owners = layout.old.preference_list(key, n)
        if layout.new is None:
            return owners
        pending = tuple(o for o in layout.new.preference_list(key, n) if o not in owners)
        return owners + pending

    def pending_owners(self, key: bytes, n: int) -> tuple[str, ...]:
        """The owners of key that each need one more reply (none outside a move, with every
        owner counted): those that do not count, then those joining (new list only)."""
        layout, uncounted = self._layout, self._uncounted
        if layout.new is None and not uncounted:
            return ()
        old = layout.old.preference_list(key, n)
        extra = tuple(o for o in old if o in uncounted)
        if layout.new is None:
            return extra
        return extra + tuple(o for o in layout.new.preference_list(key, n) if o not in old)

    def fallbacks(self, key: bytes, n: int, *, skip: frozenset[str] = frozenset()) -> Iterator[str]:
        """Nodes beyond the key's owners (old and pending), in old-ring order, leaving out
        skip: the candidates to park hints on."""
        owners = frozenset(self.preference_list(key, n))
        for node_id in self._layout.old.walk(key):
            if node_id not in owners and node_id not in skip:
                yield node_id


@dataclass(frozen=True, slots=True)
class Piece:
    """Tokens [start, end), whose keys have one preference list before and after a change."""

    start: int
    end: int
    old: tuple[str, ...]
    new: tuple[str, ...]

    @property
    def joining(self) -> tuple[str, ...]:
        """Nodes that will own the piece and do not yet."""
        return tuple(o for o in self.new if o not in self.old)

    @property
    def leaving(self) -> tuple[str, ...]:
        """Nodes that own the piece and will not."""
        return tuple(o for o in self.old if o not in self.new)


def pieces(old: Ring, new: Ring, n: int, *, cuts: Iterable[int] = ()) -> list[Piece]:
    """The token space cut at every point of both rings, at 0 and at cuts, in order."""
    bounds = sorted({0, *old.points, *new.points, *cuts})
    ends = [*bounds[1:], TOKEN_SPACE]
    return [
        Piece(start, end, old.preference_list_at(start, n), new.preference_list_at(start, n))
        for start, end in zip(bounds, ends, strict=True)
    ]


def segment_cuts(segments: int) -> range:
    """Equally spaced cuts splitting the token space into segments parts."""
    return range(0, TOKEN_SPACE, max(1, TOKEN_SPACE // segments))


def merge_ranges(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted ranges with touching neighbours joined (fewer ranges for a node to look up)."""
    merged: list[tuple[int, int]] = []
    for start, end in sorted(ranges):
        if merged and merged[-1][1] == start:
            merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    return merged
