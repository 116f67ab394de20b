"""Bad input, generated: random and malformed requests to the router and to a node, raw
garbage on their ports, and messages over the size cap. Every request gets a clear status
(never INTERNAL or UNKNOWN for a well-formed message, always with a message), garbage only
gets the connection closed, the servers stay SERVING, and data stored before is unchanged.

(test_shardd_bad_input.py checks each named limit of a node one by one.)
"""

from __future__ import annotations

import itertools
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
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
# The README's bound on how far a server's peak RSS rises while it refuses three messages
# of 120 MiB (over the 32 MiB cap): gRPC reads part of a message before refusing it, never
# all of it. Measured 3 to 34 MB, the same for 40 MiB messages; a server that read a
# message whole before refusing it would pass 120 MB.
OVERSIZED_MIB = 120
OVERSIZED_GROWTH_LIMIT_MB = 40
# Each fuzzed write gets keys of its own (see unique_keys), so that a refused one can be
# checked to have written nothing, even when an earlier write timed out and lands late.
_TAGS = itertools.count()


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
def targets(cluster: Cluster, before: list[bytes]) -> Iterator[dict[str, Target]]:
    """Stubs of the router and of node n1. Asking for them takes the digests of the stored
    data first (`before`), so that every test that abuses the servers runs after them,
    whatever the order tests run in."""
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


@pytest.fixture(scope="module")
def replicas(cluster: Cluster) -> Iterator[list[replica_pb2_grpc.ReplicaStub]]:
    """Replica stubs of every node: what each one holds, tombstones included."""
    channels = [grpc.insecure_channel(node.address) for node in cluster.nodes]
    try:
        yield [replica_pb2_grpc.ReplicaStub(channel) for channel in channels]
    finally:
        for channel in channels:
            channel.close()


def held(replicas: list[replica_pb2_grpc.ReplicaStub], keys: list[bytes]) -> list[bytes]:
    """The keys any node holds a record for (a value or a tombstone)."""
    storable = sorted({k for k in keys if 0 < len(k) <= 511})  # no node can hold others
    found = set()
    for replica in replicas:
        for i in range(0, len(storable), 1000):
            chunk = replica_pb2.ReadRequest(keys=storable[i : i + 1000])
            found |= {r.key for r in replica.Read(chunk, timeout=10).records if r.version}
    return sorted(found)


def written_keys(request: object) -> list[bytes]:
    if isinstance(request, kv_pb2.BatchWriteRequest):
        return [m.key for m in request.mutations]
    if isinstance(request, kv_pb2.PutRequest | kv_pb2.DeleteRequest):
        return [request.key]
    return []


def unique_keys(request: object) -> None:
    """Gives the keys a write touches a prefix never used before, keeping each key's length
    (so an empty, a 511-byte and a 512-byte key stay what they were)."""
    tag = b"w%08d/" % next(_TAGS)

    def fresh(key: bytes) -> bytes:
        if not key:
            return key
        return tag + key[len(tag) :] if len(key) >= len(tag) else tag + key

    if isinstance(request, kv_pb2.BatchWriteRequest):
        for mutation in request.mutations:
            mutation.key = fresh(mutation.key)
    elif isinstance(request, kv_pb2.PutRequest | kv_pb2.DeleteRequest):
        request.key = fresh(request.key)


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
    replicas: list[replica_pb2_grpc.ReplicaStub],
    where: str,
    call: tuple[str, object, bool],
    timeout: float | None,
) -> None:
    """Every request gets a clear status, and a refused write writes nothing: no key of a
    request refused whole, and no key of an item refused alone, is on any node afterwards."""
    method, request, surely_invalid = call
    unique_keys(request)
    allowed = {OK, INVALID} | (TIMED if timeout is not None and timeout < 1 else set())
    refused: list[bytes] = []
    try:
        reply = getattr(targets[where].kv, method)(request, timeout=timeout)
    except grpc.RpcError as err:
        code, details = err.code(), err.details() or ""
        if code == INVALID:
            refused = written_keys(request)
    else:
        code, details = OK, ""
        keys = written_keys(request)
        for i, item in enumerate(getattr(reply, "results", ())):
            if item.status.code:  # a bad item fails alone, with its own message
                assert item.status.code in {c.value[0] for c in allowed}, item
                assert item.status.message, item
                if item.status.code == INVALID.value[0] and keys:
                    refused.append(keys[i])
    assert code in allowed, (where, method, code, details)
    if code != OK:
        assert details, f"{code} without a message"
    if surely_invalid and timeout is None:
        assert code == INVALID, (where, method, code, details)
    assert not held(replicas, refused), (where, method, code, details, "refused, yet written")


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


