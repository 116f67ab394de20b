"""Where the topology is kept: the one interface of its back ends, and its text format.

Every change of the topology is a compare-and-swap (``TopologyStore.compare_and_swap``):
it is written only if the store still holds the topology the change was computed from,
so of two routers changing the topology at once exactly one succeeds and the other gets
``TopologyConflict`` naming what won. Back ends: ``store_file`` (cluster.toml, under an
exclusive lock with a re-read) and ``store_etcd`` (one etcd key, a Txn on its
mod_revision).

The text is TOML written by hand (the format is small and flat; tomllib reads it back and
``load_topology`` checks it like any hand-written file); etcd holds the same text.
Comments of a hand-written file are not kept: the file becomes the router's. A save
writes a temporary file beside the target, fsyncs it, renames it over the target and
fsyncs the directory, so a crash leaves either the old or the new topology, never half of
one.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from dataclasses import fields
from pathlib import Path
from typing import Protocol

from shardkv.router.membership.move_plan import MoveConflict
from shardkv.router.membership.topology import MEMBER, Topology, parse_topology


class StoreUnavailable(Exception):
    """The store cannot be reached, or did not answer in time: a topology change is refused
    (UNAVAILABLE, naming the store) while the router keeps serving its last topology."""


class TopologyConflict(MoveConflict):
    """The store no longer holds the topology a change was computed from: another change
    won the race (FAILED_PRECONDITION, naming the stored epoch and its move)."""

    def __init__(self, store: str, stored: Topology, expected: Topology) -> None:
        self.stored = stored
        super().__init__(f"{store}: {describe_stored(stored, expected)}; this change was not made")


def describe_stored(stored: Topology, expected: Topology) -> str:
    """What the store holds instead of expected, naming its epoch and move."""
    if stored.epoch <= expected.epoch:
        what = "other content than" if stored.epoch == expected.epoch else "an older epoch than"
        return (
            f"it holds epoch {stored.epoch}, {what} this router's epoch {expected.epoch}:"
            " every change raises the epoch, so it was written outside shardkv (fix the"
            " store; changes are refused until then)"
        )
    held = f"the topology changed first: it holds epoch {stored.epoch}"
    move, moving = stored.move, [n for n in stored.nodes if n.state != MEMBER]
    if move is None:
        return f"{held} (no move in progress; this router served epoch {expected.epoch})"
    node = f"{moving[0].id} {moving[0].state}, " if moving else ""
    return f"{held} with move {move.id} ({node}driven by router {move.driver!r}) in progress"


class TopologyStore(Protocol):
    """The stored topology: read it, change it by compare-and-swap, follow its changes."""

    # What and where the store is, for messages ("cluster.toml at ...", "etcd at ...").
    name: str

    async def load(self) -> Topology:
        """The stored topology (TopologyError when it is not one; StoreUnavailable)."""
        ...

    async def compare_and_swap(self, expected: Topology, new: Topology) -> None:
        """Stores new if the store holds exactly expected (content, not just its epoch);
        raises TopologyConflict naming what it holds otherwise, StoreUnavailable when it
        cannot tell. new must carry a higher epoch than expected."""
        ...

    def watch(self) -> AsyncIterator[Topology]:
        """Every topology stored from now on (at least the latest of a burst), for ever;
        what is unreadable is logged and skipped, and an unreachable store is retried."""
        ...

    async def close(self) -> None:
        """Releases connections; watch iterators end."""
        ...


def _string(value: str) -> str:
    """A TOML basic string: JSON's escaping is valid TOML for every string we write."""
    return json.dumps(value, ensure_ascii=False)


def dump_topology(topology: Topology) -> str:
    """The cluster.toml text of topology (parse_topology reads it back equal)."""
    lines = [
        "# Written by shardkv-router: topology changes (shardctl node add/remove) rewrite",
        "# this file atomically. Routers adopt a higher epoch while running, but nodes",
        "# added or removed by hand move no data: use shardctl node add/remove.",
        f"epoch = {topology.epoch}",
        f"replication = {topology.replication}",
        f"read_quorum = {topology.read_quorum}",
        f"write_quorum = {topology.write_quorum}",
    ]
    if topology.cluster_id:
        lines.append(f"cluster_id = {_string(topology.cluster_id)}")
    for name, table in (
        ("timeouts", topology.timeouts),
        ("repair", topology.repair),
        ("rebalance", topology.rebalance),
        ("clock", topology.clock),
    ):
        lines += ["", f"[{name}]"]
        lines += [f"{f.name} = {getattr(table, f.name)}" for f in fields(table)]
    if topology.move is not None:
        move = topology.move
        lines += [
            "",
            "[move]",
            f"id = {_string(move.id)}",
            f"driver = {_string(move.driver)}",
            f"started_ms = {move.started_ms}",
        ]
        if move.phase != "stream":
            lines.append(f"phase = {_string(move.phase)}")
    for node in topology.nodes:
        lines += [
            "",
            "[[nodes]]",
            f"id = {_string(node.id)}",
            f"address = {_string(node.address)}",
            f"weight = {node.weight}",
        ]
        if node.state != MEMBER:
            lines.append(f"state = {_string(node.state)}")
        if node.generation:
            lines.append(f"generation = {node.generation}")
    return "\n".join(lines) + "\n"


def save_topology(path: Path, topology: Topology) -> None:
    """Replaces path with topology's text atomically and durably."""
    text = dump_topology(topology)
    if parse_topology(text, source=str(path)) != topology:
        raise AssertionError(f"{path}: the written topology would not read back equal")
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with temp.open("w", encoding="utf-8") as out:
        out.write(text)
        out.flush()
        os.fsync(out.fileno())
    os.replace(temp, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
