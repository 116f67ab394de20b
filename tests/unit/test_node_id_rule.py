"""Issue 14 items 4 and 8 in-process: the one node-id rule, cluster.toml's bounds, backup's
refusal of a router that names a node with a path for an id, and the SDK's warning about a
token sent in plaintext."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from shardkv.client.aio import AsyncClient
from shardkv.client.cli import backup
from shardkv.client.sync import Client
from shardkv.client.transport import TLSConfig, is_loopback, plaintext_token_targets
from shardkv.common.limits import LimitExceeded
from shardkv.common.node_ids import MAX_NODE_ID_CHARS, BadNodeId, check_node_id
from shardkv.router.membership.move_plan import BadNode
from shardkv.router.membership.node_checks import check_new_node
from shardkv.router.membership.topology import TopologyError, parse_topology
from shardkv.shardd.parked import MAX_TARGET_BYTES
from shardkv.shardd.validate import check_target

GOOD = ["n1", "N", "0", "node-1.rack_2", "a" * MAX_NODE_ID_CHARS]
BAD = ["", "..", ".", ".hidden", "-flag", "_x", "../x", "a/b", "a\\b", "/abs", "n 1", "n\n",
       "n\x1b", "né", "a" * (MAX_NODE_ID_CHARS + 1)]  # fmt: skip


@pytest.mark.parametrize("node_id", GOOD)
def test_plain_names_are_ids_everywhere(node_id: str) -> None:
    check_node_id(node_id)
    check_target(node_id)
    check_new_node(node_id, "127.0.0.1:7104", 1)
    parse_topology(toml(nodes=[node_id, "x1", "x2"]))


@pytest.mark.parametrize("node_id", BAD)
def test_anything_else_is_refused_everywhere_with_the_rule(node_id: str) -> None:
    with pytest.raises(BadNodeId, match=r"\[A-Za-z0-9\]"):
        check_node_id(node_id)
    with pytest.raises(LimitExceeded):  # the node's hint targets: INVALID_ARGUMENT
        check_target(node_id)
    with pytest.raises(BadNode):
        check_new_node(node_id, "127.0.0.1:7104", 1)
    with pytest.raises(TopologyError, match="node"):
        parse_topology(toml(nodes=[node_id, "x1", "x2"]))


def test_the_longest_id_fits_a_hint_target_and_a_file_name() -> None:
    assert len(("a" * MAX_NODE_ID_CHARS).encode()) <= MAX_TARGET_BYTES
    assert len(f"{'a' * MAX_NODE_ID_CHARS}.snapshot.partial") <= 255


def toml(*, nodes: list[str], head: str = "epoch = 1", repair: str = "") -> str:
    lines = [head, "replication = 3", "read_quorum = 2", "write_quorum = 2", repair]
    for i, node_id in enumerate(nodes):
        lines += ["[[nodes]]", f"id = {json.dumps(node_id)}", f'address = "127.0.0.1:{7101 + i}"']
    return "\n".join(lines)


@pytest.mark.parametrize(
    ("head", "repair", "reason"),
    [
        ("epoch = 18446744073709551616", "", "epoch = 18446744073709551616 exceeds"),
        (f"epoch = {(1 << 62) + 1}", "", "epoch"),
        ("epoch = 1", "[repair]\nsegments = 1000000000", "segments = 1000000000 exceeds"),
        ("epoch = 1", "[repair]\ntombstone_grace_s = 0", "tombstone_grace_s = 0 must be at least"),
        ("epoch = 1", "[repair]\ninterval_s = 9223372036854775808", "interval_s"),
    ],
)
def test_settings_out_of_bounds_are_refused_by_name(head: str, repair: str, reason: str) -> None:
    with pytest.raises(TopologyError, match=reason):
        parse_topology(toml(nodes=["n1", "n2", "n3"], head=head, repair=repair))


def test_settings_at_their_bounds_are_accepted() -> None:
    repair = "[repair]\nsegments = 65536\ntombstone_grace_s = 1"
    topology = parse_topology(toml(nodes=["n1", "n2", "n3"], head="epoch = 4611686018427387904",
                                   repair=repair))  # fmt: skip
    assert (topology.epoch, topology.repair.segments) == (1 << 62, 1 << 16)


class RouterNamingAPath:
    """A Client stand-in whose router names a node "../../escaped" (a router from before
    the id rule, or a hostile one)."""

    def topology(self) -> Any:
        node = SimpleNamespace(id="../../escaped", address="127.0.0.1:1", weight=1)
        return SimpleNamespace(
            router_id="r1", epoch=1, replication=1, read_quorum=1, write_quorum=1, nodes=[node]
        )

    def backup(self, node_id: str) -> list[Any]:
        raise AssertionError("no snapshot is asked for a node whose id is a path")


def test_backup_refuses_a_node_id_that_is_a_path(tmp_path: Path) -> None:
    target = tmp_path / "a" / "backup"
    with pytest.raises(backup.BackupError, match="cannot be a file name"):
        backup.backup(RouterNamingAPath(), target, progress=print)  # type: ignore[arg-type]
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


@pytest.mark.parametrize(
    ("target", "loopback"),
    [
        ("127.0.0.1:7100", True),
        ("127.8.0.1:7100", True),
        ("localhost:7100", True),
        ("[::1]:7100", True),
        ("dns:///localhost:7100", True),
        ("unix:/run/shardkv.sock", True),
        ("10.0.0.5:7100", False),
        ("[2001:db8::1]:7100", False),
        ("router.example:7100", False),
        ("dns:///192.0.2.1:7100", False),
    ],
)
def test_loopback_targets(target: str, loopback: bool) -> None:
    assert is_loopback(target) is loopback


def test_plaintext_token_targets() -> None:
    targets = ["127.0.0.1:1", "10.0.0.5:7100"]
    assert plaintext_token_targets(targets, None, "tok") == ["10.0.0.5:7100"]
    assert plaintext_token_targets(targets, None, None) == []
    assert plaintext_token_targets(targets, TLSConfig(ca=b"pem"), "tok") == []


@pytest.mark.parametrize("shell", [Client, AsyncClient])
def test_a_token_in_plaintext_beyond_loopback_is_warned_once_per_client(
    shell: type[Client] | type[AsyncClient], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="shardkv.client")

    def warnings() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name.startswith("shardkv.client")]

    shell("127.0.0.1:7100", bearer_token="secret-1")
    shell("10.0.0.5:7100")  # no token: nothing to leak
    shell("10.0.0.5:7100", bearer_token="secret-1", tls=TLSConfig(ca=b"pem"))
    assert warnings() == []
    shell("127.0.0.1:7100,10.0.0.5:7100,10.0.0.6:7100", bearer_token="secret-1")
    (message,) = warnings()
    assert "plaintext" in message and "10.0.0.5:7100, 10.0.0.6:7100" in message
    assert "127.0.0.1" not in message and "secret-1" not in message
    shell("10.0.0.5:7100", bearer_token="secret-1")
    assert len(warnings()) == 2  # a second client warns again: once per client
