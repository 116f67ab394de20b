"""Runs a local shardkv cluster in the background for `make cluster` and friends.

Everything lives under one directory (var/ by default): the topology (cluster.toml), one
data directory, log file and pid file per process. `start` launches only what is not
running, so a node that was killed comes back with its data; `stop` sends SIGTERM by PID
and waits; `clean` stops and removes the directory.

With `--topology etcd` the routers (`--routers`, default 1: r1 on the base port, r2 one
below, ...) share one topology in a local etcd (scripts/local_etcd.py), seeded from
cluster.toml by the first router; the choice is kept in settings.json, so later commands
need not repeat it. etcd starts first and stops last.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from local_etcd import etcd_address, etcd_argv, etcd_status, topology_url
from shardkv.v1 import admin_pb2, admin_pb2_grpc

BIN = Path(sys.executable).parent
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 20.0
# Every process serves Prometheus metrics on its gRPC port + this (router 7100 -> 8100).
METRICS_PORT_OFFSET = 1000


def metrics_address(address: str) -> str:
    host, _, port = address.rpartition(":")
    return f"{host}:{int(port) + METRICS_PORT_OFFSET}"


@dataclass(frozen=True)
class Settings:
    """How the cluster in a VAR dir runs: where its topology lives, how many routers."""

    topology: str = "file"
    routers: int = 1

    @classmethod
    def load(cls, var: Path) -> Settings:
        path = var / "settings.json"
        return cls(**json.loads(path.read_text())) if path.exists() else cls()

    def save(self, var: Path) -> None:
        (var / "settings.json").write_text(json.dumps(self.__dict__) + "\n")


@dataclass(frozen=True)
class Member:
    """One process of the local cluster: a node, a router or etcd."""

    name: str
    address: str
    argv: tuple[str, ...]

    def pid_file(self, var: Path) -> Path:
        return var / "run" / f"{self.name}.pid"

    def log_file(self, var: Path) -> Path:
        return var / "log" / f"{self.name}.log"


def write_config(path: Path, *, nodes: int, base_port: int, n: int, r: int, w: int) -> None:
    lines = [
        "# Topology of the local cluster, written by `make cluster`.",
        "# N = replicas per key, R / W = read / write quorums (R + W > N: read your writes).",
        "epoch = 1",
        "# Names the cluster: its nodes' data directories are claimed under it.",
        f'cluster_id = "local-{secrets.token_hex(4)}"',
        f"replication = {n}",
        f"read_quorum = {r}",
        f"write_quorum = {w}",
        "",
        "[timeouts]",
        "request_ms = 5000",
        "node_call_ms = 2000",
        "health_interval_ms = 500",
        "hint_interval_ms = 1000",
    ]
    for i in range(1, nodes + 1):
        lines += [
            "",
            "[[nodes]]",
            f'id = "n{i}"',
            f'address = "127.0.0.1:{base_port + i}"',
            "weight = 1",
        ]
    path.write_text("\n".join(lines) + "\n")


def router_member(index: int, config: Path, base_port: int, settings: Settings) -> Member:
    """Router r<index>: r1 ("router") on base_port, r2 ("router2") one below, and so on."""
    address = f"127.0.0.1:{base_port - index + 1}"
    argv = [
        str(BIN / "shardkv-router"),
        "--id", f"r{index}",
        "--config", str(config),
        "--listen", address,
        "--metrics-listen", metrics_address(address),
    ]  # fmt: skip
    if settings.topology == "etcd":
        argv += ["--topology", topology_url(base_port)]
    return Member("router" if index == 1 else f"router{index}", address, tuple(argv))


def members(var: Path, config: Path, base_port: int, settings: Settings) -> list[Member]:
    """etcd (when the topology is there), the routers, then every node of the topology
    file."""
    topology = tomllib.loads(config.read_text())
    routers = [
        router_member(i, config, base_port, settings) for i in range(1, settings.routers + 1)
    ]
    etcd = Member("etcd", etcd_address(base_port), etcd_argv(var, base_port))
    nodes = [
        Member(
            node["id"],
            node["address"],
            (
                str(BIN / "shardd"),
                "--id",
                node["id"],
                "--listen",
                node["address"],
                "--data",
                str(var / "data" / node["id"]),
                "--metrics-listen",
                metrics_address(node["address"]),
            ),
        )
        for node in topology["nodes"]
    ]
    return [*([etcd] if settings.topology == "etcd" else []), *routers, *nodes]


def running_pid(member: Member, var: Path) -> int | None:
    """The member's PID when its pid file names a live process of this cluster."""
    try:
        pid = int(member.pid_file(var).read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        # Just after exec the command line reads empty for a moment (so it does for a
        # zombie, whose state is Z).
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
        starting = cmdline == [b""] and state != "Z"
    except (FileNotFoundError, ValueError, ProcessLookupError, IndexError):
        return None
    address = member.address.encode()
    ours = any(arg == address or arg.endswith(b"//" + address) for arg in cmdline)  # etcd: URL
    return pid if starting or ours else None


def serving(address: str) -> bool:
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=1.0
            )
        except grpc.RpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def launch(member: Member, var: Path) -> int:
    member.log_file(var).parent.mkdir(parents=True, exist_ok=True)
    member.pid_file(var).parent.mkdir(parents=True, exist_ok=True)
    with member.log_file(var).open("ab") as log:
        proc = subprocess.Popen(
            member.argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    member.pid_file(var).write_text(f"{proc.pid}\n")
    return proc.pid


def wait_all_serving(cluster: list[Member], var: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    pending = list(cluster)
    while pending and time.monotonic() < deadline:
        for member in list(pending):
            if running_pid(member, var) is None:
                tail = member.log_file(var).read_text(errors="replace")[-2000:]
                sys.exit(f"{member.name} exited during start-up; its log ends:\n{tail}")
            if serving(member.address):
                pending.remove(member)
        time.sleep(0.1)
    if pending:
        names = ", ".join(m.name for m in pending)
        sys.exit(f"not SERVING after {START_TIMEOUT_S:.0f}s: {names}; see {var / 'log'}")


def check_matches(config: Path, settings: Settings, args: argparse.Namespace) -> None:
    """Refuses settings that differ from an existing cluster's: its data was placed by them."""
    topology = tomllib.loads(config.read_text())
    existing = {
        "NODES": len(topology["nodes"]),
        "N": topology["replication"],
        "R": topology["read_quorum"],
        "W": topology["write_quorum"],
        "TOPOLOGY": settings.topology,
        "ROUTERS": settings.routers,
    }
    asked = {
        "NODES": args.nodes,
        "N": args.n,
        "R": args.r,
        "W": args.w,
        "TOPOLOGY": args.topology,
        "ROUTERS": args.routers,
    }
    differ = [
        f"{k}={asked[k]} (cluster has {v})"
        for k, v in existing.items()
        if asked[k] is not None and asked[k] != v
    ]
    if differ:
        sys.exit(
            f"{config} already describes a cluster with other settings: {', '.join(differ)}."
            f" Edit {config} and restart, or `make cluster-clean` to start afresh (drops data)."
        )


def wait_router_sees_all_up(address: str) -> None:
    """Waits until the router's own health checks have found every node up."""
    deadline = time.monotonic() + START_TIMEOUT_S
    reply = None
    with grpc.insecure_channel(address) as channel:
        admin = admin_pb2_grpc.AdminStub(channel)
        while time.monotonic() < deadline:
            try:
                reply = admin.GetHealth(admin_pb2.GetHealthRequest(), timeout=1.0)
            except grpc.RpcError:
                reply = None
            if reply is not None and reply.healthy:
                return
            time.sleep(0.1)
    down = [n.id for n in reply.nodes if n.state != admin_pb2.UP] if reply else ["?"]
    sys.exit(f"the router at {address} still sees nodes down after {START_TIMEOUT_S:.0f}s: {down}")


def start(args: argparse.Namespace) -> None:
    var: Path = args.var
    config = var / "cluster.toml"
    var.mkdir(parents=True, exist_ok=True)
    if config.exists():
        settings = Settings.load(var)
        check_matches(config, settings, args)
    else:
        settings = Settings(args.topology or "file", args.routers or 1)
        if settings.topology == "etcd" and not Path(etcd_argv(var, args.base_port)[0]).exists():
            sys.exit("etcd is not installed: run scripts/install-system-deps.sh etcd (make does)")
        settings.save(var)
        nodes = args.nodes or 3
        n = args.n or min(3, nodes)
        quorum = n // 2 + 1
        write_config(
            config,
            nodes=nodes,
            base_port=args.base_port,
            n=n,
            r=args.r or quorum,
            w=args.w or quorum,
        )
    cluster = members(var, config, args.base_port, settings)
    etcd = [m for m in cluster if m.name == "etcd"]
    routers = [m for m in cluster if m.name.startswith("router")]
    nodes = [m for m in cluster if m not in etcd and m not in routers]
    # etcd and nodes first, so that the routers find them serving; one router at a time,
    # so that the first seeds etcd's topology and the others read it.
    for group in (etcd, nodes, *([r] for r in routers)):
        for member in group:
            if running_pid(member, var) is None:
                pid = launch(member, var)
                print(f"started {member.name} pid={pid}")
        wait_all_serving(group, var)
    for router in routers:
        wait_router_sees_all_up(router.address)
        print(
            f"{router.name:7} {router.address:22} metrics http://{metrics_address(router.address)}/metrics"
        )
    for node in nodes:
        print(
            f"node    {node.name:<4} {node.address:17}"
            f" metrics http://{metrics_address(node.address)}/metrics"
        )
    for member in etcd:
        print(f"etcd    {member.address:22} topology {topology_url(args.base_port)}")
    where = f"{config} (seeds etcd)" if etcd else str(config)
    print(f"topology: {where}; logs: {var / 'log'}")
    print(
        f"try:    .venv/bin/shardctl --addr {routers[0].address} put hello world "
        f"&& .venv/bin/shardctl --addr {routers[0].address} get hello"
    )
    print(f"status: .venv/bin/shardctl --addr {routers[0].address} status --watch")


def status(args: argparse.Namespace) -> None:
    var: Path = args.var
    config = var / "cluster.toml"
    if not config.exists():
        print(f"no cluster in {var} (run make cluster)")
        return
    for member in members(var, config, args.base_port, Settings.load(var)):
        pid = running_pid(member, var)
        state = "SERVING" if pid and serving(member.address) else ("running" if pid else "stopped")
        print(f"{member.name:8} {member.address:22} pid={pid or '-':<8} {state}")
        if member.name == "etcd" and pid:
            print("\n".join(etcd_status(member.address)))


def stop(args: argparse.Namespace) -> None:
    var: Path = args.var
    config = var / "cluster.toml"
    if not config.exists():
        return
    cluster = members(var, config, args.base_port, Settings.load(var))
    # etcd last: routers release their writer ids in it when they stop.
    etcd = [m for m in cluster if m.name == "etcd"]
    for group in ([m for m in cluster if m not in etcd], etcd):
        stop_group(group, var)
    for member in cluster:
        member.pid_file(var).unlink(missing_ok=True)


def stop_group(group: list[Member], var: Path) -> None:
    """SIGTERM to each running member by PID, then waits (SIGKILL after STOP_TIMEOUT_S)."""
    pids = {m.name: pid for m in group if (pid := running_pid(m, var)) is not None}
    for pid in pids.values():
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for name, pid in pids.items():
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        if Path(f"/proc/{pid}").exists():
            print(f"{name} pid={pid} did not stop in {STOP_TIMEOUT_S:.0f}s; sending SIGKILL")
            os.kill(pid, signal.SIGKILL)
        print(f"stopped {name} pid={pid}")


def clean(args: argparse.Namespace) -> None:
    stop(args)
    shutil.rmtree(args.var, ignore_errors=True)
    print(f"removed {args.var}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("command", choices=["start", "status", "stop", "clean"])
    parser.add_argument("--var", type=Path, default=Path("var"))
    parser.add_argument("--base-port", type=int, default=7100, help="router port; nodes follow")
    parser.add_argument("--nodes", type=int, help="number of nodes (default 3)")
    parser.add_argument("--n", type=int, help="replication factor N (default min(3, nodes))")
    parser.add_argument("--r", type=int, help="read quorum R (default N/2+1)")
    parser.add_argument("--w", type=int, help="write quorum W (default N/2+1)")
    parser.add_argument(
        "--topology", choices=["file", "etcd"], help="where routers keep the topology (file)"
    )
    parser.add_argument("--routers", type=int, choices=range(1, 9), help="routers (default 1)")
    args = parser.parse_args()
    args.var = args.var.resolve()
    {"start": start, "status": status, "stop": stop, "clean": clean}[args.command](args)


if __name__ == "__main__":
    main()
