"""`make cluster` as a user runs it, and every README command block run against it.

The cluster lives in a temp VAR dir on free ports, so a developer's own `make cluster` on
7100 is left alone; README blocks are run with the documented addresses rewritten to it.
Every fenced block of the README is one of the kinds below, and each kind is checked: ```sh
and ```python run, ```console runs its `$` commands and compares their output with the
output shown (`make` lines are checked to be targets), ```toml and the settings ```text
block load through the router's loader, and the topology-change ```text block runs on a
cluster of its own. A kind that finds no block fails, so a renamed fence is noticed.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from harness import Proc, shardd_proc, wait_serving
from shardkv.client import Client
from shardkv.v1 import kv_pb2, kv_pb2_grpc

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
BIN = Path(sys.executable).parent
# The fence kinds the README may use; test_readme_uses_only_checked_block_kinds keeps the
# list honest.
KINDS = {"sh", "python", "console", "toml", "text"}
METRICS_OFFSET = 1000  # scripts/local_cluster.py: metrics on each gRPC port + 1000


@dataclass(frozen=True)
class LocalCluster:
    var: Path
    port: int

    @property
    def router(self) -> str:
        return f"127.0.0.1:{self.port}"

    def node(self, index: int) -> str:
        return f"127.0.0.1:{self.port + index}"

    def metrics(self, index: int) -> str:
        return f"127.0.0.1:{self.port + METRICS_OFFSET + index}"

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
    """A base port with the next size-1 ports free too, and their metrics ports (+1000).

    The block lies below the kernel's ephemeral range, so that no outgoing connection of
    another process can take one of its ports between this check and the cluster's start.
    """
    ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(50):
        base = random.randrange(10_000, ephemeral_low - 1000 - size)
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


def _local_cluster(var: Path) -> Iterator[LocalCluster]:
    # Router, three nodes and a fourth port for the node the README adds (127.0.0.1:7104).
    cluster = LocalCluster(var, free_port_block(5))
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


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    yield from _local_cluster(tmp_path_factory.mktemp("var"))


@pytest.fixture
def own_local(tmp_path: Path) -> Iterator[LocalCluster]:
    """A cluster for one test that changes its topology, so the others never see it."""
    yield from _local_cluster(tmp_path / "var")


def all_blocks() -> list[tuple[str, str]]:
    """(kind, text) of every fenced block of the README."""
    return re.findall(r"^```(\w*)\n(.*?)^```", README.read_text(), flags=re.DOTALL | re.MULTILINE)


def readme_blocks(language: str) -> list[str]:
    blocks = [text for kind, text in all_blocks() if kind == language]
    assert blocks, f"README has no ```{language} block: a test of it would check nothing"
    return blocks


def text_blocks() -> tuple[str, str]:
    """The two ```text blocks: the topology-change commands and the settings."""
    blocks = readme_blocks("text")
    commands = [b for b in blocks if "shardctl" in b]
    settings = [b for b in blocks if b.lstrip().startswith("[")]
    assert len(commands) == 1 and len(settings) == 1 and len(blocks) == 2, blocks
    return commands[0], settings[0]


def for_cluster(text: str, cluster: LocalCluster) -> str:
    """The README text with its documented addresses pointing at the test's cluster."""
    for offset in range(4, -1, -1):
        text = text.replace(f"127.0.0.1:{7100 + offset}", cluster.node(offset))
        text = text.replace(f"127.0.0.1:{8100 + offset}", cluster.metrics(offset))
    return text


def _run_script(script: str, cluster: LocalCluster, timeout_s: float = 60) -> str:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "SHARDKV_ADDR": cluster.router}
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    assert result.returncode == 0, (
        f"README block failed:\n{script}\n{result.stdout}\n{result.stderr}"
    )
    return result.stdout


def test_readme_uses_only_checked_block_kinds() -> None:
    kinds = {kind for kind, _ in all_blocks()}
    assert kinds <= KINDS, f"README blocks no test checks: {sorted(kinds - KINDS)}"


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


@pytest.mark.timeout(180)
def test_readme_shell_blocks_run(local: LocalCluster) -> None:
    for block in readme_blocks("sh"):
        _run_script(for_cluster(block, local), local)


@pytest.mark.timeout(120)
def test_readme_console_blocks_show_what_they_print(local: LocalCluster) -> None:
    """`$ command` lines run, and each output line shown must come out (numbers may differ);
    lines without a prompt are `make` targets, checked to exist (make -n), not run."""
    with grpc.insecure_channel(local.router) as channel:  # a KV/Put (the SDK batches)
        request = kv_pb2.PutRequest(key=b"console:example", value=b"counted")
        kv_pb2_grpc.KVStub(channel).Put(request, timeout=30)
    prompts = 0
    for block in readme_blocks("console"):
        lines = block.splitlines()
        if not any(line.startswith("$ ") for line in lines):
            for line in lines:
                target = line.split("#", 1)[0].split()
                assert target[:1] == ["make"], f"not a make command: {line!r}"
                dry = local.make(target[1], *target[2:], "-n", check=False)
                assert dry.returncode == 0, f"{line!r}: {dry.stderr}"
            continue
        for command, shown in _prompts(lines):
            prompts += 1
            output = _run_script(for_cluster(command, local), local).splitlines()
            for expected in shown:
                pattern = _shape(expected)
                assert any(pattern.fullmatch(line) for line in output), (
                    f"README shows {expected!r} for `{command}`; it printed:\n" + "\n".join(output)
                )
    assert prompts, "no ```console block has a $ command"


