"""shardkv-router refuses bad configs, bad flags and a busy port with a clear error."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest
from harness import BIN, free_port, shardd_proc, write_cluster_toml

ROUTER = str(BIN / "shardkv-router")


def run_router(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [ROUTER, "--id", "r1", *args], capture_output=True, text=True, timeout=30, check=False
    )


@pytest.mark.timeout(60)
def test_bad_config_and_flags(tmp_path: Path) -> None:
    nodes = [shardd_proc(tmp_path, f"n{i}") for i in (1, 2)]
    bad = write_cluster_toml(tmp_path / "bad.toml", nodes)  # N=3 with two nodes
    result = run_router("--config", str(bad), "--listen", f"127.0.0.1:{free_port()}")
    assert result.returncode == 2
    assert "replication = 3 exceeds the number of nodes (2)" in result.stderr

    result = run_router("--config", str(tmp_path / "missing.toml"))
    assert result.returncode == 2 and "cannot read topology file" in result.stderr

    result = run_router("--config", str(bad), "--no-such-flag")
    assert result.returncode == 2 and "unrecognized arguments: --no-such-flag" in result.stderr

    result = run_router("--config", str(bad), "--tls-cert", str(bad))
    assert result.returncode == 2 and "--tls-cert and --tls-key" in result.stderr


@pytest.mark.timeout(60)
def test_port_in_use(tmp_path: Path) -> None:
    nodes = [shardd_proc(tmp_path, f"n{i}") for i in (1, 2, 3)]
    config = write_cluster_toml(tmp_path / "cluster.toml", nodes)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        address = f"127.0.0.1:{busy.getsockname()[1]}"
        result = run_router("--config", str(config), "--listen", address)
    assert result.returncode == 1
    assert f"cannot listen on {address}" in result.stderr
