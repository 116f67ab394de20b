"""Server processes the benchmark starts itself, and the guarantee that it stops them.

Every server runs in its own session (so a Ctrl-C in the terminal reaches only the
benchmark, which then stops them in order) with its data and log under a temp dir, on
ports the OS handed out. A Fleet stops every process it started by PID when its `with`
block ends, however it ends.
"""

from __future__ import annotations

import functools
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

log = logging.getLogger(__name__)

BIN = Path(sys.executable).parent
STARTUP_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0


class ServerError(RuntimeError):
    """A server did not start or died; the message carries the tail of its log."""


_HANDED_OUT: set[int] = set()
# The kernel's ephemeral ports (bind to port 0, outgoing connections) start here.
_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
# How many ports below the ephemeral range free_port hands out.
_PORTS_BELOW = 12_000


def free_port() -> int:
    """A loopback port nothing listens on right now and this process never handed out
    before, from just below the kernel's ephemeral range. Ports are handed out before the
    servers bind them (60 nodes get 120 before any binds); an ephemeral port could be
    taken meanwhile by any socket bound to port 0, as every node's exchange listener is
    (a full run's 60-node cell failed with a node's metrics port "already in use", once
    when ports came from the OS's bind to port 0, and again when nodes began binding
    their exchange port to port 0)."""
    first_ephemeral = int(_EPHEMERAL_RANGE.read_text().split()[0])
    low = max(1024, first_ephemeral - _PORTS_BELOW)
    while True:
        port = random.randrange(low, first_ephemeral)
        if port in _HANDED_OUT:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port