def _prompts(lines: list[str]) -> list[tuple[str, list[str]]]:
    """(command, output lines shown after it) for each `$ ` line."""
    found: list[tuple[str, list[str]]] = []
    for line in lines:
        if line.startswith("$ "):
            found.append((line[2:], []))
        elif found and line.strip():
            found[-1][1].append(line)
    return found


def _shape(line: str) -> re.Pattern[str]:
    """line as a pattern in which each number may be any number."""
    parts = re.split(r"\d+(?:\.\d+)?(?:e[+-]?\d+)?", line)
    return re.compile(r"\d+(?:\.\d+)?(?:e[+-]?\d+)?".join(re.escape(p) for p in parts))


@pytest.mark.timeout(300)
def test_readme_topology_change_block_runs(own_local: LocalCluster) -> None:
    """`node add` (n4, a fresh shardd on the README's 127.0.0.1:7104), `node remove`,
    `moves` and `repair`, as the README shows them, on a cluster of their own."""
    commands, _ = text_blocks()
    with Client(own_local.router) as kv:
        kv.put_many({f"topology:{i}": b"moves" for i in range(200)})
    n4: Proc = shardd_proc(
        own_local.var / "extra", "n4", port=own_local.port + 4
    )  # the README's 127.0.0.1:7104
    (own_local.var / "extra").mkdir(exist_ok=True)
    n4.start()
    try:
        _run_script(for_cluster(commands, own_local), own_local, timeout_s=240)
        topology = tomllib.loads((own_local.var / "cluster.toml").read_text())
        assert own_local.node(4) in [n["address"] for n in topology["nodes"]], topology
        with Client(own_local.router) as kv:
            got = kv.get_many([f"topology:{i}" for i in range(200)])
        assert len(got) == 200, "keys went missing while n4 joined and n2 left"
    finally:
        n4.stop()
        wait_serving(own_local.router, timeout_s=30)


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
    """The cluster.toml example, with the [timeouts]/[repair]/[rebalance] settings the README
    shows later added to it, loads through the router's loader with exactly those values,
    and they are the defaults the README says they are."""
    from shardkv.router.membership.topology import (
        RebalanceConfig,
        RepairConfig,
        Timeouts,
        load_topology,
    )

    [example] = readme_blocks("toml")
    _, settings_block = text_blocks()
    settings = tomllib.loads(settings_block)
    path = tmp_path / "cluster.toml"
    path.write_text(_merge_tables(example, settings_block))
    topology = load_topology(path)
    assert topology.replication == 3 and len(topology.nodes) == 3
    assert set(settings) == {"timeouts", "repair", "rebalance"}, settings
    loaded = {
        "timeouts": topology.timeouts,
        "repair": topology.repair,
        "rebalance": topology.rebalance,
    }
    defaults = {"timeouts": Timeouts(), "repair": RepairConfig(), "rebalance": RebalanceConfig()}
    for table, values in settings.items():
        for name, value in values.items():
            assert getattr(loaded[table], name) == value, (table, name)
            assert getattr(defaults[table], name) == value, f"[{table}] {name}: not the default"
    shown = tomllib.loads(example)["timeouts"]
    assert all(getattr(topology.timeouts, k) == v for k, v in shown.items()), shown


def _merge_tables(base: str, extra: str) -> str:
    """base TOML with extra's tables merged in: keys of a table base has go under its
    header, other tables are appended."""
    out = base
    for header, body in re.findall(r"^(\[\w+\])\n(.*?)(?=^\[|\Z)", extra, re.DOTALL | re.MULTILINE):
        if re.search(rf"^{re.escape(header)}$", out, re.MULTILINE):
            out = re.sub(
                rf"^{re.escape(header)}$",
                f"{header}\n{body.rstrip()}",
                out,
                count=1,
                flags=re.MULTILINE,
            )
        else:
            out += f"\n{header}\n{body}"
    return out
