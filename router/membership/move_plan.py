"""What a node add or remove has to copy, from where to where, and how far it has got.

For every piece of the token space whose preference list changes (placement.pieces), each
joining node receives the piece from the node that gives it away, as Cassandra's strict
bootstrap does: the new owner then holds exactly the copy the old owner held, so a record
that was on W old owners is on W new owners after the switch. When that node is down (a
dead node being removed, or a failed stream), the piece is streamed from every surviving
old owner instead (newest wins on apply), which again covers every record that reached W
of the old owners. Only pieces whose preference list changes are streamed, and a source
sends only the keys of those pieces, so the records moved are the keys that change owner
(about 1/n of them when one of n nodes joins).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TypeVar

import grpc
from shardkv.router.membership.topology import (
    DROP,
    JOINING,
    LEAVING,
    MEMBER,
    NodeConfig,
    Topology,
)
from shardkv.router.placement.current import Piece, merge_ranges, pieces
from shardkv.router.placement.ring import Ring
from shardkv.v1 import admin_pb2

T = TypeVar("T")

ADD, REMOVE = admin_pb2.MOVE_ADD, admin_pb2.MOVE_REMOVE


class MoveConflict(Exception):
    """Another move is in progress, or the change is impossible now (FAILED_PRECONDITION)."""


class NodeExists(Exception):
    """The id or address is already in the topology (ALREADY_EXISTS)."""


class NodeUnknown(Exception):
    """No node has that id (NOT_FOUND)."""


class BadNode(Exception):
    """The request names an unusable id, address or weight (INVALID_ARGUMENT)."""


@dataclass(frozen=True)
class Transfer:
    """Stream pieces from source to target; the pieces' survivors are the fallback."""

    target: str
    source: str
    pieces: tuple[Piece, ...]
    # True when source gives the pieces away (so surviving old owners can replace it).
    from_giver: bool

    @property
    def ranges(self) -> list[tuple[int, int]]:
        return merge_ranges((p.start, p.end) for p in self.pieces)

    def fallback(self) -> list[Transfer]:
        """The same pieces streamed from every surviving old owner of each."""
        return _grouped(
            (self.target, survivor, piece, False)
            for piece in self.pieces
            for survivor in _survivors(piece)
        )


def _survivors(piece: Piece) -> tuple[str, ...]:
    return tuple(o for o in piece.old if o in piece.new)


def _grouped(entries: Iterable[tuple[str, str, Piece, bool]]) -> list[Transfer]:
    groups: defaultdict[tuple[str, str, bool], list[Piece]] = defaultdict(list)
    for target, source, piece, giver in entries:
        groups[(target, source, giver)].append(piece)
    return [
        Transfer(target, source, tuple(found), giver)
        for (target, source, giver), found in sorted(groups.items())
    ]


def plan_transfers(changed: Sequence[Piece], is_down: Callable[[str], bool]) -> list[Transfer]:
    """The streams that give every joining owner its pieces (see the module docstring)."""
    entries: list[tuple[str, str, Piece, bool]] = []
    for piece in changed:
        leaving = piece.leaving
        for position, target in enumerate(piece.joining):
            giver = leaving[position] if position < len(leaving) else None
            if giver is not None and not is_down(giver):
                entries.append((target, giver, piece, True))
                continue
            survivors = _survivors(piece)
            if not survivors:
                raise MoveConflict(
                    f"tokens [{piece.start}, {piece.end}) have no reachable owner to copy from"
                    f" (owners {', '.join(piece.old)})"
                )
            entries.extend((target, s, piece, False) for s in survivors)
    return _grouped(entries)


def given_away(
    changed: Sequence[Piece], keep: Callable[[str], bool]
) -> dict[str, list[tuple[int, int]]]:
    """Per node that stays in the cluster (keep), the token ranges it no longer owns."""
    ranges: defaultdict[str, list[tuple[int, int]]] = defaultdict(list)
    for piece in changed:
        for node_id in piece.leaving:
            if keep(node_id):
                ranges[node_id].append((piece.start, piece.end))
    return {node_id: merge_ranges(found) for node_id, found in sorted(ranges.items())}


def changed_pieces(topology: Topology) -> list[Piece]:
    """The pieces whose preference list topology's move changes (its rings before and
    after, which the topology keeps until the move is done, whatever its phase)."""
    before = Ring(topology.weights(joined=False))
    after = Ring(topology.weights(joined=True))
    return [p for p in pieces(before, after, topology.replication) if p.old != p.new]


def received(changed: Sequence[Piece]) -> dict[str, list[tuple[int, int]]]:
    """Per node, the token ranges it was to receive (what an aborted move's targets purge)."""
    ranges: defaultdict[str, list[tuple[int, int]]] = defaultdict(list)
    for piece in changed:
        for node_id in piece.joining:
            ranges[node_id].append((piece.start, piece.end))
    return {node_id: merge_ranges(found) for node_id, found in sorted(ranges.items())}


