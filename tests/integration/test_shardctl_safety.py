"""The smaller findings of the security review (issue 14 item 8), against real processes:
a malformed backup manifest gets one line and exit 2, ``shardctl scan`` escapes control
characters on a terminal, the token can come from a file, a token sent in plaintext to a
non-loopback address is warned about, and a router refuses out-of-bounds settings."""

from __future__ import annotations

import hashlib
import json
import os
import pty
import select
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import (
    BIN,
    Cluster,
    free_port,
    router_proc,
    shardd_proc,
    start_cluster,
    write_cluster_toml,
)

SHARDCTL = str(BIN / "shardctl")
TOKEN = "client-tok-5e0c9b27a4"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One node, one router that wants TOKEN."""
    base = tmp_path_factory.mktemp("safety")
    (base / "token").write_text(TOKEN + "\n")
    running = start_cluster(
        base,
        nodes=1,
        replication=1,
        read_quorum=1,
        write_quorum=1,
        router_extra=["--token-file", str(base / "token")],
    )
    try:
        yield running
    finally:
        running.stop()


def shardctl(
    *args: str, env: dict[str, str] | None = None, stdin: bytes = b""
) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("SHARDKV_")}
    return subprocess.run(
        [SHARDCTL, *args],
        input=stdin.decode(),
        capture_output=True,
        text=True,
        timeout=30,
        env={**environment, **(env or {})},
    )


def one_line_error(done: subprocess.CompletedProcess[str], *words: str) -> None:
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert done.stderr.startswith("shardctl: ") and done.stderr.count("\n") == 1, done.stderr
    assert "Traceback" not in done.stderr
    for word in words:
        assert word in done.stderr, done.stderr


@pytest.mark.timeout(60)
def test_a_malformed_manifest_gets_one_line_and_exit_2(tmp_path: Path) -> None:
    dead = f"127.0.0.1:{free_port()}"  # restore reads the whole backup before any call
    frame = b"\xff" * 5  # not a SnapshotBatch
    snapshot = len(frame).to_bytes(4, "big") + frame
    entry = {
        "id": "n1",
        "file": "nodes/n1.snapshot",
        "records": 1,
        "hints": 0,
        "bytes": len(snapshot),
        "sha256": hashlib.sha256(snapshot).hexdigest(),
    }
    manifests = {
        "a list": [],
        "no nodes": {"format": "shardkv-backup/1"},
        "nodes not a list": {"format": "shardkv-backup/1", "nodes": {"n1": entry}},
        "entry not an object": {"format": "shardkv-backup/1", "nodes": ["n1"]},
        "field missing": {"format": "shardkv-backup/1", "nodes": [{"id": "n1"}]},
        "unknown field": {"format": "shardkv-backup/1", "nodes": [{**entry, "x": 1}]},
        "file not text": {"format": "shardkv-backup/1", "nodes": [{**entry, "file": 7}]},
        "undecodable batch": {"format": "shardkv-backup/1", "nodes": [entry]},
    }
    for name, manifest in manifests.items():
        backup = tmp_path / name.replace(" ", "-")
        (backup / "nodes").mkdir(parents=True)
        (backup / "nodes" / "n1.snapshot").write_bytes(snapshot)
        (backup / "manifest.json").write_text(json.dumps(manifest))
        done = shardctl("--addr", dead, "restore", str(backup))
        # Before the fix: a Python traceback (AttributeError, KeyError, TypeError,
        # DecodeError) and exit 1, which the README documents as "not found".
        one_line_error(done, str(backup))


def read_terminal(argv: list[str]) -> bytes:
    """What argv writes to a terminal (a pty as its stdout)."""
    master, slave = pty.openpty()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHARDKV_")}
    proc = subprocess.Popen(argv, stdout=slave, stderr=subprocess.PIPE, env=env)
    os.close(slave)
    output = b""
    try:
        while True:
            ready, _, _ = select.select([master], [], [], 20)
            if not ready:
                break
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed its end
                break
            if not chunk:
                break
            output += chunk
    finally:
        os.close(master)
        proc.wait(20)
    assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
    return output


@pytest.mark.timeout(60)
def test_scan_escapes_control_characters_on_a_terminal(cluster: Cluster) -> None:
    addr = cluster.router.address
    key = "evil\x1b[2J\x07\x7f\u202ex\x9b"
    put = shardctl("--addr", addr, "--token", TOKEN, "put", key, "v\x1b]0;owned\x07")
    assert put.returncode == 0, put.stderr
    shown = read_terminal([SHARDCTL, "--addr", addr, "--token", TOKEN, "scan", "--prefix", "evil"])
    # Before the fix: the escape sequences reached the terminal raw (it cleared the screen,
    # rang the bell, set the window title, reversed the text direction).
    for raw in (b"\x1b", b"\x07", b"\x7f", "\u202e".encode(), "\x9b".encode()):
        assert raw not in shown, shown
    assert shown == b"evil\\x1b[2J\\x07\\x7f\\u202ex\\x9b\tv\\x1b]0;owned\\x07\r\n", shown
    piped = shardctl("--addr", addr, "--token", TOKEN, "scan", "--prefix", "evil")
    assert piped.stdout == f"{key}\tv\x1b]0;owned\x07\n"  # a pipe gets the text unchanged


@pytest.mark.timeout(60)
def test_token_from_a_file_and_a_plaintext_warning(cluster: Cluster, tmp_path: Path) -> None:
    addr = cluster.router.address
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    # Before the fix: "unrecognized arguments: --token-file" (exit 2).
    from_file = shardctl("--addr", addr, "--token-file", str(token_file), "put", "t", "1")
    assert from_file.returncode == 0, from_file.stderr
    assert shardctl("--addr", addr, "--token", TOKEN, "get", "t").stdout == "1"
    from_env = shardctl("--addr", addr, "get", "t", env={"SHARDKV_TOKEN": TOKEN})
    assert from_env.stdout == "1"
    one_line_error(shardctl("--addr", addr, "get", "t"), "UNAUTHENTICATED")
    one_line_error(shardctl("--addr", addr, "--token-file", str(tmp_path / "no"), "get", "t"))
    both = shardctl("--addr", addr, "--token", TOKEN, "--token-file", str(token_file), "get", "t")
    assert both.returncode == 2
    assert TOKEN not in from_file.stderr + both.stderr
    helped = shardctl("--help").stdout
    assert "--token-file" in helped and "ps" in helped

    # Loopback: no warning. Elsewhere in plaintext: one warning line, then the error.
    assert "plaintext" not in from_file.stderr
    remote = shardctl(
        "--addr", "192.0.2.1:7100", "--timeout", "0.5", "get", "t", env={"SHARDKV_TOKEN": TOKEN}
    )
    lines = remote.stderr.splitlines()
    assert remote.returncode == 2 and len(lines) == 2, remote.stderr
    assert lines[0].startswith("shardctl: warning: ") and "plaintext" in lines[0], lines
    assert "192.0.2.1:7100" in lines[0] and TOKEN not in remote.stderr
    quiet = shardctl("--addr", "192.0.2.1:7100", "--timeout", "0.5", "get", "t")
    assert "plaintext" not in quiet.stderr  # no token: nothing to leak


BAD_SETTINGS = {
    "epoch": ("epoch = 1\n", "epoch = 18446744073709551616\n"),
    "segments": ("[timeouts]\n", "[repair]\nsegments = 1000000000\n\n[timeouts]\n"),
    "tombstone_grace_s": ("[timeouts]\n", "[repair]\ntombstone_grace_s = 0\n\n[timeouts]\n"),
    "longer than": ('id = "n2"', f'id = "{"n" * 65}"'),
}


@pytest.mark.timeout(120)
def test_router_refuses_settings_out_of_bounds(tmp_path: Path) -> None:
    nodes = [shardd_proc(tmp_path, f"n{i}") for i in range(1, 4)]
    for reason, (old, new) in BAD_SETTINGS.items():
        config = write_cluster_toml(tmp_path / "cluster.toml", nodes)
        text = config.read_text()
        assert old in text
        config.write_text(text.replace(old, new, 1))
        # Before the fix the router started with each (and the timeout killed it).
        done = subprocess.run(
            router_proc(tmp_path, config).argv, capture_output=True, text=True, timeout=15
        )
        assert done.returncode == 2 and reason in done.stderr, (reason, done.stderr)
