"""Reads cluster.toml into a frozen Topology, refusing anything doubtful with a clear reason.

The format (README): top-level ``epoch``, ``replication`` (N), ``read_quorum`` (R),
``write_quorum`` (W); an optional ``[timeouts]`` table (request_ms, node_call_ms,
health_interval_ms, hint_interval_ms, watch_interval_ms; each defaults when left out);
optional ``[repair]`` (interval_s, max_records_per_s, tombstone_grace_s, segments),
``[rebalance]`` (settle_ms, max_records_per_s) and ``[clock]`` (max_offset_ms) tables;
one ``[[nodes]]`` table per node with ``id``, ``address`` (host:port), an optional
``weight`` (default 1) and, only while a move runs, ``state = "joining"`` or ``"leaving"``
together with a ``[move]`` table (id, driver, started_ms, and after the switch
``phase = "drop"``) that names the move. An optional
top-level ``cluster_id`` names the cluster, and a node's optional ``generation`` (default
0) is the generation its data directory must have to count toward R and W
(router/membership/identity.py). Unknown keys are errors: a misspelt option must never be
silently ignored.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from shardkv.common.hlc import DEFAULT_MAX_OFFSET_MS
from shardkv.common.node_ids import BadNodeId, check_node_id
from shardkv.router.placement.ring import PlacementError, check_weights


class TopologyError(ValueError):
    """The topology file is unusable; the message names the file and the problem."""


@dataclass(frozen=True)
class Timeouts:
    """How long the router waits, in milliseconds."""

    # The longest the router works on a client request: a request without a deadline of
    # its own gets this one, and a later deadline is cut to it.
    request_ms: int = 3000
    # One internal read call to a node (never beyond the client's remaining deadline); a
    # write's calls may take request_ms, as only owners' acknowledgements count toward W.
    node_call_ms: int = 1000
    # Between health checks of a node.
    health_interval_ms: int = 500
    # Between rounds of hinted hand-off.
    hint_interval_ms: int = 1000
    # Between checks of cluster.toml for a newer epoch (a change made through another router).
    watch_interval_ms: int = 1000


@dataclass(frozen=True)
class RepairConfig:
    """Anti-entropy and tombstone GC."""

    # Between background anti-entropy passes; 0 runs passes only on demand (Admin Repair).
    interval_s: int = 3600
    # Records a node examines, and records a pass copies, per second at most; 0 = unpaced.
    max_records_per_s: int = 50_000
    # Tombstones younger than this are never purged, whatever repair covered. It must exceed
    # how late a write can arrive (request deadlines, hints parked for a node that is down).
    tombstone_grace_s: int = 86_400
    # Token segments a pass compares (ring arcs are cut further at this many equal cuts):
    # more segments mean smaller digests to compare and fewer records exchanged per difference.
    segments: int = 4096


@dataclass(frozen=True)
class RebalanceConfig:
    """Moving ranges when a node is added or removed."""

    # Wait after entering a transition before streaming (requests begun under the old
    # placement finish, other routers re-read the file), and after the switch before
    # nodes drop the ranges they gave away.
    settle_ms: int = 5000
    # Records streamed per second at most; 0 = unpaced.
    max_records_per_s: int = 0


@dataclass(frozen=True)
class ClockConfig:
    """Versions and the routers' clocks (read when a router starts)."""

    # A version further ahead of a router's wall clock is refused where it enters (a
    # restore; the router's own next version) and never adopted by its clock; nodes take
    # the same limit as a flag (shardd --max-clock-offset-ms). CockroachDB's default.
    max_offset_ms: int = DEFAULT_MAX_OFFSET_MS


@dataclass(frozen=True)
class MoveRecord:
    """The move in progress, as persisted with the transition."""

    # "<add|remove>-<node>@<epoch>"
    id: str
    # Id of the router that drives it (and resumes it when restarted).
    driver: str
    # Milliseconds since the Unix epoch when it began.
    started_ms: int
    # STREAM until the switch (both rings in use), then DROP: the new ring alone is in
    # force while the nodes that gave ranges away drop them (move_driver.py).
    phase: str = "stream"


@dataclass(frozen=True)
class NodeConfig:
    """One storage node: a stable id (placement depends on it), where it listens, its weight."""

    id: str
    address: str
    weight: int = 1
    # MEMBER, or during a move JOINING (receives writes, owns nothing yet) or LEAVING.
    state: str = "member"
    # The generation the node's data directory must have to count toward R and W; it
    # advances when a router records a new run of the node or a rebuild of it completes.
    generation: int = 0


MEMBER, JOINING, LEAVING = "member", "joining", "leaving"
STREAM, DROP = "stream", "drop"


