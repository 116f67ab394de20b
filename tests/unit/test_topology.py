"""cluster.toml is parsed into a Topology, and every kind of bad file is refused by name."""

from __future__ import annotations

from pathlib import Path

import pytest
from shardkv.router.membership.topology import (
    NodeConfig,
    TopologyError,
    load_topology,
    parse_topology,
)

NODES = """
[[nodes]]
id = "n1"
address = "127.0.0.1:7101"
weight = 1

[[nodes]]
id = "n2"
address = "127.0.0.1:7102"
weight = 2

[[nodes]]
id = "n3"
address = "127.0.0.1:7103"
"""

HEAD = """
epoch = 4
replication = 3
read_quorum = 2
write_quorum = 2

[timeouts]
request_ms = 3000
node_call_ms = 1000
health_interval_ms = 200
hint_interval_ms = 500
"""


def test_valid_file_is_parsed(tmp_path: Path) -> None:
    path = tmp_path / "cluster.toml"
    path.write_text(HEAD + NODES)
    topology = load_topology(path)
    assert (topology.epoch, topology.replication) == (4, 3)
    assert (topology.read_quorum, topology.write_quorum) == (2, 2)
    assert topology.timeouts.health_interval_ms == 200
    assert topology.nodes[1] == NodeConfig("n2", "127.0.0.1:7102", 2)
    assert topology.nodes[2].weight == 1


def test_harness_format_is_parsed(tmp_path: Path) -> None:
    from harness import shardd_proc, write_cluster_toml

    procs = [shardd_proc(tmp_path, f"n{i}") for i in range(1, 4)]
    topology = load_topology(write_cluster_toml(tmp_path / "c.toml", procs, weights=[1, 1, 2]))
    assert [n.id for n in topology.nodes] == ["n1", "n2", "n3"]
    assert topology.nodes[2].weight == 2


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("epoch = [", "not valid TOML"),
        (HEAD, "no nodes"),
        (HEAD + NODES.replace('"n2"', '"n1"'), "duplicate node id 'n1'"),
        (HEAD + NODES.replace("7102", "7101"), "duplicate node address '127.0.0.1:7101'"),
        (HEAD.replace("replication = 3", "replication = 4") + NODES, "replication = 4 exceeds"),
        (HEAD.replace("read_quorum = 2", "read_quorum = 0") + NODES, "read_quorum = 0"),
        (HEAD.replace("write_quorum = 2", "write_quorum = 4") + NODES, "write_quorum = 4 exceeds"),
        (HEAD + NODES.replace("weight = 2", "weight = 0"), "weight = 0 must be at least 1"),
        (HEAD.replace("epoch = 4", "") + NODES, "missing required key 'epoch'"),
        (HEAD + NODES.replace('address = "127.0.0.1:7103"', ""), "missing required key 'address'"),
        (HEAD.replace("write_quorum", "write_qorum") + NODES, "unknown key(s) 'write_qorum'"),
        (HEAD.replace("request_ms", "requst_ms") + NODES, "[timeouts]: unknown key(s) 'requst_ms'"),
        (HEAD + NODES.replace("weight = 2", "wieght = 2"), "unknown key(s) 'wieght'"),
        (HEAD + NODES.replace("127.0.0.1:7102", "localhost"), "not host:port"),
        (HEAD.replace("epoch = 4", 'epoch = "4"') + NODES, "epoch must be an integer"),
    ],
)
def test_invalid_file_is_refused(text: str, problem: str) -> None:
    with pytest.raises(TopologyError) as caught:
        parse_topology(text, source="bad.toml")
    assert problem in str(caught.value)
    assert str(caught.value).startswith("bad.toml: ")


def test_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(TopologyError, match="cannot read topology file"):
        load_topology(tmp_path / "absent.toml")
