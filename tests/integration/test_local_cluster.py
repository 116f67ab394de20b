"""`make cluster` as a user runs it, and every README command block run against it.

The cluster lives in a temp VAR dir on free ports, so a developer's own `make cluster` on
7100 is left alone; README blocks are run with the documented addresses rewritten to it.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from harness import free_port
from shardkv.client import Client

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class LocalCluster:
    var: Path
    port: int

    @property
    def router(self) -> str:
        return f"127.0.0.1:{self.port}"

    def node(self, index: int) -> str:
        return f"127.0.0.1:{self.port + index}"

    def make(
        self, target: str, *extra: str, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [
                "make",
                "--no-print-directory",
                target,
                f"VAR={self.var}",
                f"PORT={self.port}",
                *extra,
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if check:
            assert result.returncode == 0, (
                f"make {target} failed:\n{result.stdout}\n{result.stderr}"
            )
        return result

    def pids(self) -> list[int]:
        return [int(p.read_text()) for p in (self.var / "run").glob("*.pid")]


def free_port_block(size: int) -> int:
    """A base port with the next size-1 ports free too, and their metrics ports (+1000)."""
    for _ in range(50):
        base = free_port()
        ports = [base + i + offset for i in range(size) for offset in (0, 1000)]
        if max(ports) < 65536 and all(_free(port) for port in ports):
            return base
    raise RuntimeError(f"no block of {size} free ports")


def _free(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    cluster = LocalCluster(tmp_path_factory.mktemp("var"), free_port_block(4))
    try:
        cluster.make("cluster")
        yield cluster
    finally:
        cluster.make("cluster-stop", check=False)
        for pid in cluster.pids():  # anything cluster-stop could not stop
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def readme_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), flags=re.DOTALL)


def for_cluster(text: str, cluster: LocalCluster) -> str:
    """The README text with its documented addresses pointing at the test's cluster."""
    for offset in range(3, -1, -1):
        text = text.replace(f"127.0.0.1:{7100 + offset}", cluster.node(offset))
    return text


@pytest.mark.timeout(180)
def test_make_cluster_serves_and_keeps_data_across_restarts(local: LocalCluster) -> None:
    topology = tomllib.loads((local.var / "cluster.toml").read_text())
    assert (topology["replication"], topology["read_quorum"], topology["write_quorum"]) == (3, 2, 2)
    assert [n["address"] for n in topology["nodes"]] == [local.node(i) for i in (1, 2, 3)]

    with Client(local.router) as kv:
        kv.put("make:sdk", b"via the SDK")
    put = subprocess.run(
        [
            str(BIN / "grpcurl"),
            "-plaintext",
            "-d",
            '{"key":"bWFrZTpncnBj","value":"Z3JwY3VybA=="}',
            local.router,
            "shardkv.v1.KV/Put",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert put.returncode == 0, put.stderr

    status = local.make("cluster-status").stdout
    assert status.count("SERVING") == 4, status

    # A killed node comes back with `make cluster`; nothing else is restarted.
    pids_before = {p.stem: int(p.read_text()) for p in (local.var / "run").glob("*.pid")}
    os.kill(pids_before["n2"], signal.SIGKILL)
    restarted = local.make("cluster").stdout
    assert "started n2" in restarted and "started n1" not in restarted, restarted

    local.make("cluster-stop")
    assert "SERVING" not in local.make("cluster-status").stdout
    local.make("cluster")
    with Client(local.router) as kv:
        assert kv.get("make:sdk") == b"via the SDK"
        assert kv.get("make:grpc") == b"grpcurl"

    refused = local.make("cluster", "NODES=5", check=False)
    assert refused.returncode != 0 and "NODES=5 (cluster has 3)" in refused.stderr


@pytest.mark.timeout(120)
def test_readme_shell_blocks_run(local: LocalCluster) -> None:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "SHARDKV_ADDR": local.router}
    blocks = readme_blocks("sh")
    assert blocks, "README has no ```sh blocks"
    for block in blocks:
        script = for_cluster(block, local)
        result = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, (
            f"README block failed:\n{script}\n{result.stdout}\n{result.stderr}"
        )


@pytest.mark.timeout(60)
def test_readme_python_blocks_run(local: LocalCluster) -> None:
    for block in readme_blocks("python"):
        result = subprocess.run(
            [sys.executable, "-c", for_cluster(block, local)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 0, f"README block failed:\n{block}\n{result.stderr}"


def test_readme_topology_example_is_valid(tmp_path: Path) -> None:
    from shardkv.router.membership.topology import load_topology

    [example] = readme_blocks("toml")
    path = tmp_path / "cluster.toml"
    path.write_text(example)
    topology = load_topology(path)
    assert topology.replication == 3 and len(topology.nodes) == 3