def check_driver(topology: Topology, move_id: str, router_id: str) -> None:
    """Raises MoveConflict unless topology's move is move_id driven by router_id: a move
    another router took over (or aborted) is finished by that router alone."""
    move = topology.move
    if move is None or move.id != move_id or move.driver != router_id:
        now = f"move {move.id} driven by {move.driver!r}" if move else "no move"
        raise MoveConflict(
            f"move {move_id} is no longer this router's to finish: epoch {topology.epoch} has {now}"
        )


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class MoveProgress:
    """A move's state and counters (mutated by the task running it)."""

    id: str
    kind: int
    node_id: str
    address: str
    router_id: str
    from_epoch: int
    epoch: int
    state: int = admin_pb2.MOVE_SETTLING
    keys_total: int = 0
    keys_moved: int = 0
    bytes_total: int = 0
    bytes_moved: int = 0
    keys_dropped: int = 0
    started_ms: int = field(default_factory=now_ms)
    finished_ms: int = 0
    error: str = ""

    def moved(self, records: int, size: int) -> None:
        """Counts a batch applied to its new owner."""
        self.keys_moved += records
        self.bytes_moved += size

    def to_proto(self) -> admin_pb2.Move:
        done = self.state == admin_pb2.MOVE_DONE
        return admin_pb2.Move(
            id=self.id,
            kind=self.kind,  # type: ignore[arg-type]
            node_id=self.node_id,
            address=self.address,
            state=self.state,  # type: ignore[arg-type]
            from_epoch=self.from_epoch,
            epoch=self.epoch,
            keys_total=self.keys_total,
            keys_moved=self.keys_moved,
            bytes_total=self.bytes_total,
            bytes_moved=self.bytes_moved,
            keys_remaining=0 if done else max(0, self.keys_total - self.keys_moved),
            bytes_remaining=0 if done else max(0, self.bytes_total - self.bytes_moved),
            started_ms=self.started_ms,
            finished_ms=self.finished_ms,
            error=self.error,
            router_id=self.router_id,
            keys_dropped=self.keys_dropped,
        )


def client_of(clients: Mapping[str, T], node_id: str) -> T:
    """The channel to node_id; MoveConflict once it left the topology."""
    try:
        return clients[node_id]
    except KeyError:
        raise MoveConflict(f"node {node_id!r} is not in the topology any more") from None


def describe_error(err: Exception) -> str:
    """One line for a move's error: gRPC code and details, or every error of a group."""
    if isinstance(err, ExceptionGroup):
        return "; ".join(describe_error(e) for e in err.exceptions)
    if isinstance(err, grpc.aio.AioRpcError):
        return f"{err.code().name}: {err.details()}"
    return str(err) or type(err).__name__


def moving_node(topology: Topology) -> NodeConfig | None:
    """The node joining or leaving (None outside a move)."""
    return next((n for n in topology.nodes if n.state != MEMBER), None)


def dropping(topology: Topology, moving: NodeConfig, node_id: str) -> bool:
    """Whether a change of node_id asks to finish a switched move of the same node (it
    cannot be undone any more: its drops are what is left)."""
    move = topology.move
    return move is not None and move.phase == DROP and moving.id == node_id


def final_topology(topology: Topology) -> Topology:
    """The move done (epoch + 1): the joined node a member, the left one gone. Nothing to
    fence: the drop phase already placed keys by this ring."""
    nodes = tuple(
        replace(n, state=MEMBER) if n.state == JOINING else n
        for n in topology.nodes
        if n.state != LEAVING
    )
    return replace(topology, epoch=topology.epoch + 1, nodes=nodes, move=None)


def aborted_topology(topology: Topology, node: NodeConfig) -> Topology:
    """A transition undone (epoch + 1): the joining node gone, or the leaving one a member."""
    if node.state == JOINING:
        nodes = tuple(n for n in topology.nodes if n.id != node.id)
    else:
        nodes = tuple(replace(n, state=MEMBER) if n.id == node.id else n for n in topology.nodes)
    return replace(topology, epoch=topology.epoch + 1, nodes=nodes, move=None)


def progress_of(topology: Topology, router_id: str) -> MoveProgress:
    """The progress record of topology's move, driven by router_id."""
    node = moving_node(topology)
    assert node is not None and topology.move is not None
    tail = topology.move.id.rpartition("@")[2]  # "<kind>-<node>@<epoch it started from>"
    return MoveProgress(
        topology.move.id,
        ADD if node.state == JOINING else REMOVE,
        node.id,
        node.address,
        router_id,
        from_epoch=int(tail) if tail.isdigit() else topology.epoch - 1,
        epoch=topology.epoch,
        started_ms=topology.move.started_ms,
    )


def conflict(topology: Topology, current: MoveProgress | None) -> MoveConflict:
    """The refusal of a change while topology's move is in progress (current: the move
    this router runs, if any)."""
    move = topology.move
    assert move is not None
    node = moving_node(topology)
    status = (
        admin_pb2.MoveState.Name(current.state)
        if current is not None and current.id == move.id
        else f"driven by router {move.driver!r}"
    )
    return MoveConflict(
        f"move {move.id} ({node.id if node else '?'} {node.state if node else ''}, {status})"
        " is in progress; wait for it (shardctl moves), or repeat it to resume it"
    )
