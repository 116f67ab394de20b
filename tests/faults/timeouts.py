"""The routers' [timeouts] a fault scenario runs with.

The harness (tests/harness.py) writes test-tuned timeouts (health checks every 200 ms). A
user gets others: the router's built-in defaults when cluster.toml leaves [timeouts] out
(router/membership/topology.py, `Timeouts`), or the table `make cluster` writes
(scripts/local_cluster.py, the one the README shows). `SHIPPED_TIMEOUTS` names both, read
from those sources rather than copied, and `set_timeouts` puts one into a cluster.toml.
"""

from __future__ import annotations

import importlib.util
import sys
import tempfile
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path

from shardkv.router.membership.topology import Timeouts, load_topology

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def make_cluster_timeouts() -> dict[str, int]:
    """The [timeouts] table `make cluster` writes (scripts/local_cluster.py, as the README
    shows it), read from a file written by that script's own function."""
    spec = importlib.util.spec_from_file_location("_make_cluster", SCRIPTS / "local_cluster.py")
    assert spec is not None and spec.loader is not None
    local_cluster = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = local_cluster  # its dataclasses look their module up
    if str(SCRIPTS) not in sys.path:
        sys.path.append(str(SCRIPTS))  # it imports its neighbour local_etcd, as a script does
    spec.loader.exec_module(local_cluster)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cluster.toml"
        local_cluster.write_config(path, nodes=3, base_port=7100, n=3, r=2, w=2)
        table: dict[str, int] = tomllib.loads(path.read_text())["timeouts"]
    return table


# What a user runs with, by name: the router's built-in defaults ([timeouts] left out of
# cluster.toml: router/membership/topology.py) and the table `make cluster` writes.
SHIPPED_TIMEOUTS: dict[str, Callable[[], dict[str, int]]] = {
    "router defaults": dict,
    "make cluster": make_cluster_timeouts,
}


def set_timeouts(config: Path, table: Mapping[str, int]) -> Timeouts:
    """Replaces cluster.toml's [timeouts] table by table (left out when empty); returns the
    timeouts a router reads from the file, checked to be table's and defaults elsewhere."""
    lines = config.read_text().splitlines()
    start = lines.index("[timeouts]")
    end = start + 1
    while end < len(lines) and lines[end].strip() and not lines[end].startswith("["):
        end += 1
    new = ["[timeouts]", *(f"{name} = {value}" for name, value in table.items())] if table else []
    config.write_text("\n".join(lines[:start] + new + lines[end:]) + "\n")
    timeouts = load_topology(config).timeouts
    assert timeouts == Timeouts(**table), (timeouts, table)
    return timeouts
