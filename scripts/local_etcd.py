"""The local cluster's etcd, for `make cluster TOPOLOGY=etcd`: one member with its data
under VAR/etcd on loopback ports just below the first router's (client PORT-10, peer
PORT-9), and what `make cluster-status` shows of it: the members, their health (a
linearizable read, which needs a leader), the topology epoch it holds under PREFIX and
the writer ids routers hold there.

etcd is Debian's etcd-server (3.4); scripts/install-system-deps.sh installs it.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import grpc
from aetcd import rpc  # type: ignore[import-untyped]

# Where the routers of the local cluster keep the topology (etcd://.../shardkv/local).
PREFIX = "/shardkv/local"
CLIENT_PORT_OFFSET = -10
PEER_PORT_OFFSET = -9
TIMEOUT_S = 2.0


def etcd_address(base_port: int) -> str:
    return f"127.0.0.1:{base_port + CLIENT_PORT_OFFSET}"


def topology_url(base_port: int) -> str:
    return f"etcd://{etcd_address(base_port)}{PREFIX}"


def etcd_argv(var: Path, base_port: int) -> tuple[str, ...]:
    """The etcd command line of the local cluster's single member."""
    etcd = shutil.which("etcd") or "/usr/bin/etcd"
    client = f"http://{etcd_address(base_port)}"
    peer = f"http://127.0.0.1:{base_port + PEER_PORT_OFFSET}"
    return (
        etcd,
        "--name", "local",
        "--data-dir", str(var / "etcd"),
        "--listen-client-urls", client,
        "--advertise-client-urls", client,
        "--listen-peer-urls", peer,
        "--initial-advertise-peer-urls", peer,
        "--initial-cluster", f"local={peer}",
        "--initial-cluster-token", f"shardkv-local-{base_port}",
    )  # fmt: skip


def etcd_status(address: str) -> list[str]:
    """Lines describing the etcd at address: members, health, the topology it holds."""
    with grpc.insecure_channel(address) as channel:
        try:
            members = rpc.ClusterStub(channel).MemberList(
                rpc.MemberListRequest(), timeout=TIMEOUT_S
            )
            state = rpc.MaintenanceStub(channel).Status(rpc.StatusRequest(), timeout=TIMEOUT_S)
            kv = rpc.KVStub(channel)
            topology = kv.Range(rpc.RangeRequest(key=f"{PREFIX}/topology".encode()), timeout=2)
            writers = kv.Range(
                rpc.RangeRequest(
                    key=f"{PREFIX}/writers/".encode(), range_end=f"{PREFIX}/writers0".encode()
                ),
                timeout=TIMEOUT_S,
            )
        except grpc.RpcError as err:
            return [f"  etcd at {address} is not healthy: {err.code().name}: {err.details()}"]
    lines = [f"  healthy (a quorum read answered); etcd {state.version}, revision"
             f" {topology.header.revision}, db {state.dbSize} bytes"]  # fmt: skip
    for member in members.members:
        role = "leader" if member.ID == state.leader else "follower"
        lines.append(f"  member {member.name} {','.join(member.clientURLs)} {role}")
    if not topology.kvs:
        lines.append(f"  topology: none under {PREFIX} yet (the first router seeds it)")
    else:
        text = topology.kvs[0].value.decode("utf-8", "replace")
        epoch = re.search(r"^epoch = (\d+)$", text, re.MULTILINE)
        nodes = text.count("[[nodes]]")
        move = " (a move in progress)" if "\n[move]\n" in text else ""
        lines.append(
            f"  topology: epoch {epoch.group(1) if epoch else '?'}, {nodes} nodes{move}"
            f" under {PREFIX}/topology"
        )
    for held in writers.kvs:
        lines.append(f"  writer id {held.value.decode('utf-8', 'replace')} (lease {held.lease:x})")
    return lines
