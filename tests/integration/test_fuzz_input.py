"""Bad input, generated: random and malformed requests to the router and to a node, raw
garbage on their ports, and messages over the size cap. Every request gets a clear status
(never INTERNAL or UNKNOWN for a well-formed message, always with a message), garbage only
gets the connection closed, the servers stay SERVING, and data stored before is unchanged.

(test_shardd_bad_input.py checks each named limit of a node one by one.)
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import pytest
from faults.cluster import rss_mb
from harness import Cluster, start_cluster, wait_serving
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from shardkv.v1 import kv_pb2, kv_pb2_grpc, replica_pb2, replica_pb2_grpc

SENTINEL = b"\x00sentinel/"
SENTINELS = {SENTINEL + b"%02d" % i: b"keep-%d" % i for i in range(20)}
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_SETTINGS = settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
OK, INVALID = grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT
# What a request may get besides OK and INVALID_ARGUMENT: its deadline passing (a tiny
# deadline can also run out inside the router, which then reports too few replicas).
TIMED = {grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE}


@dataclass(frozen=True)
class Target:
    name: str
    address: str
    kv: kv_pb2_grpc.KVStub


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    running = start_cluster(tmp_path_factory.mktemp("fuzz"))
    try:
        with grpc.insecure_channel(running.router.address) as channel:
            mutations = [kv_pb2.Mutation(key=k, value=v) for k, v in SENTINELS.items()]
            reply = kv_pb2_grpc.KVStub(channel).BatchWrite(
                kv_pb2.BatchWriteRequest(mutations=mutations, consistency=kv_pb2.ALL), timeout=10
            )
            assert all(r.status.code == 0 for r in reply.results)
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def targets(cluster: Cluster) -> Iterator[dict[str, Target]]:
    channels = {
        "router": grpc.insecure_channel(cluster.router.address),
        "node": grpc.insecure_channel(cluster.nodes[0].address),
    }
    addresses = {"router": cluster.router.address, "node": cluster.nodes[0].address}
    try:
        yield {
            name: Target(name, addresses[name], kv_pb2_grpc.KVStub(channel))
            for name, channel in channels.items()
        }
    finally:
        for channel in channels.values():
            channel.close()


@pytest.fixture(scope="module")
def before(cluster: Cluster) -> list[bytes]:
    """Each node's digest of the sentinel range, taken before any abuse."""
    return [sentinel_digest(node.address) for node in cluster.nodes]


def sentinel_digest(address: str) -> bytes:
    with grpc.insecure_channel(address) as channel:
        reply = replica_pb2_grpc.ReplicaStub(channel).Digest(
            replica_pb2.DigestRequest(start=SENTINEL, end=SENTINEL + b"\xff"), timeout=5
        )
        assert reply.count == len(SENTINELS)
        return bytes(reply.digest)


_key = st.binary(min_size=1, max_size=12) | st.sampled_from(
    [b"", b"k" * 511, b"k" * 512, b"\xff" * 600]
)
_value = st.binary(max_size=32) | st.sampled_from([b"v" * (1 << 20), b"v" * ((1 << 20) + 1)])
_consistency = st.sampled_from([0, 1, 2, 3]) | st.integers(-(2**31), 2**31 - 1)
_batch_size = st.sampled_from([0, 1, 7, 999, 1000, 1001, 3000])
_timeout = st.sampled_from([None, None, 0.0, 0.0001, 0.005, 5.0])


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, object, bool]:
    """(method, request, surely invalid): one random KV request."""
    method = draw(st.sampled_from(["Get", "Put", "Delete", "BatchGet", "BatchWrite", "Scan"]))
    consistency = draw(_consistency)
    bad_level = not 0 <= consistency <= 3
    if method in ("Get", "Put", "Delete"):
        key = draw(_key)
        bad = bad_level or not 0 < len(key) <= 511
        if method == "Get":
            return method, kv_pb2.GetRequest(key=key, consistency=consistency), bad  # type: ignore[arg-type]
        assume(not key.startswith(SENTINEL))
        if method == "Delete":
            return method, kv_pb2.DeleteRequest(key=key, consistency=consistency), bad  # type: ignore[arg-type]
        value = draw(_value)
        bad = bad or len(value) > 1 << 20
        return method, kv_pb2.PutRequest(key=key, value=value, consistency=consistency), bad  # type: ignore[arg-type]
    if method == "Scan":
        prefix, start, end = draw(_key), draw(_key), draw(_key)
        use = draw(st.sampled_from(["prefix", "range", "both", "none"]))
        request = kv_pb2.ScanRequest(
            prefix=prefix if use in ("prefix", "both") else b"",
            start=start if use in ("range", "both") else b"",
            end=end if use in ("range", "both") else b"",
            limit=draw(st.sampled_from([0, 1, 10, 10_000, 10_001, 2**32 - 1])),
            page_token=draw(st.binary(max_size=4)),
            consistency=consistency,  # type: ignore[arg-type]
        )
        return method, request, bad_level or request.limit > 10_000
    size = draw(_batch_size)
    keys = [b"fz/%d" % i for i in range(size)]
    if size and draw(st.booleans()):
        odd = draw(_key)
        assume(not odd.startswith(SENTINEL))
        keys[draw(st.integers(0, size - 1))] = odd
    bad = bad_level or size > 1000
    if method == "BatchGet":
        return method, kv_pb2.BatchGetRequest(keys=keys, consistency=consistency), bad  # type: ignore[arg-type]
    deletes = draw(st.booleans())
    mutations = [
        kv_pb2.Mutation(key=k, value=b"x", delete=deletes and i % 2 == 0)
        for i, k in enumerate(keys)
    ]
    return method, kv_pb2.BatchWriteRequest(mutations=mutations, consistency=consistency), bad  # type: ignore[arg-type]


