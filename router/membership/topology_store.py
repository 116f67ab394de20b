"""Writes a Topology back to cluster.toml atomically, so a restarted router serves it.

The text is TOML written by hand (the format is small and flat; tomllib reads it back and
``load_topology`` checks it like any hand-written file). Comments of a hand-written file
are not kept: the file becomes the router's. A save writes a temporary file beside the
target, fsyncs it, renames it over the target and fsyncs the directory, so a crash leaves
either the old or the new topology, never half of one.
"""

from __future__ import annotations

import json
import os
from dataclasses import fields
from pathlib import Path

from shardkv.router.membership.topology import MEMBER, Topology, parse_topology


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
