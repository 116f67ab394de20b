"""What the router frames itself parses as protobuf on the other end: common/wire.varint
writes what protobuf writes (the router's stream frames), and the chunks of batches' writes
that leave in one call, framed as columns (framing.py, writes.py), are the ApplyRequest
whose records a node reads back (shardd/convert.py), every field and in order."""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from shardkv.common.limits import DEFAULT_LIMITS
from shardkv.common.wire import varint
from shardkv.router.requests.framing import COLUMN_RECORD_BYTES, apply_body
from shardkv.router.requests.writes import Mutations, Writes
from shardkv.shardd.convert import records_from_columns
from shardkv.shardd.records import Record
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


_writes = st.lists(
    st.tuples(
        st.binary(min_size=1, max_size=64),
        st.binary(max_size=300) | st.none(),  # None: a delete
        st.integers(min_value=1, max_value=2**64 - 1),
    ),
    min_size=1,
    max_size=40,
)


@given(_writes, st.integers(min_value=0, max_value=2**32 - 1), st.data())
@example([(b"k", b"v" * 16_370, 1), (b"k", None, 2**64 - 1)], 7, None)
def test_chunks_framed_together_parse_as_the_records_of_one_apply(
    writes: list[tuple[bytes, bytes | None, int]], writer: int, data: st.DataObject | None
) -> None:
    batch = Writes(
        [key for key, _, _ in writes],
        [b"" if value is None else value for _, value, _ in writes],
        bytes(value is None for _, value, _ in writes),
        [version for _, _, version in writes],
        writer,
    )
    # Two chunks of the batch, as two requests' items leaving in one coalesced Apply,
    # then one of another writer's batch: one set of columns per writer.
    picked = list(range(len(writes)))
    if data is not None:
        picked = data.draw(st.permutations(picked))
    cut = len(picked) // 2
    other = Writes([b"other"], [b"o"], b"\x00", [5], (writer + 1) % 2**32)
    chunks = [batch.chunk(picked[:cut]), batch.chunk(picked[cut:]), other.chunk([0])]
    request = replica_pb2.ApplyRequest.FromString(apply_body(chunks))
    assert len(request.columns) == 2
    records = records_from_columns(request.columns, DEFAULT_LIMITS)
    assert sum(chunk.count for chunk in chunks) == len(records) == len(writes) + 1
    assert records == [
        *(
            Record(key, value or b"", version, writer, value is None)
            for key, value, version in (writes[i] for i in picked)
        ),
        Record(b"other", b"o", 5, (writer + 1) % 2**32, False),
    ]
    assert [chunk.size for chunk in chunks[:2]] == [
        sum(len(writes[i][0]) + len(writes[i][1] or b"") + COLUMN_RECORD_BYTES for i in part)
        for part in (picked[:cut], picked[cut:])
    ]
    # A key leaving the batch path gets the Record the columns stand for.
    assert [batch[i] for i in picked] == [
        replica_pb2.Record(
            key=key, value=value or b"", version=version, writer=writer, tombstone=value is None
        )
        for key, value, version in (writes[i] for i in picked)
    ]


def test_mutations_hold_one_value_and_flag_per_key_and_no_value_for_a_delete() -> None:
    assert Mutations.of([(b"a", b"1"), (b"b", None)]).deletes == b"\x00\x01"
    with pytest.raises(ValueError, match="a delete carries no value"):
        Mutations([b"a"], [b"stale"], b"\x01")
    with pytest.raises(ValueError, match="one each per write"):
        Mutations([b"a", b"b"], [b"1"], b"\x00\x00")