@_SETTINGS
@given(where=st.sampled_from(["router", "node"]), call=requests(), timeout=_timeout)
def test_random_requests_get_a_clear_status(
    targets: dict[str, Target],
    before: list[bytes],
    where: str,
    call: tuple[str, object, bool],
    timeout: float | None,
) -> None:
    method, request, surely_invalid = call
    allowed = {OK, INVALID} | (TIMED if timeout is not None and timeout < 1 else set())
    try:
        reply = getattr(targets[where].kv, method)(request, timeout=timeout)
    except grpc.RpcError as err:
        code, details = err.code(), err.details() or ""
    else:
        code, details = OK, ""
        for item in getattr(reply, "results", ()):
            if item.status.code:  # a bad item fails alone, with its own message
                assert item.status.code in {c.value[0] for c in allowed}, item
                assert item.status.message, item
    assert code in allowed, (where, method, code, details)
    if code != OK:
        assert details, f"{code} without a message"
    if surely_invalid and timeout is None:
        assert code == INVALID, (where, method, code, details)


@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    where=st.sampled_from(["router", "node"]),
    garbage=st.binary(min_size=1, max_size=4096),
    preface=st.booleans(),
)
def test_garbage_bytes_only_get_the_connection_closed(
    targets: dict[str, Target], where: str, garbage: bytes, preface: bool
) -> None:
    host, port = targets[where].address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        try:
            sock.sendall((PREFACE if preface else b"") + garbage)
            # Done sending: a frame cut short is then garbage too, not a frame still coming.
            sock.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + 5
            while sock.recv(65536):  # SETTINGS / GOAWAY frames, then EOF
                assert time.monotonic() < deadline, "the server kept a garbage connection open"
        except ConnectionResetError:
            pass  # closed hard: as good
    wait_serving(targets[where].address, timeout_s=5)


def test_oversized_messages_are_refused_by_the_size_cap(
    cluster: Cluster, targets: dict[str, Target]
) -> None:
    huge = b"v" * (40 << 20)  # over the 32 MiB cap of both servers
    for proc, target in ((cluster.router, targets["router"]), (cluster.nodes[0], targets["node"])):
        rss_before = rss_mb(proc.pid)
        for _ in range(3):
            with pytest.raises(grpc.RpcError) as err:
                target.kv.Put(kv_pb2.PutRequest(key=b"huge", value=huge), timeout=30)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.value
            assert "larger than max" in (err.value.details() or ""), err.value.details()
        grown = rss_mb(proc.pid) - rss_before
        print(f"[oversized] {proc.name}: RSS grew {grown:.0f} MB over 3 x 40 MiB refusals")
        assert grown < 200


def test_servers_serve_on_and_stored_data_is_unchanged(
    cluster: Cluster, before: list[bytes]
) -> None:
    for proc in cluster.all():
        assert proc.alive(), f"{proc.name} died"
        wait_serving(proc.address, timeout_s=5)
    assert [sentinel_digest(node.address) for node in cluster.nodes] == before
    with grpc.insecure_channel(cluster.router.address) as channel:
        reply = kv_pb2_grpc.KVStub(channel).BatchGet(
            kv_pb2.BatchGetRequest(keys=list(SENTINELS)), timeout=10
        )
    assert {r.key: r.value for r in reply.results} == SENTINELS
