"""Frame headers written as bytes (common/exchange_outbox.py, Heads) read back as the
ExchangeFrame a caller would have built, whatever is kept serialized between frames."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from shardkv.common.exchange_outbox import MAX_HEADS, Heads, Queued, deadline_field, timeout_ms
from shardkv.v1 import exchange_pb2

_text = st.text(max_size=30)


@given(
    st.lists(
        st.tuples(
            st.integers(1, 2**64 - 1),
            st.sampled_from(["/shardkv.v1.Replica/Read", "/shardkv.v1.Replica/Apply", ""]),
            st.dictionaries(_text, _text, max_size=3),
            _text,
            st.floats(0, 5e6, allow_nan=False),
        ),
        min_size=1,
        max_size=8,
    )
)
def test_a_header_reads_back_as_the_frame_it_stands_for(
    frames: list[tuple[int, str, dict[str, str], str, float]],
) -> None:
    heads = Heads()  # shared by the frames: what it keeps must not leak between them
    for frame_id, method, metadata, rid, seconds in frames:
        written = heads.head(frame_id, method, metadata, rid) + deadline_field(seconds)
        expected = exchange_pb2.ExchangeFrame(
            id=frame_id,
            method=method,
            metadata=metadata,
            request_id=rid,
            timeout_ms=timeout_ms(seconds),
        )
        assert exchange_pb2.ExchangeFrame.FromString(written) == expected


def test_a_queued_frame_carries_the_time_left_when_it_is_written() -> None:
    head = Heads().head(3, "/shardkv.v1.Replica/Read", {"shardkv-epoch": "7"}, "r1")
    queued = Queued(3, head, b"\x1a\x02hi", deadline=10.0)
    frame = exchange_pb2.ExchangeFrame.FromString(queued.data(now=9.5))
    assert (frame.id, frame.timeout_ms, frame.request) == (3, 500, b"hi")
    assert dict(frame.metadata) == {"shardkv-epoch": "7"} and frame.request_id == "r1"


def test_what_heads_keep_stays_bounded() -> None:
    heads = Heads()
    for epoch in range(10 * MAX_HEADS):
        head = heads.head(1, "/shardkv.v1.Replica/Read", {"shardkv-epoch": str(epoch)}, "")
        assert exchange_pb2.ExchangeFrame.FromString(head).metadata["shardkv-epoch"] == str(epoch)
    assert len(heads._kept) <= MAX_HEADS
