"""shardctl as users run it: a subprocess against a real cluster, checked by exit code,
stdout bytes and JSON output."""

from __future__ import annotations

import base64
import json
import os
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from harness import BIN, Cluster, free_port, start_cluster

SHARDCTL = str(BIN / "shardctl")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One cluster (3 nodes, a router) for the module: shardctl only reads and writes."""
    running = start_cluster(tmp_path_factory.mktemp("shardctl"))
    try:
        yield running
    finally:
        running.stop()


def run(
    *args: str, addr: str | None = None, stdin: bytes = b"", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    argv = [SHARDCTL, *(["--addr", addr] if addr else []), *args]
    return subprocess.run(
        argv, input=stdin, capture_output=True, timeout=30, env={**os.environ, **(env or {})}
    )


def ok(*args: str, addr: str, stdin: bytes = b"") -> bytes:
    done = run(*args, addr=addr, stdin=stdin)
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout


def json_lines(stdout: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.decode().splitlines()]


@pytest.mark.timeout(90)
def test_key_value_commands(cluster: Cluster) -> None:
    addr = cluster.router.address
    version = int(ok("put", "greeting", "hello", addr=addr))
    assert version > 0
    assert ok("get", "greeting", addr=addr) == b"hello", "raw bytes, no newline off a tty"
    assert json_lines(ok("--json", "get", "greeting", addr=addr)) == [
        {"key": "greeting", "found": True, "value": "hello", "version": version}
    ]

    binary = b"\xff\x00line\n"
    ok("put", "blob", addr=addr, stdin=binary)  # value omitted: read from stdin
    ok("put", "blob2", "-", addr=addr, stdin=b"two")
    assert ok("get", "blob", addr=addr) == binary
    assert ok("get", "blob2", addr=addr) == b"two"
    (blob,) = json_lines(ok("get", "blob", "--json", addr=addr))  # options after the command
    assert blob["value_base64"] is True and base64.b64decode(blob["value"]) == binary

    missing = run("get", "nope", addr=addr)
    assert (missing.returncode, missing.stdout) == (1, b"")
    assert b"not found" in missing.stderr
    missing_json = run("--json", "get", "nope", addr=addr)
    assert missing_json.returncode == 1
    assert json_lines(missing_json.stdout) == [{"key": "nope", "found": False}]

    tombstone = json_lines(ok("--json", "delete", "greeting", addr=addr))[0]
    assert tombstone["key"] == "greeting" and tombstone["version"] > version
    assert run("get", "greeting", addr=addr).returncode == 1

    for i in range(5):
        ok("--consistency", "all", "put", f"s/{i}", f"v{i}", addr=addr)
    text = ok("scan", "--prefix", "s/", addr=addr).decode().splitlines()
    assert text == [f"s/{i}\tv{i}" for i in range(5)]
    records = json_lines(ok("scan", "--json", "--start", "s/1", "--end", "s/4", addr=addr))
    assert [(r["key"], r["value"]) for r in records] == [
        ("s/1", "v1"),
        ("s/2", "v2"),
        ("s/3", "v3"),
    ]
    assert all(r["version"] > 0 for r in records)
    assert len(ok("scan", "--prefix", "s/", "--limit", "2", addr=addr).splitlines()) == 2

    from_env = run("get", "s/0", env={"SHARDKV_ADDR": f"127.0.0.1:{free_port()},{addr}"})
    assert (from_env.returncode, from_env.stdout) == (0, b"v0"), from_env.stderr


@pytest.mark.timeout(60)
def test_topology_and_health(cluster: Cluster) -> None:
    addr = cluster.router.address
    (topology,) = json_lines(ok("topology", "--json", addr=addr))
    assert topology["router_id"] == "r1"
    assert topology["replication"] == 3
    assert sorted(node["id"] for node in topology["nodes"]) == ["n1", "n2", "n3"]
    text = ok("topology", addr=addr).decode()
    assert "N=3 R=2 W=2" in text and "n1" in text
    (health,) = json_lines(ok("--json", "health", addr=addr))
    assert health["healthy"] is True and health["nodes_up"] == 3
    assert ok("health", addr=addr).startswith(b"healthy: 3 up, 0 down")


@pytest.mark.timeout(60)
def test_errors_exit_2_with_one_line(cluster: Cluster) -> None:
    dead = f"127.0.0.1:{free_port()}"
    unreachable = run("--timeout", "1", "get", "k", addr=dead)
    assert unreachable.returncode == 2
    message = unreachable.stderr.decode()
    assert message.startswith(f"shardctl: cannot reach {dead} (UNAVAILABLE): "), message
    assert message.count("\n") == 1 and "Traceback" not in message

    too_long = run("get", "k" * 600, addr=cluster.router.address)
    assert too_long.returncode == 2 and b"INVALID_ARGUMENT" in too_long.stderr
    no_admin = run("topology", addr=cluster.nodes[0].address)  # a shardd has no Admin
    assert no_admin.returncode == 2 and b"UNIMPLEMENTED" in no_admin.stderr
    assert run("scan", "--prefix", "a", "--start", "b", addr=dead).returncode == 2
    assert run("frobnicate").returncode == 2
