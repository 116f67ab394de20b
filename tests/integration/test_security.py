"""Security: mutual TLS between router and nodes, separate client and admin tokens on the
router, refusals logged without the secrets, loopback-only defaults.

(TLS and mutual TLS between clients and the router are covered by test_client_failover.py
and test_grpcurl_router.py.)
"""

from __future__ import annotations

import os
import re
import socket
import time
import tomllib
from pathlib import Path

import grpc
import pytest
from faults.certs import CertificateAuthority
from faults.cluster import start_faulty_cluster
from grpc_health.v1 import health_pb2, health_pb2_grpc
from harness import Proc, free_port, router_proc, shardd_proc, write_cluster_toml
from shardkv.client import Client, Unauthenticated
from shardkv.router.__main__ import _parser as router_parser
from shardkv.shardd.__main__ import parse_args as shardd_args
from shardkv.v1 import admin_pb2, admin_pb2_grpc, kv_pb2, kv_pb2_grpc

REPO = Path(__file__).resolve().parents[2]


def wait_serving_tls(address: str, credentials: grpc.ChannelCredentials) -> None:
    deadline = time.monotonic() + 20
    with grpc.secure_channel(address, credentials) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                return
            except grpc.RpcError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)


def node_refuses(address: str, credentials: grpc.ChannelCredentials | None) -> grpc.StatusCode:
    """The status a Replica-free KV call to a TLS node gets with these credentials."""
    channel = (
        grpc.insecure_channel(address)
        if credentials is None
        else grpc.secure_channel(address, credentials)
    )
    with channel:
        with pytest.raises(grpc.RpcError) as err:
            kv_pb2_grpc.KVStub(channel).Get(kv_pb2.GetRequest(key=b"k"), timeout=2)
    return err.value.code()  # type: ignore[no-any-return]


@pytest.mark.timeout(60)
def test_router_and_nodes_speak_mutual_tls(tmp_path: Path) -> None:
    ca = CertificateAuthority(tmp_path / "ca")
    stranger = CertificateAuthority(tmp_path / "other-ca", "someone else's CA")
    router_cert = ca.issue("router")
    nodes: list[Proc] = []
    routers: list[Proc] = []
    try:
        for i in range(3):
            issued = ca.issue(f"n{i + 1}")
            tls = ["--tls-cert", str(issued.cert), "--tls-key", str(issued.key)]
            nodes.append(
                shardd_proc(tmp_path, f"n{i + 1}", extra=[*tls, "--tls-client-ca", str(ca.cert)])
            )
        for node in nodes:
            node.start(wait=False)
        trusted = grpc.ssl_channel_credentials(
            ca.cert.read_bytes(), router_cert.key.read_bytes(), router_cert.cert.read_bytes()
        )
        for node in nodes:
            wait_serving_tls(node.address, trusted)
        config = write_cluster_toml(tmp_path / "cluster.toml", nodes)
        node_tls = [
            "--node-tls-ca",
            str(ca.cert),
            "--node-tls-cert",
            str(router_cert.cert),
            "--node-tls-key",
            str(router_cert.key),
        ]
        routers.append(router_proc(tmp_path, config, "r1", extra=node_tls).start())

        with Client(routers[0].address, timeout=5) as kv:
            version = kv.put(b"secret/key", b"over mutual TLS")
            record = kv.get_record(b"secret/key")
            assert record is not None and (record.value, record.version) == (
                b"over mutual TLS",
                version,
            )
            assert all(n.state == admin_pb2.UP for n in kv.health().nodes)

        # A node refuses plaintext, a client without a certificate, and a certificate from
        # another CA: the TLS handshake fails, the call never reaches the store.
        address = nodes[0].address
        assert node_refuses(address, None) == grpc.StatusCode.UNAVAILABLE
        no_cert = grpc.ssl_channel_credentials(ca.cert.read_bytes())
        assert node_refuses(address, no_cert) == grpc.StatusCode.UNAVAILABLE
        foreign = stranger.issue("intruder")
        wrong = grpc.ssl_channel_credentials(
            ca.cert.read_bytes(), foreign.key.read_bytes(), foreign.cert.read_bytes()
        )
        assert node_refuses(address, wrong) == grpc.StatusCode.UNAVAILABLE

        # A router that verifies nodes but shows no certificate sees every node DOWN.
        half = router_proc(tmp_path, config, "r2", extra=["--node-tls-ca", str(ca.cert)])
        routers.append(half.start())
        with grpc.insecure_channel(half.address) as channel:
            health = admin_pb2_grpc.AdminStub(channel).GetHealth(
                admin_pb2.GetHealthRequest(), timeout=5
            )
            assert health.nodes_up == 0, health
            with pytest.raises(grpc.RpcError) as err:
                kv_pb2_grpc.KVStub(channel).Put(kv_pb2.PutRequest(key=b"k", value=b"v"), timeout=5)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        for proc in [*routers, *nodes]:
            proc.stop()


