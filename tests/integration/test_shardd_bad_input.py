"""Malformed and oversized requests against a running shardd: each answered INVALID_ARGUMENT
naming the limit, never a crash, never a change to data already stored, and a refused write
writes nothing (no key of it is on the node afterwards, not even a tombstone)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import grpc
import pytest
from harness import Proc, small_shardd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from shardkv.v1 import kv_pb2, kv_pb2_grpc, replica_pb2, replica_pb2_grpc

MAX_VALUE = 4096
MAX_BATCH = 50
MAX_PAGE = 10_000
SENTINEL = b"\x00sentinel/"
# Keys only refused writes name: none may ever be stored.
REFUSED = b"refused/"
INVALID = grpc.StatusCode.INVALID_ARGUMENT
_SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def small_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    """A node with small value and batch limits, so oversized requests stay cheap."""
    base = tmp_path_factory.mktemp("bad_input")
    with small_shardd(base, max_value_bytes=MAX_VALUE, max_batch_items=MAX_BATCH) as proc:
        yield proc


@pytest.fixture(scope="module")
def channel(small_node: Proc) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(small_node.address) as chan:
        kv = kv_pb2_grpc.KVStub(chan)
        kv.BatchWrite(
            kv_pb2.BatchWriteRequest(
                mutations=[
                    kv_pb2.Mutation(key=SENTINEL + b"%d" % i, value=b"keep-%d" % i)
                    for i in range(10)
                ]
            )
        )
        yield chan


@pytest.fixture(scope="module")
def baseline(channel: grpc.Channel) -> replica_pb2.DigestResponse:
    """The digest of the sentinels as first written, taken before any test can abuse the
    node: the stubs below depend on it, whatever the order tests run in."""
    return _sentinel_digest(replica_pb2_grpc.ReplicaStub(channel))


@pytest.fixture(scope="module")
def kv(channel: grpc.Channel, baseline: replica_pb2.DigestResponse) -> kv_pb2_grpc.KVStub:
    return kv_pb2_grpc.KVStub(channel)


@pytest.fixture(scope="module")
def replica(
    channel: grpc.Channel, baseline: replica_pb2.DigestResponse
) -> replica_pb2_grpc.ReplicaStub:
    return replica_pb2_grpc.ReplicaStub(channel)


def _held(replica: replica_pb2_grpc.ReplicaStub, keys: list[bytes]) -> list[replica_pb2.Record]:
    """What the node holds for keys (tombstones included; version 0 = nothing)."""
    reply = replica.Read(replica_pb2.ReadRequest(keys=keys), timeout=10)
    return list(reply.records)


def _refused_keys_stored(replica: replica_pb2_grpc.ReplicaStub) -> list[bytes]:
    """Every record under REFUSED/, tombstones included."""
    reply = replica.ScanRecords(
        replica_pb2.ScanRecordsRequest(start=REFUSED, end=REFUSED[:-1] + b"0"), timeout=10
    )
    return [r.key for r in reply.records]


def _sentinel_digest(replica: replica_pb2_grpc.ReplicaStub) -> replica_pb2.DigestResponse:
    return replica.Digest(replica_pb2.DigestRequest(start=SENTINEL, end=SENTINEL + b"\xff"))


def invalid(call: Callable[[], object], *words: str) -> None:
    """Asserts call fails with INVALID_ARGUMENT and a message holding every word."""
    with pytest.raises(grpc.RpcError) as err:
        call()
    assert err.value.code() == INVALID, err.value
    for word in words:
        assert word in err.value.details(), (word, err.value.details())


def test_each_limit_is_named(kv: kv_pb2_grpc.KVStub, replica: replica_pb2_grpc.ReplicaStub) -> None:
    before = _sentinel_digest(replica)
    invalid(lambda: kv.Put(kv_pb2.PutRequest(key=b"", value=b"v")), "key must not be empty")
    invalid(lambda: kv.Get(kv_pb2.GetRequest(key=b"k" * 512)), "512 bytes", "limit of 511")
    invalid(
        lambda: kv.Put(kv_pb2.PutRequest(key=REFUSED + b"big", value=b"v" * (MAX_VALUE + 1))),
        f"{MAX_VALUE + 1} bytes",
        f"limit of {MAX_VALUE} bytes",
    )
    invalid(
        lambda: kv.BatchGet(kv_pb2.BatchGetRequest(keys=[b"k"] * (MAX_BATCH + 1))),
        f"{MAX_BATCH + 1} items",
        f"limit of {MAX_BATCH} items",
    )
    # Valid items first: a batch refused whole must not be applied in part.
    batch = [kv_pb2.Mutation(key=REFUSED + b"batch/%d" % i) for i in range(MAX_BATCH + 1)]
    invalid(
        lambda: kv.BatchWrite(kv_pb2.BatchWriteRequest(mutations=batch)), f"limit of {MAX_BATCH}"
    )
    deletes = [kv_pb2.Mutation(key=REFUSED + b"del/%d" % i, delete=True) for i in range(3)]
    invalid(
        lambda: kv.BatchWrite(kv_pb2.BatchWriteRequest(mutations=deletes, consistency=9)),  # type: ignore[arg-type]
        "consistency 9",
    )
    invalid(lambda: kv.Scan(kv_pb2.ScanRequest(start=b"b", end=b"a")), "must sort before")
    invalid(lambda: kv.Scan(kv_pb2.ScanRequest(start=b"a", end=b"a")), "must sort before")
    invalid(
        lambda: kv.Scan(kv_pb2.ScanRequest(prefix=b"p", start=b"a")), "prefix cannot be combined"
    )
    invalid(lambda: kv.Scan(kv_pb2.ScanRequest(limit=MAX_PAGE + 1)), "maximum page size")
    invalid(
        lambda: kv.Get(kv_pb2.GetRequest(key=b"k", consistency=7)),  # type: ignore[arg-type]
        "consistency 7",
    )
    invalid(
        lambda: kv.Put(kv_pb2.PutRequest(key=REFUSED + b"level", consistency=-1)),  # type: ignore[arg-type]
        "consistency -1",
    )
    invalid(
        lambda: kv.Delete(kv_pb2.DeleteRequest(key=REFUSED + b"delete", consistency=5)),  # type: ignore[arg-type]
        "consistency 5",
    )

    record = replica_pb2.Record(key=REFUSED + b"hint", value=b"v", version=1, writer=1)
    good = [
        replica_pb2.Record(key=REFUSED + b"apply/%d" % i, value=b"v", version=1) for i in range(5)
    ]
    invalid(
        lambda: replica.Apply(
            replica_pb2.ApplyRequest(
                records=[*good, replica_pb2.Record(key=REFUSED + b"v0", value=b"v", version=0)]
            )
        ),
        "version 0",
    )
    invalid(
        lambda: replica.Apply(
            replica_pb2.ApplyRequest(
                records=[
                    *good,
                    replica_pb2.Record(
                        key=REFUSED + b"big", value=b"v" * (MAX_VALUE + 1), version=1
                    ),
                ]
            )
        ),
        "limit of",
    )
    many = [
        replica_pb2.Record(key=REFUSED + b"many/%d" % i, value=b"v", version=1)
        for i in range(MAX_BATCH + 1)
    ]
    invalid(lambda: replica.Apply(replica_pb2.ApplyRequest(records=many)), "Apply records")
    invalid(
        lambda: replica.Apply(
            replica_pb2.ApplyRequest(
                records=good, hints=[replica_pb2.Hint(target="", record=record)]
            )
        ),
        "hint target must not be empty",
    )
    invalid(
        lambda: replica.Apply(
            replica_pb2.ApplyRequest(hints=[replica_pb2.Hint(target="n" * 300, record=record)])
        ),
        "limit of 255 bytes",
    )
    invalid(lambda: replica.Read(replica_pb2.ReadRequest(keys=[b""])), "empty")
    invalid(
        lambda: replica.ScanRecords(replica_pb2.ScanRecordsRequest(start=b"z", end=b"a")),
        "must sort before",
    )
    invalid(
        lambda: list(replica.StreamRange(replica_pb2.StreamRangeRequest(batch_size=MAX_PAGE + 1))),
        "maximum page size",
    )
    invalid(
        lambda: replica.Digest(replica_pb2.DigestRequest(start=b"z", end=b"z")), "must sort before"
    )
    invalid(lambda: replica.ReadHints(replica_pb2.ReadHintsRequest(target="")), "target")
    invalid(
        lambda: replica.DeleteHints(
            replica_pb2.DeleteHintsRequest(
                target="n2", records=[replica_pb2.Record(key=b"x" * 600)]
            )
        ),
        "600 bytes",
    )
    assert _sentinel_digest(replica) == before
    assert _refused_keys_stored(replica) == [], "a refused write left records behind"
    assert not replica.HintSummary(replica_pb2.HintSummaryRequest()).targets, "hints parked"


def test_undecodable_bytes_are_refused_and_the_node_serves_on(
    channel: grpc.Channel, kv: kv_pb2_grpc.KVStub
) -> None:
    for method in ("/shardkv.v1.KV/Put", "/shardkv.v1.Replica/Apply"):
        raw = channel.unary_unary(method)  # bytes in, bytes out: no protobuf on our side
        with pytest.raises(grpc.RpcError) as err:
            raw(b"\xff\xff\xff\xff garbage that is not a protobuf message")
        # grpcio answers before any handler runs: UNKNOWN, naming the parse error.
        assert err.value.code() == grpc.StatusCode.UNKNOWN
        assert "Error parsing message" in (err.value.details() or "")
    assert kv.Get(kv_pb2.GetRequest(key=SENTINEL + b"0")).value == b"keep-0"


_keys = st.binary(max_size=600)
_values = st.binary(max_size=MAX_VALUE + 200)


@_SETTINGS
@given(key=_keys, value=_values, consistency=st.integers(-2, 5))
def test_random_puts_either_round_trip_or_are_refused(
    kv: kv_pb2_grpc.KVStub,
    replica: replica_pb2_grpc.ReplicaStub,
    key: bytes,
    value: bytes,
    consistency: int,
) -> None:
    valid = 0 < len(key) <= 511 and len(value) <= MAX_VALUE and 0 <= consistency <= 3
    request = kv_pb2.PutRequest(key=key, value=value, consistency=consistency)  # type: ignore[arg-type]
    if key.startswith(SENTINEL):
        return
    if not valid:
        # A refused Put leaves the key as it was: absent, or the record an earlier
        # example stored (same version), never the refused value.
        storable = 0 < len(key) <= 511
        held_before = _held(replica, [key]) if storable else []
        invalid(lambda: kv.Put(request))
        assert (_held(replica, [key]) if storable else []) == held_before
        return
    version = kv.Put(request).version
    assert kv.Get(kv_pb2.GetRequest(key=key)) == kv_pb2.GetResponse(
        found=True, value=value, version=version
    )


_bounds = st.binary(max_size=4) | st.sampled_from([b"", SENTINEL, SENTINEL + b"5"])


@_SETTINGS
@given(
    prefix=_bounds,
    start=_bounds,
    end=_bounds,
    token=_bounds,
    limit=st.sampled_from([0, 1, 3, MAX_PAGE, MAX_PAGE + 1]),
)
def test_random_scans_stay_inside_their_range_or_are_refused(
    kv: kv_pb2_grpc.KVStub, prefix: bytes, start: bytes, end: bytes, token: bytes, limit: int
) -> None:
    request = kv_pb2.ScanRequest(prefix=prefix, start=start, end=end, limit=limit, page_token=token)
    refused = (
        (prefix and (start or end)) or (not prefix and end and start >= end) or limit > MAX_PAGE
    )
    if refused:
        invalid(lambda: kv.Scan(request))
        return
    reply = kv.Scan(request)
    keys = [r.key for r in reply.records]
    assert keys == sorted(set(keys)) and len(keys) <= (limit or 1000)
    low = max(prefix or start, token)
    assert all(k >= low for k in keys)
    assert all(k.startswith(prefix) for k in keys)
    assert all(k < end for k in keys) if end else True


def test_data_is_unchanged_after_the_abuse(
    kv: kv_pb2_grpc.KVStub,
    replica: replica_pb2_grpc.ReplicaStub,
    baseline: replica_pb2.DigestResponse,
) -> None:
    """Refused writes aimed at the stored keys themselves, whatever ran before (if
    anything), leave them as first written, versions included."""
    keys = [SENTINEL + b"%d" % i for i in range(10)]
    overwrite = [kv_pb2.Mutation(key=k, value=b"overwritten") for k in keys]
    erase = [kv_pb2.Mutation(key=k, delete=True) for k in keys]
    filler = [kv_pb2.Mutation(key=REFUSED + b"filler/%d" % i) for i in range(MAX_BATCH)]
    invalid(lambda: kv.BatchWrite(kv_pb2.BatchWriteRequest(mutations=[*overwrite, *filler])))
    invalid(lambda: kv.BatchWrite(kv_pb2.BatchWriteRequest(mutations=erase, consistency=4)))  # type: ignore[arg-type]
    invalid(lambda: kv.Put(kv_pb2.PutRequest(key=keys[0], value=b"v" * (MAX_VALUE + 1))))
    invalid(lambda: kv.Delete(kv_pb2.DeleteRequest(key=keys[1], consistency=-1)))  # type: ignore[arg-type]
    newer = [replica_pb2.Record(key=k, value=b"overwritten", version=2**62) for k in keys]
    invalid(
        lambda: replica.Apply(
            replica_pb2.ApplyRequest(
                records=[*newer, replica_pb2.Record(key=REFUSED + b"x", value=b"v", version=0)]
            )
        )
    )
    assert _sentinel_digest(replica) == baseline
    assert _refused_keys_stored(replica) == []
    reply = kv.Scan(kv_pb2.ScanRequest(prefix=SENTINEL))
    assert [(r.key, r.value) for r in reply.records] == [
        (SENTINEL + b"%d" % i, b"keep-%d" % i) for i in range(10)
    ]
    assert _sentinel_digest(replica).count == 10