@dataclass
class Server:
    """One server process: how to start it, where it answers gRPC, where it logs."""

    name: str
    argv: list[str]
    address: str
    log_path: Path
    # Its Prometheus endpoint (http://host:port/metrics), when it serves one.
    metrics_url: str | None = None
    popen: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        if self.popen is None:
            raise ServerError(f"{self.name} was never started")
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def spawn(self) -> None:
        with self.log_path.open("ab") as log_file:
            self.popen = subprocess.Popen(
                self.argv,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def wait_serving(self, timeout_s: float = STARTUP_TIMEOUT_S) -> None:
        """Blocks until grpc.health.v1 at address answers SERVING for service ""."""
        deadline = time.monotonic() + timeout_s
        last: Exception | None = None
        with grpc.insecure_channel(self.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                if not self.alive():
                    raise ServerError(f"{self.name} exited at start:\n{self.log_tail()}")
                try:
                    reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError as err:
                    last = err
                time.sleep(0.05)
        raise ServerError(
            f"{self.name} not SERVING at {self.address} after {timeout_s}s ({last}):\n"
            f"{self.log_tail()}"
        )

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM, then SIGKILL if it has not exited in time."""
        if self.popen is None or self.popen.poll() is not None:
            return
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout_s)
        except subprocess.TimeoutExpired:
            log.warning(
                "%s (pid %d) ignored SIGTERM for %.0fs; killing", self.name, self.pid, timeout_s
            )
            self.popen.kill()
            self.popen.wait(10)

    def log_tail(self, chars: int = 4000) -> str:
        if not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")[-chars:]


class Fleet:
    """The servers of one system under test; leaving the `with` block stops them all."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.servers: list[Server] = []

    def __enter__(self) -> Fleet:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def add(self, server: Server) -> Server:
        self.servers.append(server)
        return server

    def start(self, servers: Sequence[Server]) -> None:
        """Spawns all of them at once (so peers find each other), then waits for each."""
        for server in servers:
            server.spawn()
        for server in servers:
            server.wait_serving()

    def pids(self) -> dict[str, int]:
        return {s.name: s.pid for s in self.servers if s.alive()}

    def metrics_urls(self) -> dict[str, str]:
        return {s.name: s.metrics_url for s in self.servers if s.metrics_url and s.alive()}

    def dead(self) -> list[str]:
        return [s.name for s in self.servers if s.popen is not None and not s.alive()]

    def stop(self) -> None:
        """Stops in reverse start order (routers before the nodes behind them)."""
        for server in reversed(self.servers):
            try:
                server.stop()
            except Exception:
                log.exception(
                    "stopping %s (pid %s) failed", server.name, server.popen and server.popen.pid
                )


@functools.cache
def shardd_serves_metrics() -> bool:
    """Whether this shardd has --metrics-listen (the benchmark then reads commit figures)."""
    try:
        out = subprocess.run(
            [str(BIN / "shardd"), "--help"], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return "--metrics-listen" in out.stdout


def shardd_server(base: Path, node_id: str) -> Server:
    """A durable shardd (fsync on commit, the default) with its data under base/node_id."""
    address = f"127.0.0.1:{free_port()}"
    argv = [
        str(BIN / "shardd"),
        "--id",
        node_id,
        "--listen",
        address,
        "--data",
        str(base / node_id),
    ]
    metrics_url = None
    if shardd_serves_metrics():
        metrics = f"127.0.0.1:{free_port()}"
        argv += ["--metrics-listen", metrics]
        metrics_url = f"http://{metrics}/metrics"
    return Server(node_id, argv, address, base / f"{node_id}.log", metrics_url)


def write_cluster_toml(
    path: Path,
    nodes: Sequence[Server],
    *,
    replication: int,
    read_quorum: int,
    write_quorum: int,
) -> Path:
    """The router's topology file; timeouts are left at the router's defaults."""
    lines = [
        "epoch = 1",
        f"replication = {replication}",
        f"read_quorum = {read_quorum}",
        f"write_quorum = {write_quorum}",
        "",
    ]
    for node in nodes:
        lines += [
            "[[nodes]]",
            f'id = "{node.name}"',
            f'address = "{node.address}"',
            "weight = 1",
            "",
        ]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def router_server(base: Path, config: Path, router_id: str = "r1") -> Server:
    address = f"127.0.0.1:{free_port()}"
    argv = [
        str(BIN / "shardkv-router"),
        "--id",
        router_id,
        "--config",
        str(config),
        "--listen",
        address,
    ]
    return Server(router_id, argv, address, base / f"{router_id}.log")


def start_shardkv(
    fleet: Fleet,
    *,
    nodes: int = 3,
    replication: int = 3,
    read_quorum: int = 2,
    write_quorum: int = 2,
) -> Server:
    """Starts nodes n1..nK and router r1 in fleet; returns the router."""
    node_servers = [fleet.add(shardd_server(fleet.base, f"n{i + 1}")) for i in range(nodes)]
    fleet.start(node_servers)
    config = write_cluster_toml(
        fleet.base / "cluster.toml",
        node_servers,
        replication=replication,
        read_quorum=read_quorum,
        write_quorum=write_quorum,
    )
    router = fleet.add(router_server(fleet.base, config))
    fleet.start([router])
    return router


def start_shardd(fleet: Fleet) -> Server:
    """Starts one lone shardd in fleet; returns it."""
    node = fleet.add(shardd_server(fleet.base, "n1"))
    fleet.start([node])
    return node


def etcd_binary() -> str | None:
    """Path of the etcd server (Debian's etcd-server package), or None when missing."""
    return shutil.which("etcd") or (
        "/usr/bin/etcd" if os.access("/usr/bin/etcd", os.X_OK) else None
    )


def etcd_version(binary: str) -> str:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10)
    first = out.stdout.splitlines()[0] if out.stdout else "unknown"
    return first.removeprefix("etcd Version:").strip()


def start_etcd(fleet: Fleet, binary: str, *, members: int) -> list[Server]:
    """Starts an etcd cluster of `members` on loopback with default settings."""
    peers = [(f"e{i + 1}", free_port(), free_port()) for i in range(members)]
    initial = ",".join(f"{name}=http://127.0.0.1:{peer}" for name, _, peer in peers)
    servers = []
    for name, client, peer in peers:
        argv = [
            binary,
            "--name",
            name,
            "--data-dir",
            str(fleet.base / name),
            "--listen-client-urls",
            f"http://127.0.0.1:{client}",
            "--advertise-client-urls",
            f"http://127.0.0.1:{client}",
            "--listen-peer-urls",
            f"http://127.0.0.1:{peer}",
            "--initial-advertise-peer-urls",
            f"http://127.0.0.1:{peer}",
            "--initial-cluster",
            initial,
            "--initial-cluster-token",
            f"bench-{os.getpid()}",
            "--initial-cluster-state",
            "new",
        ]
        servers.append(
            fleet.add(Server(name, argv, f"127.0.0.1:{client}", fleet.base / f"{name}.log"))
        )
    fleet.start(servers)
    return servers
