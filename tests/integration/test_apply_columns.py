"""Records sent as columns (replica.proto, RecordColumns: a router's batch writes) against a
running shardd: stored exactly as the same records sent as messages, answered in order
after them; columns that do not describe records are refused whole with INVALID_ARGUMENT
naming what is wrong, store nothing, and leave the node serving. Also through grpcurl's
JSON, where the columns travel base64-encoded."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from harness import Proc, small_shardd
from shardkv.common.answers import UINT32, UINT64, packed
from shardkv.router.requests.framing import apply_body
from shardkv.router.requests.writes import Writes
from shardkv.v1 import replica_pb2, replica_pb2_grpc

MAX_VALUE = 4096
MAX_BATCH = 50
GOOD = b"good/"
REFUSED = b"refused/"
GRPCURL = Path(sys.executable).parent / "grpcurl"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    base = tmp_path_factory.mktemp("columns")
    with small_shardd(base, max_value_bytes=MAX_VALUE, max_batch_items=MAX_BATCH) as proc:
        yield proc


@pytest.fixture(scope="module")
def replica(node: Proc) -> Iterator[replica_pb2_grpc.ReplicaStub]:
    with grpc.insecure_channel(node.address) as channel:
        yield replica_pb2_grpc.ReplicaStub(channel)


def _columns(
    keys: list[bytes], values: list[bytes], versions: list[int], tombstones: bytes, writer: int = 3
) -> replica_pb2.RecordColumns:
    """Columns as a router builds them (framing.apply_body), parsed back into a message."""
    batch = Writes(keys, values, tombstones, versions, writer)
    body = apply_body([batch.chunk(range(len(keys)))])
    [columns] = replica_pb2.ApplyRequest.FromString(body).columns
    return columns


def _held(replica: replica_pb2_grpc.ReplicaStub, keys: list[bytes]) -> list[replica_pb2.Record]:
    return list(replica.Read(replica_pb2.ReadRequest(keys=keys), timeout=10).records)


def _refused_stored(replica: replica_pb2_grpc.ReplicaStub) -> list[bytes]:
    reply = replica.ScanRecords(
        replica_pb2.ScanRecordsRequest(start=REFUSED, end=REFUSED[:-1] + b"0"), timeout=10
    )
    return [record.key for record in reply.records]


@pytest.mark.timeout(60)
def test_columns_store_what_records_would(replica: replica_pb2_grpc.ReplicaStub) -> None:
    first = [GOOD + b"a", GOOD + b"b", GOOD + b"c"]
    second = [GOOD + b"d", GOOD + b"a"]  # a key again: the newer version wins
    request = replica_pb2.ApplyRequest(
        records=[replica_pb2.Record(key=GOOD + b"r", value=b"msg", version=5, writer=1)],
        columns=[
            _columns(first, [b"va", b"", b"vc" * 100], [10, 11, 12], b"\x00\x01\x00"),
            _columns(second, [b"vd", b"va2"], [13, 14], b"\x00\x00", writer=4),
        ],
    )
    reply = replica.Apply(request, timeout=10)
    assert list(reply.applied) == [True] * 6
    held = _held(replica, [GOOD + b"r", *first, GOOD + b"d"])
    assert [(r.key, r.value, r.version, r.writer, r.tombstone) for r in held] == [
        (GOOD + b"r", b"msg", 5, 1, False),
        (GOOD + b"a", b"va2", 14, 4, False),
        (GOOD + b"b", b"", 11, 3, True),
        (GOOD + b"c", b"vc" * 100, 12, 3, False),
        (GOOD + b"d", b"vd", 13, 4, False),
    ]
    # Sent again: already held, so nothing applied, answered in the same order.
    again = replica.Apply(request, timeout=10)
    assert list(again.applied) == [False] * 6


def _broken(**changes: object) -> replica_pb2.RecordColumns:
    keys = [REFUSED + b"x", REFUSED + b"y"]
    columns = _columns(keys, [b"1", b"22"], [7, 8], b"\x00\x00")
    for name, value in changes.items():
        setattr(columns, name, value)
    return columns


CASES = [
    (_broken(key_ends=b"\x01\x02\x03"), "not a whole number of 4-byte integers"),
    (_broken(versions=packed(UINT64, [7])), "1 versions"),
    (_broken(tombstones=b"\x00"), "1 tombstone flags"),
    (_broken(key_ends=packed(UINT32, [4, len(REFUSED) + 1])), "do not end at"),
    (
        # Three keys of 9 bytes: ends 18, 9, 27, each within the 27 bytes, the second back.
        replica_pb2.RecordColumns(
            keys=REFUSED + b"a" + REFUSED + b"b" + REFUSED + b"c",
            key_ends=packed(UINT32, [18, 9, 27]),
            values=b"abc",
            value_ends=packed(UINT32, [1, 2, 3]),
            versions=packed(UINT64, [1, 2, 3]),
            tombstones=bytes(3),
        ),
        "in order",
    ),
    (_broken(value_ends=packed(UINT32, [1, 9])), "do not end at"),
    (_broken(tombstones=b"\x00\x02"), "neither 0 nor 1"),
    (_broken(versions=packed(UINT64, [7, 0])), "version 0"),
    (_broken(keys=REFUSED + b"x", key_ends=packed(UINT32, [len(REFUSED) + 1] * 2)), "empty"),
    (
        _broken(
            values=b"1" + b"v" * (MAX_VALUE + 1), value_ends=packed(UINT32, [1, MAX_VALUE + 2])
        ),
        f"limit of {MAX_VALUE} bytes",
    ),
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("columns", "words"), CASES)
def test_columns_that_describe_no_records_are_refused_whole(
    replica: replica_pb2_grpc.ReplicaStub, columns: replica_pb2.RecordColumns, words: str
) -> None:
    # A valid record and valid columns first: the request is refused whole, not in part.
    valid = _columns([REFUSED + b"ok"], [b"v"], [9], b"\x00")
    request = replica_pb2.ApplyRequest(
        records=[replica_pb2.Record(key=REFUSED + b"msg", value=b"v", version=9)],
        columns=[valid, columns],
    )
    with pytest.raises(grpc.RpcError) as err:
        replica.Apply(request, timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value
    assert "Apply columns 1" in err.value.details() and words in err.value.details(), (
        err.value.details()
    )
    assert _refused_stored(replica) == []
    assert _held(replica, [GOOD + b"c"])[0].value == b"vc" * 100  # still serving, data intact


@pytest.mark.timeout(60)
def test_more_records_than_the_batch_limit_across_records_and_columns(
    replica: replica_pb2_grpc.ReplicaStub,
) -> None:
    keys = [REFUSED + b"many/%d" % i for i in range(MAX_BATCH)]
    request = replica_pb2.ApplyRequest(
        records=[replica_pb2.Record(key=REFUSED + b"one-more", value=b"v", version=1)],
        columns=[_columns(keys, [b"v"] * MAX_BATCH, [1] * MAX_BATCH, bytes(MAX_BATCH))],
    )
    with pytest.raises(grpc.RpcError) as err:
        replica.Apply(request, timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"limit of {MAX_BATCH} items" in err.value.details()
    # Entries that hold nothing count as well: each costs the node some work.
    empty = replica_pb2.ApplyRequest(columns=[replica_pb2.RecordColumns()] * (MAX_BATCH + 1))
    with pytest.raises(grpc.RpcError) as err:
        replica.Apply(empty, timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"Apply columns of {MAX_BATCH + 1} items" in err.value.details()
    assert _refused_stored(replica) == []


def _grpcurl(node: Proc, body: dict[str, object]) -> subprocess.CompletedProcess[str]:
    argv = [str(GRPCURL), "-plaintext", "-d", json.dumps(body), node.address]
    return subprocess.run(
        [*argv, "shardkv.v1.Replica/Apply"], capture_output=True, text=True, timeout=30
    )


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


@pytest.mark.timeout(60)
def test_columns_through_grpcurl_json(node: Proc, replica: replica_pb2_grpc.ReplicaStub) -> None:
    columns = {
        "keys": _b64(GOOD + b"json"),
        "keyEnds": _b64(packed(UINT32, [len(GOOD) + 4])),
        "values": _b64(b"from grpcurl"),
        "valueEnds": _b64(packed(UINT32, [12])),
        "versions": _b64(packed(UINT64, [77])),
        "writer": 9,
        "tombstones": _b64(b"\x00"),
    }
    stored = _grpcurl(node, {"columns": [columns]})
    assert stored.returncode == 0, stored.stderr
    assert json.loads(stored.stdout)["applied"] == [True]
    [held] = _held(replica, [GOOD + b"json"])
    assert (held.value, held.version, held.writer) == (b"from grpcurl", 77, 9)

    # Wrong types (a number where bytes go) never reach the node; a short array does, and
    # is refused naming it.
    wrong = _grpcurl(node, {"columns": [{**columns, "keyEnds": 12}]})
    assert wrong.returncode != 0 and "bad input" in wrong.stderr, wrong.stderr
    short = _grpcurl(node, {"columns": [{**columns, "versions": _b64(b"\x01")}]})
    assert short.returncode != 0 and "InvalidArgument" in short.stderr, short.stderr
    assert "not a whole number of 8-byte integers" in short.stderr
    assert _held(replica, [GOOD + b"json"])[0].version == 77
