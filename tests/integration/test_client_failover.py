"""The SDK against real routers: fail-over when one dies, bounded retries, bearer tokens,
TLS and mutual TLS (with a CA made in the test by the cryptography package)."""

from __future__ import annotations

import asyncio
import collections
import datetime
import ipaddress
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc
from harness import STARTUP_TIMEOUT_S, Cluster, free_port, router_proc, start_cluster
from shardkv.client import (
    AsyncClient,
    Client,
    Consistency,
    RetryPolicy,
    TLSConfig,
    Unauthenticated,
    Unavailable,
)
from shardkv.client.transport import Targets
from test_client_coalescing import SyncCounter
from test_shardctl import run


@pytest.fixture
def running(request: pytest.FixtureRequest) -> Iterator[list[Cluster]]:
    """Clusters a test starts; stopped afterwards, their logs printed when it failed."""
    clusters: list[Cluster] = []
    yield clusters
    failed = getattr(request.node, "rep_call", None) is None or request.node.rep_call.failed
    for cluster in clusters:
        cluster.stop()
        if failed:
            print(cluster.logs())


def test_round_robin_and_backoff_are_pure_and_bounded() -> None:
    targets = Targets(["a:1", "b:2", "c:3"])
    assert [targets.pick() for _ in range(6)] == ["a:1", "b:2", "c:3"] * 2
    targets.failed("b:2")
    assert [targets.pick() for _ in range(4)] == ["a:1", "c:3", "c:3", "a:1"]
    assert targets.pick(tried=["a:1", "c:3"]) == "b:2", "a failed router beats none"
    targets.succeeded("b:2")
    policy = RetryPolicy(max_attempts=5, initial_backoff=0.1, max_backoff=0.3, jitter=False)
    assert [policy.backoff(n) for n in range(1, 5)] == pytest.approx([0.1, 0.2, 0.3, 0.3])
    jittered = RetryPolicy(initial_backoff=0.1)
    rng = random.Random(7)
    assert all(0 <= jittered.backoff(3, rng) <= 0.4 for _ in range(100))
    unavailable = grpc.StatusCode.UNAVAILABLE
    retry = dict(elapsed=0.0, remaining=10.0, untried_target=False)
    assert policy.delay(unavailable, failed_attempts=1, **retry) == pytest.approx(0.1)
    assert policy.delay(unavailable, failed_attempts=5, **retry) is None
    assert policy.delay(grpc.StatusCode.DEADLINE_EXCEEDED, failed_attempts=1, **retry) is None
    assert (
        policy.delay(
            unavailable, failed_attempts=1, elapsed=0, remaining=0.05, untried_target=False
        )
        is None
    ), "never beyond the call's timeout"
    assert (
        policy.delay(unavailable, failed_attempts=1, elapsed=0, remaining=0.05, untried_target=True)
        == 0.0
    ), "fail over to another router at once"


