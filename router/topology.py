"""Reads cluster.toml into a frozen Topology, refusing anything doubtful with a clear reason.

The format (README): top-level ``epoch``, ``replication`` (N), ``read_quorum`` (R),
``write_quorum`` (W); an optional ``[timeouts]`` table (request_ms, node_call_ms,
health_interval_ms, hint_interval_ms; each defaults when left out); one ``[[nodes]]`` table
per node with ``id``, ``address`` (host:port) and an optional ``weight`` (default 1).
Unknown keys are errors: a misspelt option must never be silently ignored.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class TopologyError(ValueError):
    """The topology file is unusable; the message names the file and the problem."""


@dataclass(frozen=True)
class Timeouts:
    """How long the router waits, in milliseconds."""

    # A client request that carries no deadline of its own.
    request_ms: int = 3000
    # One internal call to a node (never beyond the client's remaining deadline).
    node_call_ms: int = 1000
    # Between health checks of a node.
    health_interval_ms: int = 500
    # Between rounds of hinted hand-off.
    hint_interval_ms: int = 1000


@dataclass(frozen=True)
class NodeConfig:
    """One storage node: a stable id (placement depends on it), where it listens, its weight."""

    id: str
    address: str
    weight: int = 1


@dataclass(frozen=True)
class Topology:
    """The cluster as one router sees it."""

    epoch: int
    replication: int
    read_quorum: int
    write_quorum: int
    nodes: tuple[NodeConfig, ...]
    timeouts: Timeouts = field(default_factory=Timeouts)

    def node(self, node_id: str) -> NodeConfig:
        for node in self.nodes:
            if node.id == node_id:
                return node
        raise KeyError(f"no node {node_id!r} in topology epoch {self.epoch}")


_TOP_KEYS = {"epoch", "replication", "read_quorum", "write_quorum", "timeouts", "nodes"}
_TIMEOUT_KEYS = {"request_ms", "node_call_ms", "health_interval_ms", "hint_interval_ms"}
_NODE_KEYS = {"id", "address", "weight"}


def load_topology(path: Path) -> Topology:
    """Reads and checks a cluster.toml file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise TopologyError(f"{path}: cannot read topology file: {err.strerror or err}") from err
    return parse_topology(text, source=str(path))


def parse_topology(text: str, *, source: str = "cluster.toml") -> Topology:
    """Parses and checks the text of a cluster.toml; raises TopologyError naming the problem."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise TopologyError(f"{source}: not valid TOML: {err}") from err
    try:
        return _build(data)
    except TopologyError as err:
        raise TopologyError(f"{source}: {err}") from None


def _build(data: dict[str, Any]) -> Topology:
    _no_unknown(data, _TOP_KEYS, "top level")
    epoch = _int(data, "epoch", "top level", minimum=0)
    replication = _int(data, "replication", "top level", minimum=1)
    read_quorum = _int(data, "read_quorum", "top level", minimum=1)
    write_quorum = _int(data, "write_quorum", "top level", minimum=1)
    timeouts = _timeouts(data.get("timeouts", {}))
    nodes = _nodes(data.get("nodes"))
    if replication > len(nodes):
        raise TopologyError(
            f"replication = {replication} exceeds the number of nodes ({len(nodes)})"
        )
    for name, value in (("read_quorum", read_quorum), ("write_quorum", write_quorum)):
        if value > replication:
            raise TopologyError(f"{name} = {value} exceeds replication = {replication}")
    return Topology(epoch, replication, read_quorum, write_quorum, nodes, timeouts)


def _timeouts(table: object) -> Timeouts:
    if not isinstance(table, dict):
        raise TopologyError("[timeouts] must be a table")
    _no_unknown(table, _TIMEOUT_KEYS, "[timeouts]")
    defaults = Timeouts()
    values = {
        name: _int(table, name, "[timeouts]", minimum=1) if name in table else default
        for name, default in vars(defaults).items()
    }
    return Timeouts(**values)


def _nodes(entries: object) -> tuple[NodeConfig, ...]:
    if entries is None or entries == []:
        raise TopologyError("no nodes: add at least one [[nodes]] table")
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise TopologyError("nodes must be written as [[nodes]] tables")
    nodes: list[NodeConfig] = []
    ids: set[str] = set()
    addresses: set[str] = set()
    for position, entry in enumerate(entries, start=1):
        where = f"[[nodes]] #{position}"
        _no_unknown(entry, _NODE_KEYS, where)
        node_id = _str(entry, "id", where)
        where = f"node {node_id!r}"
        address = _str(entry, "address", where)
        host, sep, port = address.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise TopologyError(f"{where}: address {address!r} is not host:port")
        weight = _int(entry, "weight", where, minimum=1) if "weight" in entry else 1
        if node_id in ids:
            raise TopologyError(f"duplicate node id {node_id!r}")
        if address in addresses:
            raise TopologyError(f"duplicate node address {address!r} (node {node_id!r})")
        ids.add(node_id)
        addresses.add(address)
        nodes.append(NodeConfig(node_id, address, weight))
    return tuple(nodes)


def _no_unknown(table: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise TopologyError(
            f"{where}: unknown key(s) {', '.join(map(repr, unknown))}"
            f" (allowed: {', '.join(sorted(allowed))})"
        )


def _int(table: dict[str, Any], name: str, where: str, *, minimum: int) -> int:
    if name not in table:
        raise TopologyError(f"{where}: missing required key {name!r}")
    value = table[name]
    if isinstance(value, bool) or not isinstance(value, int):
        raise TopologyError(f"{where}: {name} must be an integer, got {value!r}")
    if value < minimum:
        raise TopologyError(f"{where}: {name} = {value} must be at least {minimum}")
    return value


def _str(table: dict[str, Any], name: str, where: str) -> str:
    if name not in table:
        raise TopologyError(f"{where}: missing required key {name!r}")
    value = table[name]
    if not isinstance(value, str) or not value.strip():
        raise TopologyError(f"{where}: {name} must be a non-empty string, got {value!r}")
    return value