@dataclass(frozen=True)
class Topology:
    """The cluster as one router sees it."""

    epoch: int
    replication: int
    read_quorum: int
    write_quorum: int
    nodes: tuple[NodeConfig, ...]
    timeouts: Timeouts = field(default_factory=Timeouts)
    repair: RepairConfig = field(default_factory=RepairConfig)
    rebalance: RebalanceConfig = field(default_factory=RebalanceConfig)
    # The move in progress; None when the topology is stable (no node joining or leaving).
    move: MoveRecord | None = None
    clock: ClockConfig = field(default_factory=ClockConfig)
    # Names the cluster; routers write it into the data directories they claim, and a
    # directory claimed under another name is foreign. Empty: unnamed.
    cluster_id: str = ""

    def weights(self, *, joined: bool) -> dict[str, int]:
        """Ring weights before (joined=False) or after (joined=True) the move in progress:
        a joining node counts only after, a leaving one only before."""
        gone = LEAVING if joined else JOINING
        return {n.id: n.weight for n in self.nodes if n.state != gone}

    def node(self, node_id: str) -> NodeConfig:
        for node in self.nodes:
            if node.id == node_id:
                return node
        raise KeyError(f"no node {node_id!r} in topology epoch {self.epoch}")


# Upper bound of every integer: TOML's integers are signed 64-bit (tomllib reads more).
MAX_INT = (1 << 63) - 1
# Bounds of single settings, with the reason for each.
_BOUNDS: dict[tuple[str, str], tuple[int, int]] = {
    # The epoch grows by one per change (two per move) and travels as a uint64: 2^62 leaves
    # room for more changes than a cluster could make, while 2^64 or near it can only be a
    # typo, or a file made to overflow the next epoch.
    ("top level", "epoch"): (0, 1 << 62),
    # Each segment costs a Piece in memory and a digest per replica in every pass; 65,536
    # (16 times the default) already cuts each ring arc into 1/65,536 of the token space,
    # and 10^9 would exhaust the router's memory.
    ("[repair]", "segments"): (0, 1 << 16),
    # 0 would drop a tombstone as soon as a pass covered it while an older write of the key
    # may still be on its way to a replica, which would bring the key back. 1 s is the
    # floor (tests use it); production wants far more than the longest request deadline.
    ("[repair]", "tombstone_grace_s"): (1, MAX_INT),
}

_TOP_KEYS = {
    "epoch",
    "replication",
    "read_quorum",
    "write_quorum",
    "timeouts",
    "repair",
    "rebalance",
    "move",
    "nodes",
    "clock",
    "cluster_id",
}
_NODE_KEYS = {"id", "address", "weight", "state", "generation"}
_MOVE_KEYS = {"id", "driver", "started_ms", "phase"}


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


def check_placement(topology: Topology) -> None:
    """Raises TopologyError unless the ring before and the ring after topology's move give
    every node ring points and every key N distinct owners, with weights in 1..MAX_WEIGHT
    (placement.ring.check_weights). A file is checked as it is read; a topology a router
    builds (a move's steps) is checked before it is written."""
    for joined in (False, True):
        weights = topology.weights(joined=joined)
        _check_ring(weights, topology.replication, after_move=joined and topology.move is not None)


def _check_ring(weights: dict[str, int], replication: int, *, after_move: bool) -> None:
    try:
        check_weights(weights, replication)
    except PlacementError as err:
        raise TopologyError(f"{err}{' (once the move is done)' if after_move else ''}") from None


def _build(data: dict[str, Any]) -> Topology:
    _no_unknown(data, _TOP_KEYS, "top level")
    epoch = _int(data, "epoch", "top level", *_BOUNDS["top level", "epoch"])
    replication = _int(data, "replication", "top level", minimum=1)
    read_quorum = _int(data, "read_quorum", "top level", minimum=1)
    write_quorum = _int(data, "write_quorum", "top level", minimum=1)
    timeouts = _table(Timeouts, data.get("timeouts", {}), "[timeouts]", minimum=1)
    repair = _table(RepairConfig, data.get("repair", {}), "[repair]", minimum=0)
    rebalance = _table(RebalanceConfig, data.get("rebalance", {}), "[rebalance]", minimum=0)
    clock = _table(ClockConfig, data.get("clock", {}), "[clock]", minimum=1)
    nodes = _nodes(data.get("nodes"))
    move = _move(data.get("move"), nodes)
    cluster_id = _str(data, "cluster_id", "top level") if "cluster_id" in data else ""
    if cluster_id:
        try:
            check_node_id(cluster_id, "cluster_id")
        except BadNodeId as err:
            raise TopologyError(f"top level: {err}") from None
    for joined in (False, True):
        count = sum(1 for n in nodes if n.state != (LEAVING if joined else JOINING))
        if replication > count:
            raise TopologyError(
                f"replication = {replication} exceeds the number of nodes ({count}"
                f"{' once the move is done' if joined and move else ''})"
            )
        weights = {n.id: n.weight for n in nodes if n.state != (LEAVING if joined else JOINING)}
        _check_ring(weights, replication, after_move=joined and move is not None)
    for name, value in (("read_quorum", read_quorum), ("write_quorum", write_quorum)):
        if value > replication:
            raise TopologyError(f"{name} = {value} exceeds replication = {replication}")
    return Topology(
        epoch,
        replication,
        read_quorum,
        write_quorum,
        nodes,
        timeouts,
        repair,
        rebalance,
        move,
        clock,
        cluster_id,
    )


