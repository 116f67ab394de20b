"""``shardctl status``: the cluster at a glance, from the router's Admin.GetStatus.

Per node: state (as the router sees it), its data directory (``ok``, or why it does not
count toward R and W, with the progress of its rebuild), weight, share of the ring, keys
(records stored, tombstones included), disk (bytes of its LMDB file in use), hints pending
for it (held by other nodes), and ops/s. Ops/s is the node's work, keys read plus records
written, per second between two samples ``--interval`` seconds apart; a node's uptime tells
a restart (counters back at zero) from a quiet node, and the rate is left empty then. Every
replica counts: one client write at N=3 is three writes, one on each replica.

The table is drawn with rich; ``--watch`` redraws it in place every interval until
Ctrl-C; ``--json`` prints one JSON object per sample (JSON Lines with --watch).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO

from shardkv.client.sync import Client
from shardkv.v1 import admin_pb2

from . import CommandError

if TYPE_CHECKING:  # rich is optional (the cli extra); imported where a table is drawn
    from rich.console import Console
    from rich.table import Table


@dataclass(frozen=True)
class Sample:
    """One GetStatus answer and when (time.monotonic()) it was taken."""

    status: admin_pb2.ClusterStatus
    taken: float


def ops_per_second(before: Sample | None, after: Sample) -> dict[str, float | None]:
    """Keys read plus records written per second for each node, between two samples;
    None where there is no earlier sample, the node was unreachable, or it restarted."""
    earlier = {n.id: n for n in before.status.nodes} if before else {}
    rates: dict[str, float | None] = {}
    for node in after.status.nodes:
        old = earlier.get(node.id)
        if old is None or not (old.reachable and node.reachable):
            rates[node.id] = None
            continue
        elapsed = node.stats.uptime_seconds - old.stats.uptime_seconds
        if elapsed <= 0:
            rates[node.id] = None  # restarted: the counters started again from zero
            continue
        work = (node.stats.keys_read + node.stats.records_written) - (
            old.stats.keys_read + old.stats.records_written
        )
        rates[node.id] = max(0.0, work / elapsed)
    return rates


def as_json(sample: Sample, rates: dict[str, float | None]) -> dict[str, Any]:
    """The sample as one JSON object (field names as in admin.proto where they exist)."""
    topology = sample.status.topology
    figures = {n.id: n for n in sample.status.nodes}
    rebuilds = {r.node_id: r for r in sample.status.rebuilds}
    nodes = []
    for node in topology.nodes:
        stats = figures.get(node.id, admin_pb2.NodeStats(id=node.id))
        s = stats.stats
        nodes.append(
            {
                "id": node.id,
                "address": node.address,
                "state": admin_pb2.NodeState.Name(node.state),
                "last_error": node.last_error,
                "directory": node.directory,
                "generation": node.generation,
                "expected_generation": node.expected_generation,
                "rebuild": _rebuild(rebuilds.get(node.id)),
                "weight": node.weight,
                "ring_share": node.ring_share,
                "reachable": stats.reachable,
                "error": stats.error,
                "keys": s.records,
                "disk_bytes": s.used_bytes,
                "map_size_bytes": s.map_size_bytes,
                "map_fill": s.used_bytes / s.map_size_bytes if s.map_size_bytes else 0.0,
                "hints_pending": node.hints_pending,
                "hints_held": s.hints,
                "keys_read": s.keys_read,
                "records_written": s.records_written,
                "uptime_seconds": s.uptime_seconds,
                "ops_per_second": rates.get(node.id),
            }
        )
    up = sum(1 for n in topology.nodes if n.state == admin_pb2.UP)
    return {
        "router_id": topology.router_id,
        "epoch": topology.epoch,
        "replication": topology.replication,
        "read_quorum": topology.read_quorum,
        "write_quorum": topology.write_quorum,
        "collected_ms": sample.status.collected_ms,
        "healthy": up == len(topology.nodes),
        "nodes_up": up,
        "nodes": nodes,
    }


def _rebuild(rebuild: admin_pb2.Rebuild | None) -> dict[str, Any] | None:
    """A node's latest rebuild through this router, as JSON (None: none)."""
    if rebuild is None:
        return None
    return {
        "state": admin_pb2.RebuildState.Name(rebuild.state),
        "phase": rebuild.phase,
        "reason": rebuild.reason,
        "keys_total": rebuild.keys_total,
        "keys_copied": rebuild.keys_copied,
        "sources": list(rebuild.sources),
        "generation": rebuild.generation,
        "started_ms": rebuild.started_ms,
        "finished_ms": rebuild.finished_ms,
        "error": rebuild.error,
    }


