"""The keys of a batch read grouped by the owners it asks (batch_read.py).

A batch has few distinct sets of owners (at most the ring's points, one at 3 nodes and
N = 3), and every owner asked for a group gets the group's keys side by side in its chunk,
in the same order. Once every owner has answered, the group's versions and writers are
compared as arrays, in C: where the owners agree, the whole group is answered from one of
them without a comparison per key; only a group whose owners disagree is gone through key
by key (and repaired).
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import cast

from shardkv.common import native
from shardkv.router.requests.outcomes import ReadOutcome
from shardkv.router.requests.replica_answers import ReplicaAnswers

# A key's answer: a chunk's answers, and the key's position among them.
Answer = tuple[ReplicaAnswers, int]


@dataclass(slots=True)
class OwnerGroup:
    """Keys with the same owners: the owners asked first (nodes), every owner in the order
    asked (order), and where the keys begin in each first one's list of keys."""

    nodes: tuple[str, ...]
    order: tuple[str, ...]
    members: list[int]
    starts: list[int]


@dataclass(slots=True)
class ReadPlan:
    """Whom a batch read asks: each node's keys (indexes), by group; the keys left to the
    general path."""

    by_node: dict[str, list[int]]
    groups: list[OwnerGroup]
    aside: list[int]


def plan(
    grouped: Mapping[tuple[str, ...], list[int]],
    first: int,
    *,
    down: frozenset[str] | set[str],
    order: Callable[[tuple[str, ...]], tuple[str, ...]],
) -> ReadPlan:
    """Asks the first owners of each group of keys (keys by owners: Ring.owner_groups) in
    the batch's order of the nodes (replica_latency.AskOrder). A key with an owner down is
    left aside."""
    result = ReadPlan({}, [], [])
    for owners, members in grouped.items():
        if down and not down.isdisjoint(owners):
            result.aside += members
            continue
        asked = order(owners)
        starts = []
        for node_id in asked[:first]:
            keys = result.by_node.setdefault(node_id, [])
            starts.append(len(keys))
            keys += members
        result.groups.append(OwnerGroup(asked[:first], asked, members, starts))
    result.aside.sort()
    return result


def owner_orders(groups: Sequence[OwnerGroup], count: int) -> list[tuple[str, ...]]:
    """Each of count keys' owners in the order asked (empty for a key in no group): built
    only when a read asks more owners than its first ones."""
    orders: list[tuple[str, ...]] = [()] * count
    for group in groups:
        for index in group.members:
            orders[index] = group.order
    return orders


def agreed(group: OwnerGroup, replies: Mapping[str, ReplicaAnswers]) -> bool:
    """Whether every owner asked answered each of the group's keys with the same record:
    the same (version, writer), and the same entry bytes (equal stamps with different
    contents are told apart by hlc.precedes, key by key). The group's keys lie side by
    side in each owner's answers: compared in place (same), not copied."""
    size = len(group.members)
    first = replies[group.nodes[0]]
    start = group.starts[0]
    low, high = first.starts[start], first.ends[start + size - 1]
    for node_id, other_start in zip(group.nodes[1:], group.starts[1:], strict=True):
        other = replies[node_id]
        other_low = other.starts[other_start]
        if (
            other.ends[other_start + size - 1] - other_low != high - low
            or not same(first.versions, start, other.versions, other_start, size)
            or not same(first.writers, start, other.writers, other_start, size)
            or not same(first.entries, low, other.entries, other_low, high - low)
        ):
            return False
    return True


def group_outcomes(
    groups: Sequence[OwnerGroup],
    together: Sequence[bool],
    replies: Mapping[str, ReplicaAnswers],
    answer: Sequence[Answer | None],
    count: int,
) -> list[ReadOutcome | None]:
    """Each of count keys' outcome (None for a key in no group): a group whose owners agreed
    (together) answered from its first owner's entries, any other from answer, its keys'
    answers counted one by one."""
    outcomes: list[ReadOutcome | None] = [None] * count
    for group, agree in zip(groups, together, strict=True):
        if agree:
            source = replies[group.nodes[0]]
            entries, starts, ends = source.entries, source.starts, source.ends
            place(outcomes, group.members, entries, starts, ends, group.starts[0])
        else:
            for index in group.members:
                found, position = cast(Answer, answer[index])
                outcomes[index] = found.entry(position)
    return outcomes


def python_place(
    outcomes: list[ReadOutcome | None],
    members: Sequence[int],
    entries: bytes,
    starts: array[int],
    ends: array[int],
    first: int,
) -> None:
    """outcomes[members[j]] = entries[starts[first + j] : ends[first + j]] for each j:
    each key's entry put at its place in the answer (_spans.c does it in C)."""
    for p, index in enumerate(members, first):
        outcomes[index] = entries[starts[p] : ends[p]]


def python_same(
    a: bytes | array[int], a_start: int, b: bytes | array[int], b_start: int, count: int
) -> bool:
    """Whether a[a_start : a_start + count] == b[b_start : b_start + count] (_spans.c
    compares them in place)."""
    return a[a_start : a_start + count] == b[b_start : b_start + count]


def python_top(versions: array[int], start: int, count: int) -> int:
    """The largest of versions[start : start + count], 0 for none (_spans.c: highest)."""
    return max(versions[start : start + count], default=0)


Place = Callable[
    [list[ReadOutcome | None], Sequence[int], bytes, "array[int]", "array[int]", int], None
]
Same = Callable[["bytes | array[int]", int, "bytes | array[int]", int, int], bool]
_SPANS = native.extension(native.SPANS)
place: Place = python_place if _SPANS is None else _SPANS.place
same: Same = python_same if _SPANS is None else _SPANS.same
top: Callable[[array[int], int, int], int] = python_top if _SPANS is None else _SPANS.highest


def newest_read(
    groups: Sequence[OwnerGroup],
    together: Sequence[bool],
    replies: Mapping[str, ReplicaAnswers],
    newest: Sequence[int],
) -> int:
    """The highest version among the answers (0: none): a group whose owners agreed from
    its first owner's versions (the others' are the same), any other from each key's newest
    (counted one by one)."""
    highest = 0
    for group, agree in zip(groups, together, strict=True):
        if agree:
            versions = replies[group.nodes[0]].versions
            highest = max(highest, top(versions, group.starts[0], len(group.members)))
        else:
            highest = max(highest, max(newest[index] for index in group.members))
    return highest
