"""Records framed as ApplyRequest entries, so that an Apply's body is their bytes joined.

A batch's records travel to each owner as one RecordColumns entry (replica.proto): the
keys and values joined, their ends, versions and tombstones as packed arrays, all built
from the batch's columns (writes.py) without a message per record. The entry is written
here field by field, each field's bytes copied once into the frame (a RecordColumns
message would copy the keys and values in, and again when serialized). Protobuf
concatenation appends repeated fields, so the entries of several chunks joined are one
ApplyRequest, sent through a stub whose request serializer passes bytes through.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate

from shardkv.common.answers import UINT32, UINT64, packed
from shardkv.common.wire import varint

# ApplyRequest.columns: field 4, wire type 2 (length-delimited).
_COLUMNS_TAG = b"\x22"
# RecordColumns' fields: keys 1, key_ends 2, values 3, value_ends 4, versions 5 and
# tombstones 7 length-delimited (wire type 2); writer 6 a varint (wire type 0).
_KEYS, _KEY_ENDS, _VALUES, _VALUE_ENDS, _VERSIONS = b"\x0a", b"\x12", b"\x1a", b"\x22", b"\x2a"
_WRITER, _TOMBSTONES = b"\x30", b"\x3a"


@dataclass(frozen=True, slots=True)
class FramedRecords:
    """count records, framed as ApplyRequest entries, joined in data."""

    count: int
    data: bytes


def framed_columns(
    keys: Sequence[bytes],
    values: Sequence[bytes],
    versions: Sequence[int],
    writer: int,
    tombstones: bytes,
) -> FramedRecords:
    """The records of these columns (one entry each, in order) as one ApplyRequest.columns
    entry: tag, varint length, RecordColumns."""
    fields = (
        (_KEYS, b"".join(keys)),
        (_KEY_ENDS, packed(UINT32, list(accumulate(map(len, keys))))),
        (_VALUES, b"".join(values)),
        (_VALUE_ENDS, packed(UINT32, list(accumulate(map(len, values))))),
        (_VERSIONS, packed(UINT64, versions)),
        (_TOMBSTONES, tombstones),
    )
    parts = [_WRITER, varint(writer)]
    for tag, data in fields:
        parts += (tag, varint(len(data)), data)
    body = sum(map(len, parts))
    return FramedRecords(len(keys), b"".join([_COLUMNS_TAG, varint(body), *parts]))


def passthrough(body: bytes) -> bytes:
    """The request serializer of a stub fed bytes already serialized."""
    return body