def _directory(node: dict[str, Any]) -> str:
    """The DIRECTORY cell: the state and generation, or why it does not count, with the
    progress of a running rebuild."""
    state = node["directory"] or "?"
    rebuild = node["rebuild"]
    if rebuild and rebuild["state"] == "REBUILD_RUNNING":
        total = rebuild["keys_total"]
        done = f" {rebuild['keys_copied'] * 100 // total}%" if total else ""
        return f"[yellow]rebuilding ({rebuild['phase']}{done})[/yellow]"
    if state == "ok":
        return f"ok g{node['generation']}"
    failed = f"; rebuild failed: {rebuild['error']}" if rebuild and rebuild["error"] else ""
    return f"[red]{state}[/red] g{node['generation']}/{node['expected_generation']}{failed}"


def _size(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if count < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def table(view: dict[str, Any]) -> Table:
    """The rich Table of one sample's JSON view."""
    from rich.table import Table

    title = (
        f"router {view['router_id']} · epoch {view['epoch']} · N={view['replication']}"
        f" R={view['read_quorum']} W={view['write_quorum']} ·"
        f" {view['nodes_up']}/{len(view['nodes'])} nodes up"
    )
    grid = Table(title=title, title_justify="left")
    for name, justify in (
        ("NODE", "left"),
        ("ADDRESS", "left"),
        ("STATE", "left"),
        ("DIRECTORY", "left"),
        ("WEIGHT", "right"),
        ("SHARE", "right"),
        ("KEYS", "right"),
        ("DISK", "right"),
        ("HINTS", "right"),
        ("OPS/S", "right"),
    ):
        grid.add_column(name, justify=justify)  # type: ignore[arg-type]
    for node in view["nodes"]:
        state = node["state"]
        style = "green" if state == "UP" else "red" if state == "DOWN" else "yellow"
        known = node["reachable"]
        rate = node["ops_per_second"]
        grid.add_row(
            node["id"],
            node["address"],
            f"[{style}]{state}[/{style}]",
            _directory(node),
            str(node["weight"]),
            f"{node['ring_share'] * 100:.1f}%",
            f"{node['keys']:,}" if known else "-",
            _size(node["disk_bytes"]) if known else "-",
            f"{node['hints_pending']:,}",
            "-" if rate is None else f"{rate:,.0f}",
        )
    return grid


def run(client: Client, out: TextIO, *, as_json_lines: bool, watch: bool, interval: float) -> int:
    """Prints one view (from two samples interval apart, for the rates; one sample when
    interval is 0), or with watch keeps printing a fresh one every interval."""
    if not as_json_lines:
        try:
            import rich  # noqa: F401
        except ImportError:
            raise CommandError(
                "shardctl status draws its table with rich: pip install 'shardkv[cli]'"
                " (or use --json)"
            ) from None
    first = Sample(client.status(), time.monotonic())
    if watch:
        return _watch(client, out, first, as_json_lines=as_json_lines, interval=interval)
    if interval <= 0:
        _emit(out, first, ops_per_second(None, first), as_json_lines)
        return 0
    time.sleep(interval)
    second = Sample(client.status(), time.monotonic())
    _emit(out, second, ops_per_second(first, second), as_json_lines)
    return 0


def _emit(out: TextIO, sample: Sample, rates: dict[str, float | None], as_json_lines: bool) -> None:
    view = as_json(sample, rates)
    if as_json_lines:
        out.write(json.dumps(view) + "\n")
        out.flush()
        return
    _console(out).print(table(view))


def _console(out: TextIO) -> Console:
    """A console on out; wide when out is not a terminal, so no column is cut short."""
    from rich.console import Console

    return Console(file=out, width=None if out.isatty() else 200)


def _watch(
    client: Client, out: TextIO, first: Sample, *, as_json_lines: bool, interval: float
) -> int:
    """Samples every interval until Ctrl-C; JSON Lines, or a table redrawn in place."""
    interval = max(interval, 0.1)
    previous, rates = first, ops_per_second(None, first)
    try:
        if as_json_lines:
            while True:
                _emit(out, previous, rates, True)
                time.sleep(interval)
                current = Sample(client.status(), time.monotonic())
                previous, rates = current, ops_per_second(previous, current)
        from rich.live import Live

        with Live(
            table(as_json(previous, rates)), console=_console(out), auto_refresh=False
        ) as live:
            while True:
                time.sleep(interval)
                current = Sample(client.status(), time.monotonic())
                previous, rates = current, ops_per_second(previous, current)
                live.update(table(as_json(current, rates)), refresh=True)
    except KeyboardInterrupt:
        return 0
