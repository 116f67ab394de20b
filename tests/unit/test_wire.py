"""common/wire.varint writes what protobuf writes: the router joins messages it framed
itself (records framed once for every replica, its stream's frames), and nodes parse
them as protobuf."""

from __future__ import annotations

from hypothesis import example, given
from hypothesis import strategies as st
from shardkv.common.wire import varint
from shardkv.router.requests.framing import frame
from shardkv.v1 import replica_pb2


@given(st.integers(min_value=0, max_value=2**64 - 1))
@example(0x7F)
@example(0x80)
@example(0x3FFF)
@example(0x4000)
@example(2**64 - 1)
def test_varint_is_protobufs(value: int) -> None:
    # ReadRequest.max_bytes is field 2, a uint64: its encoding is the tag, then the varint.
    encoded = replica_pb2.ReadRequest(max_bytes=value).SerializeToString()
    assert (b"\x10" + varint(value) if value else b"") == encoded


@given(st.binary(min_size=1, max_size=64), st.integers(min_value=0, max_value=20_000))
@example(b"k", 100)
@example(b"k", 16_370)
def test_framed_records_parse_as_the_apply_request_they_join_into(
    key: bytes, value_bytes: int
) -> None:
    records = [
        replica_pb2.Record(key=key, value=b"v" * value_bytes, version=2**56 + i, writer=7)
        for i in range(2)
    ]
    request = replica_pb2.ApplyRequest.FromString(b"".join(frame(r) for r in records))
    assert list(request.records) == records
