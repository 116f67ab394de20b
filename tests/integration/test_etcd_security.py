"""A router reaching etcd through TLS with a client certificate, and as an etcd user
(issue 15 item 4), against real etcd 3.4 members: one started with --client-cert-auth,
one with auth enabled (etcdctl user add root, auth enable). The password comes from a
file and appears in no log and no command line; a wrong one is refused at start, at once,
naming the user; a token the member let expire is replaced by a new one."""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from etcd_harness import ETCD, ETCDCTL, etcd_members, etcdctl, start_etcd
from faults.certs import CertificateAuthority, Issued
from harness import Proc, failed, free_port, router_proc, shardd_proc, wait_serving
from harness import write_cluster_toml as write_toml
from shardkv.client import Client
from shardkv.common.hlc import writer_number
from shardkv.v1 import kv_pb2, kv_pb2_grpc

PREFIX = "/shardkv/secure"
PASSWORD = "s3cret-etcd-pw"


@pytest.fixture
def procs(request: pytest.FixtureRequest) -> Iterator[list[Proc]]:
    """Every process a test starts, stopped by PID at its end (logs printed on failure)."""
    started: list[Proc] = []
    try:
        yield started
    finally:
        if failed(request):
            print("\n".join(f"===== {p.name} =====\n{p.log()[-6000:]}" for p in started))
        for proc in reversed(started):
            proc.stop()


def nodes_config(base: Path, procs: list[Proc]) -> Path:
    nodes = [shardd_proc(base, f"n{i}") for i in (1, 2, 3)]
    procs.extend(nodes)
    for node in nodes:
        node.start(wait=False)
    for node in nodes:
        wait_serving(node.address)
    return write_toml(base / "cluster.toml", nodes)


def tls_etcd(base: Path, server: Issued, ca: Path) -> Proc:
    """One etcd member serving clients over TLS and requiring their certificates."""
    client, peer = free_port(), free_port()
    argv = [
        ETCD,
        "--name", "tls1",
        "--data-dir", str(base / "tls1.etcd"),
        "--listen-client-urls", f"https://127.0.0.1:{client}",
        "--advertise-client-urls", f"https://127.0.0.1:{client}",
        "--listen-peer-urls", f"http://127.0.0.1:{peer}",
        "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
        "--initial-cluster", f"tls1=http://127.0.0.1:{peer}",
        "--cert-file", str(server.cert),
        "--key-file", str(server.key),
        "--client-cert-auth",
        "--trusted-ca-file", str(ca),
    ]  # fmt: skip
    return Proc("tls1", argv, f"127.0.0.1:{client}", base / "tls1.log")


