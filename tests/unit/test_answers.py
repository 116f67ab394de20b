"""Answer entries (common/answers.py, router/requests/replica_answers.py): a node's entries
parse as the router's clients read them, each entry's end is where its bytes end, and a
router joining entries, splitting replies by chunk or repairing from an entry gets the
records the node read."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from shardkv.common.answers import (
    UINT32,
    UINT64,
    Fields,
    get_result,
    packed,
    read_answers,
    unpacked,
)
from shardkv.router.requests.replica_answers import answers_of, split
from shardkv.v1 import kv_pb2, replica_pb2

# Lengths either side of one and two bytes of varint: keys, values, entries.
keys = st.one_of(st.binary(min_size=1, max_size=127), st.binary(min_size=128, max_size=511))
held: st.SearchStrategy[Fields | None] = st.one_of(
    st.none(),
    st.tuples(
        st.one_of(
            st.just(b""), st.binary(max_size=300), st.binary(min_size=16_384, max_size=20_000)
        ),
        st.integers(min_value=0, max_value=(1 << 64) - 1),  # 0: a corrupt record, still sized
        st.integers(min_value=0, max_value=(1 << 32) - 1),
        st.booleans(),
    ),
)


def expected(key: bytes, fields: Fields | None) -> kv_pb2.GetResult:
    if fields is None or fields[3]:
        return kv_pb2.GetResult(key=key)
    return kv_pb2.GetResult(key=key, found=True, value=fields[0], version=fields[1])


@given(st.lists(st.tuples(keys, held), min_size=1, max_size=30))
def test_each_entry_ends_where_its_bytes_end_and_parses_as_the_record_read(
    items: list[tuple[bytes, Fields | None]],
) -> None:
    answers = read_answers([k for k, _ in items], [f for _, f in items])
    assert list(unpacked(UINT64, answers.versions)) == [0 if f is None else f[1] for _, f in items]
    assert unpacked(UINT32, answers.bounds)[-1] == len(answers.entries)
    [chunk] = split([answers], [len(items)])
    for position, (key, fields) in enumerate(items):
        assert get_result(chunk.entry(position)) == expected(key, fields)
    joined = kv_pb2.BatchGetResponse.FromString(answers.entries)
    assert list(joined.results) == [expected(k, f) for k, f in items]


def test_a_tombstone_repairs_as_a_tombstone_and_a_value_as_itself() -> None:
    items: list[tuple[bytes, Fields | None]] = [
        (b"gone", (b"", 7, 2, True)),
        (b"live", (b"v", 9, 3, False)),
        (b"never", None),
    ]
    answers = read_answers([k for k, _ in items], [f for _, f in items])
    [chunk] = split([answers], [3])
    assert chunk.record(0) == replica_pb2.Record(key=b"gone", version=7, writer=2, tombstone=True)
    assert chunk.record(1) == replica_pb2.Record(key=b"live", value=b"v", version=9, writer=3)
    assert chunk.record(2) == replica_pb2.Record(key=b"never")


def test_replies_of_one_read_split_by_chunk_whatever_reply_holds_them() -> None:
    """A node that stopped at its byte budget answers the rest in a second reply: chunks
    straddle the two, their entries are the same as from one reply."""
    records = [replica_pb2.Record(key=b"k%d" % i, value=b"v" * i, version=i + 1) for i in range(7)]
    keys = [r.key for r in records]
    whole = split([answers_of(keys, replica_pb2.ReadResponse(records=records))], [2, 3, 2])
    first = answers_of(keys[:4], replica_pb2.ReadResponse(records=records[:4]))
    rest = answers_of(keys[4:], replica_pb2.ReadResponse(records=records[4:]))
    parts = split([first, rest], [2, 3, 2])
    for one, two in zip(whole, parts, strict=True):
        assert [one.entry(i) for i in range(len(one.ends))] == [
            two.entry(i) for i in range(len(two.ends))
        ]
        assert one.versions == two.versions and one.size == two.size


def test_answers_of_the_wrong_shape_fail_the_call_instead_of_being_misread() -> None:
    """A node whose arrays do not match the keys asked (a bug, or a version mismatch) fails
    its chunk with a message saying what it sent; its entries are never sliced wrongly."""
    answers = read_answers([b"a", b"b"], [None, (b"v", 3, 1, False)])
    short = replica_pb2.ReadAnswers()
    short.CopyFrom(answers)
    short.writers = short.writers[:4]
    backwards = replica_pb2.ReadAnswers()
    backwards.CopyFrom(answers)
    bounds = unpacked(UINT32, answers.bounds)
    bounds[1] = bounds[2] + 1  # the first entry ends past the second's end
    backwards.bounds = packed(UINT32, bounds)
    for broken, sizes in ((short, [2]), (answers, [3]), (backwards, [2])):
        with pytest.raises(ValueError, match="node answered"):
            split([broken], sizes)
