"""``shardctl`` commands that change the cluster: node add/remove/rebuild, moves, repair.

    shardctl [--addr ROUTER] node add --id n4 --addr HOST:PORT [--weight W] [--no-wait]
    shardctl [--addr ROUTER] node remove --id n4 [--no-wait]
    shardctl [--addr ROUTER] node rebuild n4 [--no-wait]   # copy its ranges from the others
    shardctl moves                       # the move in progress and those finished
    shardctl repair [--no-wait]          # an anti-entropy pass now

In ``node add`` the ``--addr`` after the subcommand is the new node's address; the router
to talk to is the global ``--addr`` before it (or $SHARDKV_ADDR). Without ``--no-wait``
the command follows the move (or pass, or rebuild) until it ends, drawing a progress bar on
stderr when that is a terminal and printing each change of state otherwise; Ctrl-C stops
only the waiting, never the move. It prints a summary line (``--json``: the final Move,
RepairStatus or Rebuild), and exits 0 when done, 2 when it failed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from shardkv.client.sync import Client
from shardkv.v1 import admin_pb2

COMMANDS = ("node", "moves", "repair")
EXIT_OK, EXIT_ERROR = 0, 2
POLL_S = 0.5
BAR_WIDTH = 30
_FINAL_MOVE = (admin_pb2.MOVE_DONE, admin_pb2.MOVE_FAILED)


def add_parsers(
    commands: Any,
    common: argparse.ArgumentParser,
    fresh_common: Callable[[], argparse.ArgumentParser],
) -> None:
    """Adds the node, moves and repair subcommands to shardctl's parser. fresh_common makes
    a private copy of the global options, whose --addr ``node add`` replaces (parents share
    their option objects, so resolving the conflict on common would break it for all)."""
    node = commands.add_parser("node", parents=[common], help="add or remove a storage node")
    actions = node.add_subparsers(dest="node_command", required=True, metavar="ACTION")
    add = actions.add_parser(
        "add", parents=[fresh_common()], conflict_handler="resolve", help="add a node online"
    )
    add.add_argument("--id", required=True, dest="node_id", help="the new node's stable id")
    add.add_argument(
        "--addr", required=True, dest="node_addr", metavar="HOST:PORT", help="the node's address"
    )
    add.add_argument(
        "--weight", type=int, default=1, help="relative share of the ring, 1..100 (default 1)"
    )
    add.add_argument("--no-wait", action="store_true", help="return once the move started")
    remove = actions.add_parser("remove", parents=[common], help="decommission a node")
    remove.add_argument("--id", required=True, dest="node_id", help="the node to remove")
    remove.add_argument("--no-wait", action="store_true", help="return once the move started")
    rebuild = actions.add_parser(
        "rebuild",
        parents=[common],
        help="rebuild a node's data from every other owner of its ranges (it does not count"
        " toward R and W meanwhile)",
    )
    rebuild.add_argument("node_id", metavar="NODE", help="the node to rebuild")
    rebuild.add_argument("--no-wait", action="store_true", help="return once it started")
    commands.add_parser("moves", parents=[common], help="moves in progress and finished")
    repair = commands.add_parser("repair", parents=[common], help="run anti-entropy now")
    repair.add_argument("--no-wait", action="store_true", help="return once the pass started")


def run(args: argparse.Namespace, client: Client, out: TextIO) -> int:
    """Runs one of COMMANDS; returns the exit code."""
    if args.command == "moves":
        moves = client.moves()
        if args.json:
            out.write(json.dumps(_dict(moves)) + "\n")
            return EXIT_OK
        if not moves.HasField("current") and not moves.history:
            out.write("no moves\n")
        for move in [*moves.history, *([moves.current] if moves.HasField("current") else [])]:
            out.write(_move_line(move) + "\n")
        return EXIT_OK
    if args.command == "repair":
        return _repair(args, client, out)
    if args.node_command == "rebuild":
        return _rebuild(args, client, out)
    if args.node_command == "add":
        move = client.add_node(args.node_id, args.node_addr, weight=args.weight)
    else:
        move = client.remove_node(args.node_id)
    if not args.no_wait and move.state not in _FINAL_MOVE:
        move = _follow_move(client, move)
    out.write((json.dumps(_dict(move)) if args.json else _move_line(move)) + "\n")
    return EXIT_ERROR if move.state == admin_pb2.MOVE_FAILED else EXIT_OK


def _follow_move(client: Client, move: admin_pb2.Move) -> admin_pb2.Move:
    """Polls GetMoves until the move is done or failed, showing its progress."""
    display = _Display()
    try:
        while True:
            moves = client.moves()
            if moves.HasField("current") and moves.current.id == move.id:
                move = moves.current
            else:
                move = next((m for m in moves.history if m.id == move.id), move)
            display.show(_move_progress(move), admin_pb2.MoveState.Name(move.state))
            if move.state in _FINAL_MOVE:
                return move
            time.sleep(POLL_S)
    except KeyboardInterrupt:
        display.end()
        print(
            f"shardctl: stopped waiting; move {move.id} goes on (shardctl moves)", file=sys.stderr
        )
        raise SystemExit(EXIT_OK) from None
    finally:
        display.end()


def _repair(args: argparse.Namespace, client: Client, out: TextIO) -> int:
    status = client.repair()
    number = getattr(status, "pass")
    display = _Display()
    try:
        while not args.no_wait and status.running:
            time.sleep(POLL_S)
            status = client.repair_status()
            if getattr(status, "pass") != number:
                break
            done, total = status.segments_covered + status.segments_skipped, status.segments_total
            display.show(f"{_bar(done, total)} {done}/{total} segments", status.phase)
    finally:
        display.end()
    if args.json:
        out.write(json.dumps(_dict(status)) + "\n")
    else:
        out.write(
            f"repair pass {number} ({status.phase}{', running' if status.running else ''}):"
            f" {status.segments_covered}/{status.segments_total} segments covered,"
            f" {status.segments_differing} differed, {status.segments_skipped} skipped;"
            f" {status.records_repaired} records repaired of {status.records_compared} compared;"
            f" {status.tombstones_purged} tombstones purged"
            + (f"; error: {status.error}" if status.error else "")
            + "\n"
        )
    return EXIT_ERROR if status.error else EXIT_OK


def _rebuild(args: argparse.Namespace, client: Client, out: TextIO) -> int:
    rebuild = client.rebuild_node(args.node_id)
    display = _Display()
    try:
        while not args.no_wait and rebuild.state == admin_pb2.REBUILD_RUNNING:
            time.sleep(POLL_S)
            found = [r for r in client.rebuilds().rebuilds if r.node_id == args.node_id]
            if not found or found[0].started_ms != rebuild.started_ms:
                break
            rebuild = found[0]
            display.show(
                f"{_bar(rebuild.keys_copied, rebuild.keys_total)}"
                f" {rebuild.keys_copied:,}/{rebuild.keys_total:,} records",
                rebuild.phase,
            )
    finally:
        display.end()
    out.write((json.dumps(_dict(rebuild)) if args.json else rebuild_line(rebuild)) + "\n")
    return EXIT_ERROR if rebuild.state == admin_pb2.REBUILD_FAILED else EXIT_OK


def rebuild_line(rebuild: admin_pb2.Rebuild) -> str:
    """One line about a rebuild, for node rebuild and status."""
    seconds = ((rebuild.finished_ms or int(time.time() * 1000)) - rebuild.started_ms) / 1000
    line = (
        f"rebuild of {rebuild.node_id} ({rebuild.reason}):"
        f" {admin_pb2.RebuildState.Name(rebuild.state)} ({rebuild.phase});"
        f" {rebuild.keys_copied:,} of {rebuild.keys_total:,} records copied from"
        f" {', '.join(rebuild.sources) or 'no other owner'}, {rebuild.records_purged:,} purged;"
        f" generation {rebuild.generation}; {seconds:.1f} s"
    )
    return line + (f"; error: {rebuild.error}" if rebuild.error else "")


class _Display:
    """A progress line redrawn in place on a terminal, or state changes on other streams."""

    def __init__(self, stream: TextIO = sys.stderr) -> None:
        self._stream = stream
        self._tty = stream.isatty()
        self._last = ""
        self._drawn = False

    def show(self, progress: str, state: str) -> None:
        if self._tty:
            self._stream.write(f"\r\x1b[K{state:<15} {progress}")
            self._drawn = True
        elif state != self._last:
            self._stream.write(f"{state} {progress}\n")
        self._stream.flush()
        self._last = state

    def end(self) -> None:
        if self._drawn:
            self._stream.write("\n")
            self._stream.flush()
            self._drawn = False


def _bar(done: int, total: int) -> str:
    fraction = min(1.0, done / total) if total else 0.0
    filled = int(fraction * BAR_WIDTH)
    return f"[{'#' * filled}{'-' * (BAR_WIDTH - filled)}] {fraction * 100:5.1f}%"


def _move_progress(move: admin_pb2.Move) -> str:
    return (
        f"{_bar(move.keys_moved, move.keys_total)} {move.keys_moved:,}/{move.keys_total:,} keys"
        f" {move.bytes_moved / 1e6:.1f}/{move.bytes_total / 1e6:.1f} MB"
    )


def _move_line(move: admin_pb2.Move) -> str:
    seconds = ((move.finished_ms or int(time.time() * 1000)) - move.started_ms) / 1000
    line = (
        f"{move.id}: {admin_pb2.MoveState.Name(move.state)} epoch {move.epoch};"
        f" {move.keys_moved:,} keys ({move.bytes_moved:,} bytes) moved,"
        f" {move.keys_remaining:,} remaining; {move.keys_dropped:,} dropped by old owners;"
        f" {seconds:.1f} s"
    )
    return line + (f"; error: {move.error}" if move.error else "")


def _dict(message: Message) -> dict[str, Any]:
    return MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
