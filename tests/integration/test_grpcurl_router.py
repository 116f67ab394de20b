"""The router as operators reach it: the real grpcurl, and TLS with a bearer token."""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc
from harness import BIN, Cluster, router_proc, start_cluster
from shardkv.v1 import admin_pb2, admin_pb2_grpc, kv_pb2, kv_pb2_grpc

GRPCURL = BIN / "grpcurl"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    running = start_cluster(tmp_path_factory.mktemp("grpcurl"))
    try:
        yield running
    finally:
        running.stop()


def grpcurl(address: str, *args: str, data: object = None) -> str:
    argv = [str(GRPCURL), "-plaintext"]
    if data is not None:
        argv += ["-d", json.dumps(data)]
    result = subprocess.run(
        [*argv, address, *args], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


@pytest.mark.timeout(60)
def test_grpcurl_list_put_get_topology(cluster: Cluster) -> None:
    address = cluster.router.address
    services = grpcurl(address, "list").split()
    assert {"shardkv.v1.KV", "shardkv.v1.Admin", "grpc.health.v1.Health"} <= set(services)

    key, value = b"grpcurl/\x00key", b"\xffbinary value"
    put = json.loads(
        grpcurl(address, "shardkv.v1.KV/Put", data={"key": b64(key), "value": b64(value)})
    )
    got = json.loads(grpcurl(address, "shardkv.v1.KV/Get", data={"key": b64(key)}))
    assert got == {"found": True, "value": b64(value), "version": put["version"]}

    topology = json.loads(grpcurl(address, "shardkv.v1.Admin/GetTopology"))
    assert topology["replication"] == 3 and topology["router_id"] == "r1"
    assert [n["id"] for n in topology["nodes"]] == ["n1", "n2", "n3"]
    assert all(n["state"] == "UP" for n in topology["nodes"])
    assert sum(n["ring_share"] for n in topology["nodes"]) == pytest.approx(1.0)


def refused(address: str, method: str, data: object) -> str:
    """grpcurl's error output for a call the server must refuse."""
    argv = [str(GRPCURL), "-plaintext", "-d", json.dumps(data), address, method]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode != 0, f"{method} was not refused: {result.stdout}"
    return result.stderr


@pytest.mark.timeout(60)
def test_a_bad_item_of_a_batch_is_named_by_its_place(cluster: Cluster) -> None:
    address = cluster.router.address
    good = [{"key": b64(b"grpcurl/batch/%d" % i), "value": b64(b"v")} for i in range(2)]
    error = refused(address, "shardkv.v1.KV/BatchWrite", {"mutations": [*good, {"key": ""}]})
    assert "InvalidArgument" in error and "BatchWrite mutation 2: key must not be empty" in error
    keys = [g["key"] for g in good]
    error = refused(address, "shardkv.v1.KV/BatchGet", {"keys": [*keys, b64(b"k" * 2000)]})
    assert "BatchGet key 2: key of 2000 bytes exceeds the limit" in error, error
    # The whole batch was refused: nothing of it was written.
    got = json.loads(grpcurl(address, "shardkv.v1.KV/BatchGet", data={"keys": keys}))
    assert not any(r.get("found") for r in got["results"]), got


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _issue(
    subject: str, ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A certificate for subject signed by ca, or a self-signed CA when ca is None."""
    now = datetime.datetime.now(datetime.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(ca[0].subject if ca else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca is None, path_length=None), critical=True)
    )
    if ca is not None:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return builder.sign(ca[1] if ca else key, hashes.SHA256()), key


def make_certs(directory: Path) -> dict[str, Path]:
    """A test CA, and a server and a client certificate signed by it, as PEM files."""
    ca = _issue("shardkv test CA", None)
    files = {"ca.pem": _pem(ca[0])}
    for role in ("server", "client"):
        cert, key = _issue(f"shardkv test {role}", ca)
        files[f"{role}.pem"], files[f"{role}.key"] = _pem(cert), _key_pem(key)
    for name, data in files.items():
        (directory / name).write_bytes(data)
    return {name: directory / name for name in files}


@pytest.mark.timeout(60)
def test_tls_and_token(cluster: Cluster, tmp_path: Path) -> None:
    certs = make_certs(tmp_path)
    ca, cert, key = certs["ca.pem"], certs["server.pem"], certs["server.key"]
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token\n")
    secure = router_proc(
        tmp_path,
        cluster.config,
        "r-tls",
        extra=["--tls-cert", str(cert), "--tls-key", str(key), "--token-file", str(token_file)],
    )
    # Proc.start waits on a plaintext health check, which a TLS server never answers.
    secure.start(wait=False)
    try:
        credentials = grpc.ssl_channel_credentials(root_certificates=ca.read_bytes())
        with grpc.secure_channel(secure.address, credentials) as channel:
            grpc.channel_ready_future(channel).result(timeout=20)
            health = health_pb2_grpc.HealthStub(channel)
            reply = health.Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING  # no token needed
            kv = kv_pb2_grpc.KVStub(channel)
            admin = admin_pb2_grpc.AdminStub(channel)
            for metadata in ((), (("authorization", "Bearer wrong"),)):
                with pytest.raises(grpc.RpcError) as caught:
                    kv.Put(kv_pb2.PutRequest(key=b"k", value=b"v"), metadata=metadata, timeout=5)
                assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.RpcError) as caught:
                admin.GetTopology(admin_pb2.GetTopologyRequest(), timeout=5)
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
            good = (("authorization", "Bearer s3cret-token"),)
            version = kv.Put(kv_pb2.PutRequest(key=b"k", value=b"v"), metadata=good, timeout=5)
            got = kv.Get(kv_pb2.GetRequest(key=b"k"), metadata=good, timeout=5)
            assert (got.value, got.version) == (b"v", version.version)
        with grpc.insecure_channel(secure.address) as plain:
            with pytest.raises(grpc.RpcError):
                kv_pb2_grpc.KVStub(plain).Get(kv_pb2.GetRequest(key=b"k"), timeout=2)
    finally:
        secure.stop()
    log = secure.log()
    assert "refused /shardkv.v1.KV/Put from ipv4:127.0.0.1:" in log
    assert "s3cret-token" not in log and "Bearer wrong" not in log


@pytest.mark.timeout(60)
def test_mutual_tls_requires_a_client_certificate(cluster: Cluster, tmp_path: Path) -> None:
    certs = make_certs(tmp_path)
    mtls = router_proc(
        tmp_path,
        cluster.config,
        "r-mtls",
        extra=[
            "--tls-cert",
            str(certs["server.pem"]),
            "--tls-key",
            str(certs["server.key"]),
            "--tls-client-ca",
            str(certs["ca.pem"]),
        ],
    )
    mtls.start(wait=False)
    try:
        ca = certs["ca.pem"].read_bytes()
        with_cert = grpc.ssl_channel_credentials(
            root_certificates=ca,
            private_key=certs["client.key"].read_bytes(),
            certificate_chain=certs["client.pem"].read_bytes(),
        )
        with grpc.secure_channel(mtls.address, with_cert) as channel:
            grpc.channel_ready_future(channel).result(timeout=20)
            kv = kv_pb2_grpc.KVStub(channel)
            assert kv.Get(kv_pb2.GetRequest(key=b"absent"), timeout=5).found is False
        without = grpc.ssl_channel_credentials(root_certificates=ca)
        with grpc.secure_channel(mtls.address, without) as channel:
            with pytest.raises(grpc.RpcError) as caught:
                kv_pb2_grpc.KVStub(channel).Get(kv_pb2.GetRequest(key=b"k"), timeout=5)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        mtls.stop()
