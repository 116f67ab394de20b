"""A node refuses columns that describe no records before it does the work they would cost
(shardd/convert.py): ends out of order before any value is cut (each part could copy the
whole blob), and more records than the batch limit before any column is read."""

from __future__ import annotations

import tracemalloc

import pytest
from shardkv.common.answers import UINT32, UINT64, packed
from shardkv.common.limits import DEFAULT_LIMITS, LimitExceeded
from shardkv.shardd.convert import records_from_columns
from shardkv.v1 import replica_pb2


def _peak_bytes(columns: list[replica_pb2.RecordColumns], held: int = 0) -> tuple[int, str]:
    """The most memory records_from_columns took before refusing columns, and its error."""
    tracemalloc.start()
    try:
        with pytest.raises(LimitExceeded) as err:
            records_from_columns(columns, DEFAULT_LIMITS, held=held)
        return tracemalloc.get_traced_memory()[1], str(err.value)
    finally:
        tracemalloc.stop()


def test_ends_out_of_order_are_refused_before_anything_is_cut() -> None:
    # 999 records over 200 KB of values whose ends go back and forth: cut first, each
    # second part would copy nearly all of it (about 100 MB).
    count, size = 999, 200_000
    value_ends = [size - 1 if i % 2 == 0 else 0 for i in range(count - 1)] + [size]
    columns = replica_pb2.RecordColumns(
        keys=b"k" * count,
        key_ends=packed(UINT32, range(1, count + 1)),
        values=b"v" * size,
        value_ends=packed(UINT32, value_ends),
        versions=packed(UINT64, [1] * count),
        tombstones=bytes(count),
    )
    peak, error = _peak_bytes([columns])
    assert "values: the ends are not in order" in error
    assert peak < 2 * size, f"refusing took {peak} bytes"


def test_too_many_records_are_refused_before_any_column_is_read() -> None:
    limit = DEFAULT_LIMITS.max_batch_items
    # Half the limit as messages, the rest and one more as columns whose values are too
    # short for their ends: the count is refused, not the ends, so no column was read.
    count = limit - limit // 2 + 1
    columns = replica_pb2.RecordColumns(
        keys=b"k" * count,
        key_ends=packed(UINT32, range(1, count + 1)),
        value_ends=packed(UINT32, [5] * count),
        versions=packed(UINT64, [1] * count),
        tombstones=bytes(count),
    )
    _, error = _peak_bytes([columns], held=limit // 2)
    assert f"Apply records and columns of {limit + 1} items" in error
    # Entries that hold nothing count too: each is a call's worth of work.
    _, error = _peak_bytes([replica_pb2.RecordColumns()] * (limit + 1))
    assert f"Apply columns of {limit + 1} items" in error
