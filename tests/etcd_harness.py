"""Real etcd members for tests: data in the test's temp dir, every URL on loopback ports
the test picked, stopped by PID like every other process (harness.Proc).

etcd comes from Debian's etcd-server (3.4.23; `make test` installs it). etcdctl, from the
same package, reads and compacts what the routers stored, as an operator would.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import grpc
from aetcd.rpc import rpc_pb2, rpc_pb2_grpc  # type: ignore[import-untyped]
from harness import Proc, free_port

ETCD = shutil.which("etcd") or "/usr/bin/etcd"
ETCDCTL = shutil.which("etcdctl") or "/usr/bin/etcdctl"
START_TIMEOUT_S = 30.0


def etcd_members(base: Path, count: int = 1) -> list[Proc]:
    """count members of one new etcd cluster (not started yet), e1..eN."""
    assert os.access(ETCD, os.X_OK), "etcd is not installed: run make system-deps"
    peers = [(f"e{i + 1}", free_port(), free_port()) for i in range(count)]
    initial = ",".join(f"{name}=http://127.0.0.1:{peer}" for name, _, peer in peers)
    token = f"test-{os.getpid()}-{peers[0][2]}"  # one per cluster
    members = []
    for name, client, peer in peers:
        argv = [
            ETCD,
            "--name", name,
            "--data-dir", str(base / f"{name}.etcd"),
            "--listen-client-urls", f"http://127.0.0.1:{client}",
            "--advertise-client-urls", f"http://127.0.0.1:{client}",
            "--listen-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-cluster", initial,
            "--initial-cluster-token", token,
            "--initial-cluster-state", "new",
        ]  # fmt: skip
        members.append(Proc(name, argv, f"127.0.0.1:{client}", base / f"{name}.log"))
    return members


def start_etcd(members: list[Proc]) -> None:
    """Starts members together (a member waits for its peers) and waits until each answers
    a linearizable read, which needs a leader."""
    for member in members:
        member.start(wait=False)
    for member in members:
        wait_etcd(member)


def wait_etcd(member: Proc, timeout_s: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    with grpc.insecure_channel(member.address) as channel:
        stub = rpc_pb2_grpc.KVStub(channel)
        while time.monotonic() < deadline:
            try:
                stub.Range(rpc_pb2.RangeRequest(key=b"/probe"), timeout=1.0)
                return
            except grpc.RpcError as err:
                last = err
                time.sleep(0.1)
    raise TimeoutError(f"{member.name} not answering after {timeout_s}s: {last}\n{member.log()}")


def etcdctl(members: list[Proc], *args: str) -> str:
    """Runs etcdctl (API v3) against members; returns its output, raises on failure."""
    endpoints = ",".join(m.address for m in members)
    done = subprocess.run(
        [ETCDCTL, f"--endpoints={endpoints}", "--command-timeout=5s", *args],
        env={**os.environ, "ETCDCTL_API": "3"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, f"etcdctl {' '.join(args)}: {done.stderr}"
    return done.stdout


def current_revision(members: list[Proc]) -> int:
    """etcd's current revision (the header of any read)."""
    with grpc.insecure_channel(members[0].address) as channel:
        reply = rpc_pb2_grpc.KVStub(channel).Range(rpc_pb2.RangeRequest(key=b"/"), timeout=5)
    return int(reply.header.revision)