def tls_etcdctl(member: Proc, client: Issued, ca: Path, *args: str) -> str:
    done = subprocess.run(
        [ETCDCTL, f"--endpoints=https://{member.address}", f"--cacert={ca}",
         f"--cert={client.cert}", f"--key={client.key}", "--command-timeout=3s", *args],
        env={**os.environ, "ETCDCTL_API": "3"}, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


def put(router: Proc, key: bytes) -> None:
    with grpc.insecure_channel(router.address) as channel:
        kv_pb2_grpc.KVStub(channel).Put(kv_pb2.PutRequest(key=key, value=b"v"), timeout=10)


@pytest.mark.timeout(90)
def test_tls_with_a_client_certificate(tmp_path: Path, procs: list[Proc]) -> None:
    ca = CertificateAuthority(tmp_path / "ca")
    etcd = tls_etcd(tmp_path, ca.issue("etcd-server"), ca.cert)
    procs.append(etcd)
    etcd.start(wait=False)
    client = ca.issue("router")
    deadline = time.monotonic() + 30
    while True:
        try:
            tls_etcdctl(etcd, client, ca.cert, "endpoint", "health")
            break
        except AssertionError:
            assert time.monotonic() < deadline, etcd.log()[-3000:]
            time.sleep(0.2)
    config = nodes_config(tmp_path, procs)
    flags = ["--etcd-cacert", str(ca.cert), "--etcd-cert", str(client.cert)]
    flags += ["--etcd-key", str(client.key)]
    router = router_proc(
        tmp_path, config, extra=["--topology", f"etcd://{etcd.address}{PREFIX}", *flags]
    )
    procs.append(router)
    router.start()
    put(router, b"tls/1")
    stored = tls_etcdctl(etcd, client, ca.cert, "get", f"{PREFIX}/topology", "--print-value-only")
    assert "epoch = " in stored
    holder = f"{PREFIX}/writers/{writer_number('r1'):08x}"
    assert f"pid {router.pid}" in tls_etcdctl(etcd, client, ca.cert, "get", holder)


@pytest.mark.timeout(120)
def test_user_and_password(tmp_path: Path, procs: list[Proc]) -> None:
    etcd = etcd_members(tmp_path)
    etcd[0].argv.append("--auth-token-ttl=1")  # tokens unused for a second expire
    procs.extend(etcd)
    start_etcd(etcd)
    etcdctl(etcd, "user", "add", f"root:{PASSWORD}")
    etcdctl(etcd, "auth", "enable")
    config = nodes_config(tmp_path, procs)
    (tmp_path / "right").write_text(PASSWORD + "\n")
    (tmp_path / "wrong").write_text("not-the-password\n")

    def router(name: str, password_file: str | None) -> Proc:
        flags = ["--topology", f"etcd://{etcd[0].address}{PREFIX}", "--etcd-lease-s", "6"]
        if password_file:
            flags += ["--etcd-user", "root", "--etcd-password-file", str(tmp_path / password_file)]
        proc = router_proc(tmp_path, config, name, extra=flags)
        procs.append(proc)
        return proc

    def refused_at_once(proc: Proc, message: str) -> None:
        proc.start(wait=False)
        assert proc.popen is not None
        started = time.monotonic()
        assert proc.popen.wait(20) == 1
        assert time.monotonic() - started < 8, "bad credentials should be refused at once"
        assert message in proc.log(), proc.log()[-3000:]

    refused = router("r9", "wrong")
    refused_at_once(refused, "refused user 'root'")
    assert "check --etcd-user and --etcd-password-file" in refused.log()
    refused_at_once(router("r8", None), "user name is empty")

    good = router("r1", "right").start()
    put(good, b"auth/1")
    root = f"--user=root:{PASSWORD}"
    key = f"{PREFIX}/topology"
    text = etcdctl(etcd, root, "get", key, "--print-value-only")
    epoch = int(re.findall(r"^epoch = (\d+)$", text, re.MULTILINE)[0])

    # Tokens expire after a second unused. The restarted member ends the router's watch,
    # and the watch made again (its token long expired) is cancelled as unauthenticated:
    # only a new token lets the router follow a change made after.
    etcd[0].stop()
    etcd[0].start(wait=False)
    deadline = time.monotonic() + 30
    while True:
        try:
            etcdctl(etcd, root, "endpoint", "health")
            break
        except AssertionError:
            assert time.monotonic() < deadline
            time.sleep(0.2)
    time.sleep(2)
    etcdctl(etcd, root, "put", key, text.replace(f"epoch = {epoch}\n", f"epoch = {epoch + 1}\n"))
    deadline = time.monotonic() + 15
    with Client(good.address) as kv:
        while kv.topology().epoch != epoch + 1:
            assert time.monotonic() < deadline, "the router stopped following etcd"
            time.sleep(0.2)

    # Its clean stop revokes the lease (etcd checks that against the token, unlike a
    # keep-alive) with a new token, freeing the id at once.
    put(good, b"auth/2")
    holder = f"{PREFIX}/writers/{writer_number('r1'):08x}"
    assert f"pid {good.pid}" in etcdctl(etcd, root, "get", holder)
    assert good.stop() == 0
    assert etcdctl(etcd, root, "get", holder) == "", "the id was not released"
    for proc in (good, refused):
        assert PASSWORD not in proc.log()
        assert not any(PASSWORD in arg for arg in proc.argv)


@pytest.mark.timeout(90)
def test_a_password_sent_in_clear_text_is_warned_about(tmp_path: Path, procs: list[Proc]) -> None:
    """As the node token: a password on a plaintext link to an etcd that is not loopback
    is allowed, with a warning naming the endpoint; on loopback, no warning."""
    etcd = etcd_members(tmp_path)
    procs.extend(etcd)
    start_etcd(etcd)
    etcdctl(etcd, "user", "add", f"root:{PASSWORD}")
    etcdctl(etcd, "auth", "enable")
    config = nodes_config(tmp_path, procs)
    (tmp_path / "pw").write_text(PASSWORD + "\n")
    port = etcd[0].address.rpartition(":")[2]
    logs = {}
    # 0.0.0.0 reaches the member on 127.0.0.1 (Linux) but is not a loopback address.
    for name, host in (("r1", "0.0.0.0"), ("r2", "127.0.0.1")):
        flags = ["--topology", f"etcd://{host}:{port}{PREFIX}"]
        flags += ["--etcd-user", "root", "--etcd-password-file", str(tmp_path / "pw")]
        router = router_proc(tmp_path, config, name, extra=flags)
        procs.append(router)
        router.start()
        put(router, f"{name}/1".encode())
        assert router.stop() == 0
        logs[host] = router.log()
    # Before: no warning at all.
    warning = (
        "the etcd password of user 'root' crosses the network in clear text to"
        f" 0.0.0.0:{port}: use --etcd-cacert"
    )
    assert warning in logs["0.0.0.0"], logs["0.0.0.0"][-3000:]
    assert "clear text" not in logs["127.0.0.1"]
    assert all(PASSWORD not in log for log in logs.values())