class OutcomeCounter(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Counts the status codes of every attempt an AsyncClient makes."""

    def __init__(self) -> None:
        self.codes: collections.Counter[grpc.StatusCode] = collections.Counter()

    async def intercept_unary_unary(
        self, continuation: Callable[[Any, Any], Awaitable[Any]], details: Any, request: Any
    ) -> Any:
        call = await continuation(details, request)
        self.codes[await call.code()] += 1
        return call


@pytest.mark.timeout(90)
def test_calls_keep_succeeding_when_a_router_is_killed(
    tmp_path: Path, running: list[Cluster]
) -> None:
    cluster = start_cluster(tmp_path, routers=2)
    running.append(cluster)
    addresses = [router.address for router in cluster.routers]
    errors: list[BaseException] = []
    done = 0
    outcomes = OutcomeCounter()

    async def worker(kv: AsyncClient, n: int, stop: float) -> None:
        nonlocal done
        i = 0
        while time.monotonic() < stop:
            try:
                value = f"{n}-{i}".encode()
                await kv.put(f"w{n}", value)
                assert await kv.get(f"w{n}") == value
                done += 1
            except Exception as err:  # collected: the test fails on any
                errors.append(err)
            i += 1

    async def scenario() -> None:
        async with AsyncClient(addresses, timeout=5, interceptors=[outcomes]) as kv:
            stop = time.monotonic() + 2.0
            workers = [asyncio.ensure_future(worker(kv, n, stop)) for n in range(32)]
            await asyncio.sleep(0.6)
            cluster.routers[0].kill()  # SIGKILL with calls in flight
            await asyncio.gather(*workers)

    asyncio.run(scenario())
    assert not errors, errors[:3]
    assert done > 100
    assert outcomes.codes[grpc.StatusCode.UNAVAILABLE] >= 1, "some attempts met the dead router"
    print(f"\n{done} put+get pairs; attempts by status: {dict(outcomes.codes)}")

    with Client(addresses, timeout=5) as kv:  # the blocking client, after the kill
        for i in range(20):
            assert kv.put(f"after-{i}", b"v") > 0
        assert len(kv.get_many([f"after-{i}" for i in range(20)])) == 20
        assert len(list(kv.scan(prefix="after-", page_size=7))) == 20


@pytest.mark.timeout(60)
def test_item_failures_and_consistency_levels(cluster: Cluster) -> None:
    """Two of three nodes down: ONE still works; W=R=2 fail per item, naming the keys."""
    with Client(cluster.router.address, timeout=5) as kv:
        kv.put_many({"a": b"1", "b": b"2"})
        cluster.node("n2").stop()
        cluster.node("n3").stop()
        assert kv.put("a", b"one", consistency=Consistency.ONE) > 0
        assert kv.get("a", consistency=Consistency.ONE) == b"one"
        with pytest.raises(Unavailable, match="key b'a'") as single:
            kv.put("a", b"two")
        assert single.value.keys == (b"a",)
        with pytest.raises(Unavailable, match="2 of 2 writes failed") as many:
            kv.put_many({"a": b"3", "b": b"3"})
        assert set(many.value.keys) == {b"a", b"b"}
        with pytest.raises(Unavailable, match="2 of 2 reads failed") as reads:
            kv.get_many(["a", "b", "a"], consistency=Consistency.QUORUM)
        assert set(reads.value.keys) == {b"a", b"b"}
        assert not kv.health().healthy


@pytest.mark.timeout(30)
def test_retries_stop_at_their_bounds() -> None:
    dead = f"127.0.0.1:{free_port()}"
    counter = SyncCounter()
    policy = RetryPolicy(max_attempts=3, initial_backoff=0.1, jitter=False)
    with Client(dead, retry=policy, timeout=5, interceptors=[counter]) as kv:
        started = time.monotonic()
        with pytest.raises(Unavailable) as info:
            kv.get("k")
        elapsed = time.monotonic() - started
    assert counter.calls["BatchGet"] == 3, "max_attempts counts every attempt"
    # A sleep is never shorter than asked, so this lower bound cannot flake; how fast the
    # call gives up is the attempt count's business, not a wall-clock bound's.
    assert elapsed >= 0.29, "back-offs of 0.1 s then 0.2 s"
    assert info.value.target == dead and isinstance(info.value.__cause__, grpc.RpcError)
    assert info.value.code is grpc.StatusCode.UNAVAILABLE

    counter.calls.clear()
    # 100 attempts 0.2 s apart would take 20 s; a 1 s timeout leaves room for at most 6
    # (at 0, 0.2, ..., 1.0 s), however slow the machine: fewer attempts, never more.
    patient = RetryPolicy(max_attempts=100, initial_backoff=0.2, max_backoff=0.2, jitter=False)
    with Client(dead, retry=patient, timeout=1.0, interceptors=[counter]) as kv:
        started = time.monotonic()
        with pytest.raises(Unavailable):
            kv.put("k", b"v")
        elapsed = time.monotonic() - started
    print(f"retries: gave up after {counter.calls['BatchWrite']} attempts, {elapsed:.2f} s")
    assert 2 <= counter.calls["BatchWrite"] <= 6, "retries never run past the call's timeout"
    assert elapsed < 10, "the call ends near its timeout, not after 100 back-offs"


@pytest.mark.timeout(60)
def test_bearer_token(tmp_path: Path, running: list[Cluster]) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token\n")
    cluster = start_cluster(tmp_path, router_extra=["--token-file", str(token_file)])
    running.append(cluster)
    address = cluster.router.address
    counter = SyncCounter()
    with Client(address, bearer_token="wrong", interceptors=[counter]) as kv:
        with pytest.raises(Unauthenticated):
            kv.put("k", b"v")
        assert counter.calls["BatchWrite"] == 1, "UNAUTHENTICATED is not retried"
    with Client(address) as kv, pytest.raises(Unauthenticated):
        kv.get("k")
    with Client(address, bearer_token="s3cret-token") as kv:
        assert kv.put("k", b"v") > 0
        assert kv.get("k") == b"v"
        assert len(kv.topology().nodes) == 3

    async def with_async_client() -> None:
        async with AsyncClient(address, bearer_token="s3cret-token") as kv:
            assert await kv.get("k") == b"v"
            assert kv.frames_answered == 1  # the token opened the exchange port too
        async with AsyncClient(address, bearer_token="nope") as kv:
            with pytest.raises(Unauthenticated):
                await kv.get("k")

    asyncio.run(with_async_client())

    refused = run("get", "k", addr=address)
    assert refused.returncode == 2 and b"UNAUTHENTICATED" in refused.stderr
    assert b"s3cret" not in refused.stderr
    accepted = run("get", "k", addr=address, env={"SHARDKV_TOKEN": "s3cret-token"})
    assert (accepted.returncode, accepted.stdout) == (0, b"v"), accepted.stderr


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _write_pki(base: Path) -> Pki:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate."""
    now = datetime.datetime.now(datetime.UTC)

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    def issue(
        subject: str,
        key: ec.EllipticCurvePrivateKey,
        ca_key: ec.EllipticCurvePrivateKey,
        issuer: str,
        extensions: list[tuple[x509.ExtensionType, bool]],
    ) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(subject))
            .issuer_name(name(issuer))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
        )
        for extension, critical in extensions:
            builder = builder.add_extension(extension, critical)
        return builder.sign(ca_key, hashes.SHA256())

    def save(path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
        path.with_suffix(".pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        path.with_suffix(".key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )

    ca_key, server_key, client_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    ca = issue(
        "shardkv test CA",
        ca_key,
        ca_key,
        "shardkv test CA",
        [
            (x509.BasicConstraints(ca=True, path_length=None), True),
            (
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                True,
            ),
        ],
    )
    server = issue(
        "router",
        server_key,
        ca_key,
        "shardkv test CA",
        [
            (
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                False,
            ),
            (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False),
        ],
    )
    client = issue(
        "client",
        client_key,
        ca_key,
        "shardkv test CA",
        [
            (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False),
        ],
    )
    save(base / "ca", ca, ca_key)
    save(base / "server", server, server_key)
    save(base / "client", client, client_key)
    return Pki(
        base / "ca.pem",
        base / "server.pem",
        base / "server.key",
        base / "client.pem",
        base / "client.key",
    )


def _wait_serving_tls(address: str, tls: TLSConfig) -> None:
    """Like harness.wait_serving, over TLS (the harness checks in plaintext)."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    with grpc.secure_channel(address, tls.credentials()) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            try:
                stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                return
            except grpc.RpcError:
                time.sleep(0.05)
    raise TimeoutError(f"{address} not serving over TLS after {STARTUP_TIMEOUT_S}s")


@pytest.mark.timeout(90)
def test_tls_and_mutual_tls(tmp_path: Path, running: list[Cluster]) -> None:
    pki = _write_pki(tmp_path)
    cluster = start_cluster(tmp_path, routers=0)
    running.append(cluster)
    tls_args = ["--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key)]
    plain_tls = router_proc(tmp_path, cluster.config, "r1", extra=tls_args)
    mutual = router_proc(
        tmp_path, cluster.config, "r2", extra=[*tls_args, "--tls-client-ca", str(pki.ca)]
    )
    cluster.routers += [plain_tls, mutual]
    plain_tls.start(wait=False)
    mutual.start(wait=False)
    with_cert = TLSConfig(ca=pki.ca, cert=pki.client_cert, key=pki.client_key)
    _wait_serving_tls(plain_tls.address, TLSConfig(ca=pki.ca))
    _wait_serving_tls(mutual.address, with_cert)
    once = RetryPolicy(max_attempts=1)

    with Client(plain_tls.address, tls=TLSConfig(ca=pki.ca.read_bytes())) as kv:
        assert kv.put("tls", b"v") > 0
        assert kv.get("tls") == b"v"
    with Client(plain_tls.address, retry=once, timeout=3) as kv, pytest.raises(Unavailable):
        kv.get("tls")  # plaintext to a TLS port
    with Client(mutual.address, tls=TLSConfig(ca=pki.ca), retry=once, timeout=3) as kv:
        with pytest.raises(Unavailable):
            kv.get("tls")  # no client certificate
    with Client(mutual.address, tls=with_cert) as kv:
        assert kv.get("tls") == b"v"
        assert kv.health().healthy

    async def with_async_client() -> None:
        async with AsyncClient(mutual.address, tls=with_cert) as kv:
            assert await kv.put("mtls", "async") > 0
            assert await kv.get("mtls") == b"async"
            # On the router's exchange port, over the same mutual TLS.
            assert kv.frames_answered >= 2
        async with AsyncClient(mutual.address, tls=TLSConfig(ca=pki.ca), retry=once) as kv:
            with pytest.raises(Unavailable):
                await kv.get("mtls")  # no client certificate, on either port
            assert kv.frames_answered == 0

    asyncio.run(with_async_client())
    tls_flags = ["--tls-ca", str(pki.ca), "--tls-cert", str(pki.client_cert)]
    shardctl = run(*tls_flags, "--tls-key", str(pki.client_key), "get", "mtls", addr=mutual.address)
    assert (shardctl.returncode, shardctl.stdout) == (0, b"async"), shardctl.stderr