_Config = TypeVar("_Config", Timeouts, RepairConfig, RebalanceConfig, ClockConfig)


def _table(kind: type[_Config], table: object, where: str, *, minimum: int) -> _Config:
    """A table of integer settings, each defaulting to kind's default when left out."""
    if not isinstance(table, dict):
        raise TopologyError(f"{where} must be a table")
    defaults = kind()
    _no_unknown(table, set(vars(defaults)), where)
    values = {
        name: _int(table, name, where, *_BOUNDS.get((where, name), (minimum, MAX_INT)))
        if name in table
        else default
        for name, default in vars(defaults).items()
    }
    return kind(**values)


def _move(table: object, nodes: tuple[NodeConfig, ...]) -> MoveRecord | None:
    """The [move] table, which must be present exactly when a node is joining or leaving."""
    moving = [n for n in nodes if n.state != MEMBER]
    if len(moving) > 1:
        raise TopologyError(
            f"nodes {', '.join(repr(n.id) for n in moving)} are all joining or leaving;"
            " one move at a time"
        )
    if table is None:
        if moving:
            node = moving[0]
            raise TopologyError(f"node {node.id!r} is {node.state} but there is no [move]")
        return None
    if not isinstance(table, dict):
        raise TopologyError("[move] must be a table")
    if not moving:
        raise TopologyError("[move] is present but no node is joining or leaving")
    _no_unknown(table, _MOVE_KEYS, "[move]")
    phase = _str(table, "phase", "[move]") if "phase" in table else STREAM
    if phase not in (STREAM, DROP):
        raise TopologyError(f"[move]: phase {phase!r} is not one of {STREAM!r}, {DROP!r}")
    return MoveRecord(
        _str(table, "id", "[move]"),
        _str(table, "driver", "[move]"),
        _int(table, "started_ms", "[move]", minimum=0),
        phase,
    )


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
        try:
            check_node_id(node_id)
        except BadNodeId as err:
            raise TopologyError(f"{where}: {err}") from None
        where = f"node {node_id!r}"
        address = _str(entry, "address", where)
        host, sep, port = address.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise TopologyError(f"{where}: address {address!r} is not host:port")
        weight = _int(entry, "weight", where, minimum=1) if "weight" in entry else 1
        generation = _int(entry, "generation", where, minimum=0) if "generation" in entry else 0
        state = _str(entry, "state", where) if "state" in entry else MEMBER
        if state not in (MEMBER, JOINING, LEAVING):
            raise TopologyError(
                f"{where}: state {state!r} is not one of {MEMBER!r}, {JOINING!r}, {LEAVING!r}"
            )
        if node_id in ids:
            raise TopologyError(f"duplicate node id {node_id!r}")
        if address in addresses:
            raise TopologyError(f"duplicate node address {address!r} (node {node_id!r})")
        ids.add(node_id)
        addresses.add(address)
        nodes.append(NodeConfig(node_id, address, weight, state, generation))
    return tuple(nodes)


def _no_unknown(table: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise TopologyError(
            f"{where}: unknown key(s) {', '.join(map(repr, unknown))}"
            f" (allowed: {', '.join(sorted(allowed))})"
        )


def _int(table: dict[str, Any], name: str, where: str, minimum: int, maximum: int = MAX_INT) -> int:
    if name not in table:
        raise TopologyError(f"{where}: missing required key {name!r}")
    value = table[name]
    if isinstance(value, bool) or not isinstance(value, int):
        raise TopologyError(f"{where}: {name} must be an integer, got {value!r}")
    if value < minimum:
        raise TopologyError(f"{where}: {name} = {value} must be at least {minimum}")
    if value > maximum:
        raise TopologyError(f"{where}: {name} = {value} exceeds the maximum of {maximum}")
    return value


def _str(table: dict[str, Any], name: str, where: str) -> str:
    if name not in table:
        raise TopologyError(f"{where}: missing required key {name!r}")
    value = table[name]
    if not isinstance(value, str) or not value.strip():
        raise TopologyError(f"{where}: {name} must be a non-empty string, got {value!r}")
    return value
