"""Real processes for integration tests: shardd nodes and routers on loopback ports.

Every process writes its log to a file in the test's temp dir; a test that fails prints
the logs (see conftest.py). Processes are stopped by their PID, even when a test fails.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from benchmarks.procs import free_port as free_port

BIN = Path(sys.executable).parent
STARTUP_TIMEOUT_S = 20.0
# A channel to a server still starting retries its connection at once, not after gRPC's
# default back-off of a second: every cluster a test starts is ready that much sooner.
QUICK_RECONNECT = [
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.min_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 100),
]


def wait_serving(address: str, timeout_s: float = STARTUP_TIMEOUT_S, service: str = "") -> None:
    """Blocks until the gRPC health service at address answers SERVING."""
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    with grpc.insecure_channel(address, options=QUICK_RECONNECT) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=1.0)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError as err:
                last = err
            time.sleep(0.05)
    raise TimeoutError(f"{address} not SERVING after {timeout_s}s: {last}")


@dataclass
class Proc:
    """One server process started from its console script; restartable with the same args."""

    name: str
    argv: list[str]
    address: str
    log_path: Path
    popen: subprocess.Popen[bytes] | None = None
    env: dict[str, str] = field(default_factory=dict)

    def start(self, *, wait: bool = True) -> Proc:
        log = self.log_path.open("ab")
        self.popen = subprocess.Popen(
            self.argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **self.env},
            start_new_session=True,
        )
        log.close()
        if wait:
            try:
                wait_serving(self.address)
            except TimeoutError:
                self.stop()
                raise TimeoutError(f"{self.name} did not start:\n{self.log()}") from None
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None, f"{self.name} was never started"
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            os.kill(self.pid, sig)

    def kill(self) -> None:
        """SIGKILL: the process gets no chance to clean up."""
        if self.alive():
            self.signal(signal.SIGKILL)
            assert self.popen is not None
            self.popen.wait(10)

    def stop(self, timeout_s: float = 15.0) -> int | None:
        """SIGTERM and wait; SIGKILL if it does not exit in time. Returns the exit code.
        A process a test left SIGSTOPped is continued, so it can act on the SIGTERM."""
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            self.popen.send_signal(signal.SIGCONT)
            try:
                self.popen.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)
        return self.popen.returncode

    def restart(self) -> Proc:
        self.stop()
        return self.start()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def shardd_proc(
    base: Path, node_id: str, *, port: int | None = None, extra: Sequence[str] = ()
) -> Proc:
    """A shardd for node_id with its data under base/node_id (not started yet)."""
    port = port or free_port()
    address = f"127.0.0.1:{port}"
    argv = [
        str(BIN / "shardd"),
        "--id",
        node_id,
        "--listen",
        address,
        "--data",
        str(base / node_id),
        *extra,
    ]
    return Proc(node_id, argv, address, base / f"{node_id}.log")


@contextmanager
def small_shardd(base: Path, *, max_value_bytes: int, max_batch_items: int) -> Iterator[Proc]:
    """A started shardd with small value and batch limits, so that oversized requests stay
    cheap; stopped when the block ends."""
    limits = ["--max-value-bytes", str(max_value_bytes), "--max-batch-items", str(max_batch_items)]
    proc = shardd_proc(base, "n1", extra=limits).start()
    try:
        yield proc
    finally:
        proc.stop()


def start_all(nodes: Sequence[Proc], routers: Sequence[Proc] = ()) -> None:
    """Starts the nodes together and waits until each one serves, then the routers one by
    one (a router checks every node as it starts, so the nodes come first)."""
    for node in nodes:
        node.start(wait=False)
    for node in nodes:
        wait_serving(node.address)
    for router in routers:
        router.start()


def write_cluster_toml(
    path: Path,
    nodes: Sequence[Proc],
    *,
    replication: int = 3,
    read_quorum: int = 2,
    write_quorum: int = 2,
    health_interval_ms: int = 200,
    weights: Sequence[int] | None = None,
    extra_toml: str = "",
) -> Path:
    """Writes the topology file a router reads (the format README documents); extra_toml
    (tables such as [repair] or [clock]) goes at its end."""
    lines = [
        "epoch = 1",
        f"replication = {replication}",
        f"read_quorum = {read_quorum}",
        f"write_quorum = {write_quorum}",
        "",
        "[timeouts]",
        "request_ms = 3000",
        "node_call_ms = 1000",
        f"health_interval_ms = {health_interval_ms}",
        "hint_interval_ms = 500",
        "",
    ]
    for index, node in enumerate(nodes):
        weight = weights[index] if weights else 1
        lines += [
            "[[nodes]]",
            f'id = "{node.name}"',
            f'address = "{node.address}"',
            f"weight = {weight}",
            "",
        ]
    path.write_text("\n".join(lines) + extra_toml)
    return path


def router_proc(
    base: Path,
    config: Path,
    router_id: str = "r1",
    *,
    port: int | None = None,
    extra: Sequence[str] = (),
) -> Proc:
    """A router reading config (not started yet)."""
    port = port or free_port()
    address = f"127.0.0.1:{port}"
    argv = [
        str(BIN / "shardkv-router"),
        "--id",
        router_id,
        "--config",
        str(config),
        "--listen",
        address,
        *extra,
    ]
    return Proc(router_id, argv, address, base / f"{router_id}.log")


@dataclass
class Cluster:
    """Nodes plus routers, all real processes; stop() ends every one of them."""

    base: Path
    nodes: list[Proc]
    routers: list[Proc]
    config: Path

    @property
    def router(self) -> Proc:
        return self.routers[0]

    def node(self, node_id: str) -> Proc:
        return next(n for n in self.nodes if n.name == node_id)

    def all(self) -> list[Proc]:
        return [*self.routers, *self.nodes]

    def stop(self) -> None:
        for proc in self.all():
            proc.stop()

    def logs(self) -> str:
        return "\n".join(f"===== {p.name} =====\n{p.log()[-20000:]}" for p in self.all())


def start_cluster(
    base: Path,
    *,
    nodes: int = 3,
    routers: int = 1,
    replication: int = 3,
    read_quorum: int = 2,
    write_quorum: int = 2,
    router_extra: Sequence[str] = (),
    node_extra: Sequence[str] = (),
    extra_toml: str = "",
) -> Cluster:
    """Starts nodes n1..nN and routers r1..rM and waits until every one is SERVING."""
    node_procs = [shardd_proc(base, f"n{i + 1}", extra=node_extra) for i in range(nodes)]
    config = write_cluster_toml(
        base / "cluster.toml",
        node_procs,
        replication=replication,
        read_quorum=read_quorum,
        write_quorum=write_quorum,
        extra_toml=extra_toml,
    )
    router_procs = [
        router_proc(base, config, f"r{i + 1}", extra=router_extra) for i in range(routers)
    ]
    cluster = Cluster(base, node_procs, router_procs, config)
    try:
        start_all(node_procs, router_procs)
    except BaseException:
        cluster.stop()
        raise
    return cluster


class Running(Protocol):
    def stop(self) -> None: ...
    def logs(self) -> str: ...


R = TypeVar("R", bound=Running)


def failed(request: pytest.FixtureRequest) -> bool:
    """Whether the test using a fixture failed (or never ran): conftest records reports."""
    report = getattr(request.node, "rep_call", None)
    return report is None or report.failed


@contextmanager
def stopped_after(running: R, request: pytest.FixtureRequest) -> Iterator[R]:
    """Yields running to a fixture's test, then stops every process by its PID and prints
    the logs when the test failed."""
    try:
        yield running
    finally:
        running.stop()
        if failed(request):
            print(running.logs())