def _status_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise ValueError(f"no {field} for pid {pid}")


def peak_growth_mb(pid: int, action: Callable[[], None]) -> float:
    """How far the peak RSS of pid rose above its RSS while action ran: the kernel's own
    high-water mark (VmHWM), reset first (clear_refs 5), so no short peak is missed."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    before = _status_mb(pid, "VmRSS")
    action()
    return _status_mb(pid, "VmHWM") - before


def test_oversized_messages_are_refused_by_the_size_cap(
    cluster: Cluster, targets: dict[str, Target], replicas: list[replica_pb2_grpc.ReplicaStub]
) -> None:
    huge = b"v" * (OVERSIZED_MIB << 20)  # over the 32 MiB cap of both servers
    for proc, target in ((cluster.router, targets["router"]), (cluster.nodes[0], targets["node"])):

        def refuse_three(target: Target = target) -> None:
            for _ in range(3):
                with pytest.raises(grpc.RpcError) as err:
                    target.kv.Put(kv_pb2.PutRequest(key=b"huge", value=huge), timeout=30)
                assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.value
                assert "larger than max" in (err.value.details() or ""), err.value.details()

        grown = peak_growth_mb(proc.pid, refuse_three)
        print(
            f"[oversized] {proc.name}: peak RSS {grown:.1f} MB over its RSS,"
            f" 3 x {OVERSIZED_MIB} MiB refused"
        )
        assert grown < OVERSIZED_GROWTH_LIMIT_MB, f"{proc.name} peak RSS grew {grown:.1f} MB"
    assert not held(replicas, [b"huge"])


def test_servers_serve_on_and_stored_data_is_unchanged(
    cluster: Cluster,
    targets: dict[str, Target],
    replicas: list[replica_pb2_grpc.ReplicaStub],
    before: list[bytes],
) -> None:
    """Refused writes aimed at the stored keys themselves (whatever ran before this test,
    if anything) leave every node's copy of them as it was, digest for digest."""
    keys = list(SENTINELS)
    overwrite = [kv_pb2.Mutation(key=k, value=b"overwritten") for k in keys]
    erase = [kv_pb2.Mutation(key=k, delete=True) for k in keys]
    filler = [kv_pb2.Mutation(key=b"filler/%d" % i, value=b"x") for i in range(1001)]
    big = b"v" * ((1 << 20) + 1)
    for target in targets.values():
        refusals: list[Callable[[], object]] = [
            # A batch over the item limit, its first items valid: must not apply in part.
            lambda t=target: t.kv.BatchWrite(
                kv_pb2.BatchWriteRequest(mutations=[*overwrite, *erase, *filler]), timeout=10
            ),
            lambda t=target: t.kv.BatchWrite(
                kv_pb2.BatchWriteRequest(mutations=erase, consistency=9),
                timeout=10,  # type: ignore[arg-type]
            ),
            lambda t=target: t.kv.Put(kv_pb2.PutRequest(key=keys[0], value=big), timeout=10),
            lambda t=target: t.kv.Delete(
                kv_pb2.DeleteRequest(key=keys[1], consistency=-1),
                timeout=10,  # type: ignore[arg-type]
            ),
        ]
        for refusal in refusals:
            with pytest.raises(grpc.RpcError) as err:
                refusal()
            assert err.value.code() == INVALID, (target.name, err.value)
    # A node's replica API: a batch of newer records with one bad record among them.
    newer = [replica_pb2.Record(key=k, value=b"overwritten", version=2**62) for k in keys]
    bad = replica_pb2.Record(key=b"bad", value=b"v", version=0)
    with pytest.raises(grpc.RpcError) as err:
        replicas[0].Apply(replica_pb2.ApplyRequest(records=[*newer, bad]), timeout=10)
    assert err.value.code() == INVALID, err.value
    assert not held(replicas, [m.key for m in filler])

    for proc in cluster.all():
        assert proc.alive(), f"{proc.name} died"
        wait_serving(proc.address, timeout_s=5)
    assert [sentinel_digest(node.address) for node in cluster.nodes] == before
    with grpc.insecure_channel(cluster.router.address) as channel:
        reply = kv_pb2_grpc.KVStub(channel).BatchGet(
            kv_pb2.BatchGetRequest(keys=list(SENTINELS)), timeout=10
        )
    assert {r.key: r.value for r in reply.results} == SENTINELS