@pytest.mark.timeout(60)
def test_client_and_admin_tokens_are_separate_and_never_logged(tmp_path: Path) -> None:
    client_token, admin_token = "client-tok-7c1f3a9e5d", "admin-tok-0b8e2d4f61"
    (tmp_path / "token").write_text(client_token + "\n")
    (tmp_path / "admin-token").write_text(admin_token + "\n")
    cluster = start_faulty_cluster(
        tmp_path,
        nodes=1,
        replication=1,
        read_quorum=1,
        write_quorum=1,
        router_extra=[
            "--token-file",
            str(tmp_path / "token"),
            "--admin-token-file",
            str(tmp_path / "admin-token"),
        ],
    )
    guesses = ["guess-" + client_token[::-1], admin_token[:-1]]
    try:
        address = cluster.router.address
        with grpc.insecure_channel(address) as channel:
            kv, admin = kv_pb2_grpc.KVStub(channel), admin_pb2_grpc.AdminStub(channel)
            put = kv_pb2.PutRequest(key=b"k", value=b"v")
            topology = admin_pb2.GetTopologyRequest()

            def status(call: object, request: object, token: str | None) -> grpc.StatusCode:
                metadata = [("authorization", f"Bearer {token}")] if token else None
                try:
                    call(request, metadata=metadata, timeout=5)  # type: ignore[operator]
                except grpc.RpcError as err:
                    return err.code()  # type: ignore[no-any-return]
                return grpc.StatusCode.OK

            ok, unauthenticated = grpc.StatusCode.OK, grpc.StatusCode.UNAUTHENTICATED
            assert status(kv.Put, put, None) == unauthenticated
            assert status(kv.Put, put, guesses[0]) == unauthenticated
            assert status(kv.Put, put, client_token) == ok
            assert status(kv.Put, put, admin_token) == unauthenticated  # tokens are not mixed
            assert status(admin.GetTopology, topology, None) == unauthenticated
            assert status(admin.GetTopology, topology, guesses[1]) == unauthenticated
            assert status(admin.GetTopology, topology, client_token) == (
                grpc.StatusCode.PERMISSION_DENIED
            )
            assert status(admin.GetTopology, topology, admin_token) == ok
            # Health stays open for load balancers.
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)

        # The SDK carries the token and names the refusal.
        with Client(address, bearer_token=client_token) as sdk:
            assert sdk.get(b"k") == b"v"
        with Client(address, bearer_token=guesses[0]) as sdk, pytest.raises(Unauthenticated):
            sdk.get(b"k")

        log = cluster.router.log()
        assert len(re.findall(r"refused /shardkv\.v1\.", log)) >= 6, log
        for secret in [client_token, admin_token, *guesses]:
            assert secret not in log, f"{secret!r} leaked into the router log"
    finally:
        cluster.stop()


# How code names "every interface": IPv4, IPv6 (gRPC's "[::]:port", a bare "::"), C names.
WILDCARDS = ("0.0.0.0", "[::]", '"::"', "'::'", "INADDR_ANY", "in6addr_any")
LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}


def source_folders() -> list[Path]:
    """Every folder of the installed package (pyproject's package-dir: protos/shardkv,
    common, serving, client, shardd, router), and scripts/ (make cluster)."""
    with (REPO / "pyproject.toml").open("rb") as file:
        package_dirs = tomllib.load(file)["tool"]["setuptools"]["package-dir"]
    return sorted({REPO / folder for folder in package_dirs.values()} | {REPO / "scripts"})


def wildcard_mentions(folders: list[Path]) -> list[str]:
    found = []
    for folder in folders:
        for source in folder.rglob("*.py"):
            text = source.read_text()
            found += [f"{source}: {w}" for w in WILDCARDS if w in text]
    return found


def listening(pid: int) -> list[str]:
    """host:port of every TCP socket process pid listens on (/proc/PID/net/tcp{,6} and the
    socket inodes among its open files)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    for table, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state != "0A" or inode not in inodes:  # 0A: LISTEN
                continue
            raw, port = local.split(":")
            packed = bytes.fromhex(raw)
            # /proc prints the address as 32-bit words in host (little-endian) order.
            words = b"".join(packed[i : i + 4][::-1] for i in range(0, len(packed), 4))
            found.append(f"{socket.inet_ntop(family, words)}:{int(port, 16)}")
    return found


@pytest.mark.timeout(60)
def test_servers_listen_on_loopback_unless_told_otherwise(tmp_path: Path) -> None:
    node_config, _ = shardd_args(["--id", "n1", "--data", "unused"])
    assert node_config.listen.startswith("127.0.0.1:")
    router_args = router_parser().parse_args(["--id", "r1", "--config", "unused.toml"])
    assert router_args.listen.startswith("127.0.0.1:")
    assert router_args.metrics_listen is None and node_config.observe.metrics_listen is None

    # No code path names every interface (IPv4 or IPv6), in any folder that ships.
    folders = source_folders()
    names = {folder.relative_to(REPO).as_posix() for folder in folders}
    assert {"protos/shardkv", "common", "serving", "client", "shardd", "router", "scripts"} <= names
    assert all(any(folder.rglob("*.py")) for folder in folders), folders
    assert wildcard_mentions(folders) == []

    # Running, a node and a router (metrics on) listen on loopback and nowhere else.
    node = shardd_proc(tmp_path, "n1", extra=["--metrics-listen", f"127.0.0.1:{free_port()}"])
    config = write_cluster_toml(
        tmp_path / "cluster.toml", [node], replication=1, read_quorum=1, write_quorum=1
    )
    router = router_proc(tmp_path, config, extra=["--metrics-listen", f"127.0.0.1:{free_port()}"])
    try:
        node.start()
        router.start()
        for proc in (node, router):
            sockets = listening(proc.pid)
            assert len(sockets) >= 2, (proc.name, sockets)  # gRPC and metrics
            hosts = {address.rsplit(":", 1)[0] for address in sockets}
            assert hosts <= LOOPBACK, (proc.name, sockets)
    finally:
        router.stop()
        node.stop()
