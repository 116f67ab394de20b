"""Nodes serve routers only (issue 14, item 5), on real processes.

A node started with ``--node-token-file`` refuses every call without that token, and one
started with ``--router-cert-names`` refuses mutual-TLS peers whose certificate names no
router; a router with the token works end to end (writes, reads, hinted hand-off,
anti-entropy, a move, status and backup); hint targets are bounded with
RESOURCE_EXHAUSTED, never INTERNAL; and shardd will not serve a non-loopback address
open to anyone unless told ``--insecure``.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from faults.certs import CertificateAuthority
from grpc_health.v1 import health_pb2, health_pb2_grpc
from harness import (
    BIN,
    Proc,
    free_port,
    router_proc,
    shardd_proc,
    start_cluster,
    wait_serving,
    write_cluster_toml,
)
from shardkv.client import Client, ShardKVError
from shardkv.common.ring_tokens import TOKEN_SPACE
from shardkv.router.membership.topology import load_topology
from shardkv.router.placement.ring import Ring
from shardkv.v1 import kv_pb2, kv_pb2_grpc, replica_pb2, replica_pb2_grpc

TOKEN = "node-tok-5e0c9a1f7b2d"
WRONG = "node-tok-5e0c9a1f7b2e"
MAX_TARGETS = 64


def bearer(token: str | None) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),) if token else ()


def token_file(base: Path) -> Path:
    path = base / "node-token"
    path.write_text(TOKEN + "\n")
    return path


def code_of(call: Callable[[], Any]) -> grpc.StatusCode:
    """The status of call(): OK, or the code it failed with."""
    try:
        result = call()
        if hasattr(result, "__iter__") and not isinstance(result, (bytes, str)):
            list(result)  # a stream fails on its first read
    except grpc.RpcError as err:
        return err.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def record(key: bytes, value: bytes = b"v", version: int = 1 << 40) -> replica_pb2.Record:
    return replica_pb2.Record(key=key, value=value, version=version, writer=9)


def the_attacks(channel: grpc.Channel, metadata: tuple[tuple[str, str], ...]) -> dict[str, Any]:
    """What an outsider tried against an open node: wipe, dump, plant, read, park hints."""
    replica = replica_pb2_grpc.ReplicaStub(channel)  # type: ignore[no-untyped-call]
    kv = kv_pb2_grpc.KVStub(channel)  # type: ignore[no-untyped-call]
    whole_ring = [replica_pb2.TokenRange(start=0, end=TOKEN_SPACE)]
    return {
        "purge": lambda: replica.PurgeTokenRanges(
            replica_pb2.PurgeTokenRangesRequest(ranges=whole_ring, all_records=True),
            metadata=metadata,
            timeout=5,
        ),
        "snapshot": lambda: replica.Snapshot(
            replica_pb2.SnapshotRequest(batch_size=100), metadata=metadata, timeout=5
        ),
        "apply": lambda: replica.Apply(
            replica_pb2.ApplyRequest(records=[record(b"planted")]), metadata=metadata, timeout=5
        ),
        "hint": lambda: replica.Apply(
            replica_pb2.ApplyRequest(hints=[replica_pb2.Hint(target="ghost", record=record(b"h"))]),
            metadata=metadata,
            timeout=5,
        ),
        "read": lambda: replica.Read(
            replica_pb2.ReadRequest(keys=[b"k0"]), metadata=metadata, timeout=5
        ),
        "kv-get": lambda: kv.Get(kv_pb2.GetRequest(key=b"k0"), metadata=metadata, timeout=5),
    }


def held(address: str, keys: list[bytes], *, token: str | None = TOKEN) -> dict[bytes, bytes]:
    with grpc.insecure_channel(address) as channel:
        reply = replica_pb2_grpc.ReplicaStub(channel).Read(  # type: ignore[no-untyped-call]
            replica_pb2.ReadRequest(keys=keys), metadata=bearer(token), timeout=5
        )
    return {r.key: r.value for r in reply.records if r.version}


@pytest.mark.timeout(60)
def test_outsiders_without_the_node_token_are_refused(tmp_path: Path) -> None:
    node = shardd_proc(tmp_path, "n1", extra=["--node-token-file", str(token_file(tmp_path))])
    node.start()
    try:
        keys = [b"k%d" % i for i in range(5)]
        with grpc.insecure_channel(node.address) as channel:
            kv = kv_pb2_grpc.KVStub(channel)  # type: ignore[no-untyped-call]
            for key in keys:
                kv.Put(kv_pb2.PutRequest(key=key, value=b"secret"), metadata=bearer(TOKEN))
            for who, metadata in (("no token", ()), ("wrong token", bearer(WRONG))):
                codes = {name: code_of(f) for name, f in the_attacks(channel, metadata).items()}
                assert set(codes.values()) == {grpc.StatusCode.UNAUTHENTICATED}, (who, codes)
            # Health and reflection stay open (probes, grpcurl list).
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
            assert health.status == health_pb2.HealthCheckResponse.SERVING
        # Nothing was wiped, planted or parked.
        assert held(node.address, [*keys, b"planted"]) == {k: b"secret" for k in keys}
        with grpc.insecure_channel(node.address) as channel:
            summary = replica_pb2_grpc.ReplicaStub(channel).HintSummary(  # type: ignore[no-untyped-call]
                replica_pb2.HintSummaryRequest(), metadata=bearer(TOKEN), timeout=5
            )
        assert not summary.targets
        log = node.log()
        assert log.count("refused /shardkv.v1.") >= 12, log
        assert TOKEN not in log and WRONG not in log
    finally:
        node.stop()


@pytest.mark.timeout(60)
def test_mutual_tls_admits_router_certificates_only(tmp_path: Path) -> None:
    ca = CertificateAuthority(tmp_path / "ca")
    router_cert, node_cert = ca.issue("router-1"), ca.issue("n1")
    intruder = ca.issue("intruder")  # same CA, not a router
    tls = ["--tls-cert", str(node_cert.cert), "--tls-key", str(node_cert.key)]
    mtls = [*tls, "--tls-client-ca", str(ca.cert), "--router-cert-names", "router-1,router-2"]
    node = shardd_proc(tmp_path, "n1", extra=mtls)
    node.start(wait=False)
    routers: list[Proc] = []

    def credentials(issued: Any) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            ca.cert.read_bytes(), issued.key.read_bytes(), issued.cert.read_bytes()
        )

    try:
        with grpc.secure_channel(node.address, credentials(intruder)) as channel:
            deadline = time.monotonic() + 20
            while (
                code_of(
                    lambda: health_pb2_grpc.HealthStub(channel).Check(
                        health_pb2.HealthCheckRequest(), timeout=1
                    )
                )
                != grpc.StatusCode.OK
            ):
                assert time.monotonic() < deadline, node.log()
                time.sleep(0.05)
            # The handshake succeeds (same CA), the calls do not.
            codes = {name: code_of(f) for name, f in the_attacks(channel, ()).items()}
            assert set(codes.values()) == {grpc.StatusCode.PERMISSION_DENIED}, codes
        assert "'intruder'" in node.log() and "are not router names" in node.log()
        config = write_cluster_toml(
            tmp_path / "cluster.toml", [node], replication=1, read_quorum=1, write_quorum=1
        )
        node_tls = ["--node-tls-ca", str(ca.cert), "--node-tls-cert", str(router_cert.cert)]
        node_tls += ["--node-tls-key", str(router_cert.key)]
        routers.append(router_proc(tmp_path, config, "r1", extra=node_tls).start())
        with Client(routers[0].address, timeout=5) as kv:
            kv.put(b"over-mtls", b"router only")
            assert kv.get(b"over-mtls") == b"router only"
        # A router showing the intruder's certificate is refused like any other caller.
        wrong = ["--node-tls-ca", str(ca.cert), "--node-tls-cert", str(intruder.cert)]
        wrong += ["--node-tls-key", str(intruder.key)]
        routers.append(router_proc(tmp_path, config, "r2", extra=wrong).start())
        with Client(routers[1].address, timeout=3) as kv, pytest.raises(ShardKVError):
            kv.put(b"k", b"v")
        assert node.log().count("'intruder'") >= 2
    finally:
        for proc in [*routers, node]:
            proc.stop()


def shardctl(router: Proc, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "shardctl"), "--addr", router.address, *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def owners(config: Path, key: bytes) -> list[str]:
    topology = load_topology(config)
    ring = Ring({n.id: n.weight for n in topology.nodes})
    return list(ring.preference_list(key, topology.replication))


@pytest.mark.timeout(150)
def test_a_router_with_the_node_token_works_end_to_end(tmp_path: Path) -> None:
    token = ["--node-token-file", str(token_file(tmp_path))]
    cluster = start_cluster(tmp_path, nodes=4, node_extra=token, router_extra=token)
    spare = shardd_proc(tmp_path, "n5", extra=token).start()
    tokenless: Proc | None = None
    try:
        keys = [b"e2e/%03d" % i for i in range(300)]
        with Client(cluster.router.address, timeout=10) as kv:
            kv.put_many({k: b"v1" for k in keys})
            assert kv.get_many(keys) == {k: b"v1" for k in keys}
            assert [r.key for r in kv.scan(prefix=b"e2e/")] == keys

            # Hinted hand-off: n3 misses writes, a fallback keeps them for it, then hands
            # them over (HintSummary, ReadHints, Apply, DeleteHints, all with the token).
            missed = [k for k in keys[:100] if "n3" in owners(cluster.config, k)]
            cluster.node("n3").stop()
            kv.put_many({k: b"v2" for k in keys[:100]})
            cluster.node("n3").start()
            deadline = time.monotonic() + 30
            while held(cluster.node("n3").address, missed) != {k: b"v2" for k in missed}:
                assert time.monotonic() < deadline, "n3 never got its missed writes"
                time.sleep(0.2)

        # Anti-entropy: a record written to one owner alone is repaired onto the others.
        lone = b"e2e/lone"
        first, *others = owners(cluster.config, lone)
        with grpc.insecure_channel(cluster.node(first).address) as channel:
            replica_pb2_grpc.ReplicaStub(channel).Apply(  # type: ignore[no-untyped-call]
                replica_pb2.ApplyRequest(
                    records=[record(lone, version=(time.time_ns() // 1_000_000) << 16)]
                ),
                metadata=bearer(TOKEN),
                timeout=5,
            )
        assert not any(held(cluster.node(o).address, [lone]) for o in others)
        repaired = shardctl(cluster.router, "repair")
        assert repaired.returncode == 0 and "error" not in repaired.stdout, repaired
        assert all(held(cluster.node(o).address, [lone]) for o in others)

        # A move onto a fifth node: ranges counted, streamed, applied and purged.
        added = shardctl(cluster.router, "node", "add", "--id", "n5", "--addr", spare.address)
        assert added.returncode == 0 and "MOVE_DONE" in added.stdout, added
        with Client(cluster.router.address, timeout=10) as kv:
            assert kv.get_many(keys[100:]) == {k: b"v1" for k in keys[100:]}
        assert held(spare.address, keys), "n5 received nothing"
        status = shardctl(cluster.router, "status")
        assert status.returncode == 0 and "n5" in status.stdout, status
        backup = shardctl(cluster.router, "backup", str(tmp_path / "backup"))
        assert backup.returncode == 0, backup

        nodes = [*cluster.nodes, spare]
        for node in nodes:
            refused = "refused /shardkv.v1." in node.log()
            assert not refused, f"{node.name} refused the router:\n{node.log()}"

        # A router without the token gets nowhere, and the nodes say why.
        tokenless = router_proc(tmp_path, cluster.config, "r9").start()
        with Client(tokenless.address, timeout=3) as kv, pytest.raises(ShardKVError):
            kv.put(b"e2e/refused", b"v")
        assert any("no node token" in node.log() for node in nodes)
        logs = "".join(proc.log() for proc in [*cluster.all(), spare, tokenless])
        assert TOKEN not in logs
    finally:
        for proc in [*cluster.all(), spare, *([tokenless] if tokenless else [])]:
            proc.stop()


@pytest.mark.timeout(90)
def test_hint_targets_are_bounded_without_internal_errors(tmp_path: Path) -> None:
    node = shardd_proc(tmp_path, "n1", extra=["--node-token-file", str(token_file(tmp_path))])
    node.start()
    try:
        with grpc.insecure_channel(node.address) as channel:
            replica = replica_pb2_grpc.ReplicaStub(channel)  # type: ignore[no-untyped-call]

            def park(targets: list[str]) -> grpc.StatusCode:
                hints = [replica_pb2.Hint(target=t, record=record(b"h")) for t in targets]
                request = replica_pb2.ApplyRequest(hints=hints)
                return code_of(lambda: replica.Apply(request, metadata=bearer(TOKEN), timeout=10))

            # 25 calls of 50 invented targets each (1,250: more than LMDB's 1,024 databases).
            codes = [park([f"ghost-{b}-{i}" for i in range(50)]) for b in range(25)]
            assert grpc.StatusCode.INTERNAL not in codes, codes
            assert codes[0] == grpc.StatusCode.OK
            assert set(codes[1:]) == {grpc.StatusCode.RESOURCE_EXHAUSTED}, codes
            # Up to the bound, new targets are taken; one past it is refused.
            extra = [f"more-{i}" for i in range(MAX_TARGETS - 50)]
            assert park(extra) == grpc.StatusCode.OK
            with pytest.raises(grpc.RpcError) as err:
                replica.Apply(
                    replica_pb2.ApplyRequest(
                        hints=[replica_pb2.Hint(target="one-more", record=record(b"h"))]
                    ),
                    metadata=bearer(TOKEN),
                    timeout=5,
                )
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert f"limit of {MAX_TARGETS} distinct targets" in (err.value.details() or "")

            summary = replica.HintSummary(
                replica_pb2.HintSummaryRequest(), metadata=bearer(TOKEN), timeout=5
            )
            assert len(summary.targets) <= MAX_TARGETS
            # The node keeps serving: a target it already holds still takes hints, and
            # records are written and read.
            assert park([summary.targets[0].target]) == grpc.StatusCode.OK
            kv = kv_pb2_grpc.KVStub(channel)  # type: ignore[no-untyped-call]
            kv.Put(kv_pb2.PutRequest(key=b"after", value=b"flood"), metadata=bearer(TOKEN))
            got = kv.Get(kv_pb2.GetRequest(key=b"after"), metadata=bearer(TOKEN))
            assert got.value == b"flood"
        # The bound holds across a restart (targets are counted from the store).
        node.restart()
        with grpc.insecure_channel(node.address) as channel:
            replica = replica_pb2_grpc.ReplicaStub(channel)  # type: ignore[no-untyped-call]
            assert park(["after-restart"]) == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "Traceback" not in node.log()
    finally:
        node.stop()


@pytest.mark.timeout(60)
def test_shardd_will_not_serve_a_non_loopback_address_open(tmp_path: Path) -> None:
    """Every interface (the unspecified address), probed through loopback."""
    wildcard = ".".join("0" * 4)

    def node(name: str, *extra: str) -> Proc:
        port = free_port()
        proc = shardd_proc(tmp_path, name, port=port, extra=extra)
        at = proc.argv.index("--listen") + 1
        proc.argv[at] = f"{wildcard}:{port}"
        return proc

    refused = node("open")
    refused.start(wait=False)
    assert refused.popen is not None and refused.popen.wait(20) == 1
    assert "refusing to serve" in refused.log() and "--insecure" in refused.log()

    insecure = node("insecure", "--insecure")
    protected = node("protected", "--node-token-file", str(token_file(tmp_path)))
    try:
        insecure.start()
        assert "INSECURE" in insecure.log() and "WARNING" in insecure.log()
        protected.start()
        wait_serving(protected.address)
        assert "INSECURE" not in protected.log()
        assert "clear text" in protected.log()  # a token without TLS on a network
    finally:
        insecure.stop()
        protected.stop()
