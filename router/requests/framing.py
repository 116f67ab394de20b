"""A batch's records as columns, bound for one node, and framed as one Apply body; a
batch's keys, bound for one node, and framed as one Read body.

A batch's records travel to each owner as a ColumnChunk: the keys, values, versions and
tombstone flags of its share, picked out of the batch's columns (writes.py) without a
message per record. The chunks of every request that leave in one coalesced call are
framed together, as one RecordColumns entry of an ApplyRequest (replica.proto), written
here field by field: each field's bytes are copied once into the body (a RecordColumns
message would copy the keys and values in, and again when serialized), and the node reads
one set of columns per call, not one per request (a set costs it some 15 µs to unpack
whatever it holds). The body goes through a stub whose request serializer passes bytes.

A batch read's keys travel to each owner asked as a KeyChunk, serialized once as the keys
of a ReadRequest for every owner asked them and every call that carries them: a call's
body is its chunks' serialized keys side by side, then its other fields (protobuf joins
the repeated field), not the keys copied into a request and serialized per call.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import accumulate, chain, groupby
from operator import attrgetter

from shardkv.common.answers import UINT32, UINT64, packed
from shardkv.common.wire import varint
from shardkv.v1 import replica_pb2

# ApplyRequest.columns: field 4, wire type 2 (length-delimited).
_COLUMNS_TAG = b"\x22"
# RecordColumns' fields: keys 1, key_ends 2, values 3, value_ends 4, versions 5 and
# tombstones 7 length-delimited (wire type 2); writer 6 a varint (wire type 0).
_KEYS, _KEY_ENDS, _VALUES, _VALUE_ENDS, _VERSIONS = b"\x0a", b"\x12", b"\x1a", b"\x22", b"\x2a"
_WRITER, _TOMBSTONES = b"\x30", b"\x3a"
# Bytes a record adds to a call beyond its key and value: two ends, a version, a flag.
COLUMN_RECORD_BYTES = 17


@dataclass(slots=True)
class ColumnChunk:
    """The records of one batch bound for one or more nodes (the same chunk goes to every
    owner that takes the same records): one coalesced item per node (node_client.py).
    size: the bytes it adds to a call, which the coalescer budgets calls by."""

    keys: Sequence[bytes]
    values: Sequence[bytes]
    versions: Sequence[int]
    tombstones: bytes
    writer: int
    size: int
    # Its records framed as one entry, once the first call that carried it alone framed
    # them: the replicas' calls share the bytes.
    entry: bytes | None = field(default=None, init=False, compare=False)

    @property
    def count(self) -> int:
        return len(self.keys)


def apply_body(chunks: Sequence[ColumnChunk]) -> bytes:
    """The serialized ApplyRequest of chunks' records, in order: one RecordColumns entry
    per run of chunks of one writer (every chunk of a router has its writer). A chunk that
    leaves alone is framed once for all its replicas."""
    if len(chunks) == 1:
        chunk = chunks[0]
        if chunk.entry is None:
            chunk.entry = _entry([chunk])
        return chunk.entry
    entries = [_entry([*run]) for _, run in groupby(chunks, key=attrgetter("writer"))]
    return b"".join(entries)


def _entry(chunks: list[ColumnChunk]) -> bytes:
    """chunks' records (all of one writer) as one ApplyRequest.columns entry: tag, varint
    length, RecordColumns."""
    keys = [*chain.from_iterable(chunk.keys for chunk in chunks)]
    values = [*chain.from_iterable(chunk.values for chunk in chunks)]
    fields = (
        (_KEYS, b"".join(keys)),
        (_KEY_ENDS, packed(UINT32, [*accumulate(map(len, keys))])),
        (_VALUES, b"".join(values)),
        (_VALUE_ENDS, packed(UINT32, [*accumulate(map(len, values))])),
        (_VERSIONS, packed(UINT64, [*chain.from_iterable(chunk.versions for chunk in chunks)])),
        (_TOMBSTONES, b"".join(chunk.tombstones for chunk in chunks)),
    )
    parts = [_WRITER, varint(chunks[0].writer)]
    for tag, data in fields:
        parts += (tag, varint(len(data)), data)
    body = sum(map(len, parts))
    return b"".join([_COLUMNS_TAG, varint(body), *parts])


@dataclass(slots=True)
class KeyChunk:
    """The keys of one batch read bound for one or more nodes (owners asked the same keys
    share it): one coalesced item per node (node_client.py). size: the bytes of its keys,
    which the coalescer budgets calls by."""

    keys: list[bytes]
    size: int
    # Its keys as ReadRequest.keys fields, once the first call that carried it framed them.
    wire: bytes | None = field(default=None, init=False, compare=False)

    @classmethod
    def of(cls, keys: list[bytes]) -> KeyChunk:
        return cls(keys, sum(map(len, keys)))

    @property
    def count(self) -> int:
        return len(self.keys)


def read_body(chunks: Sequence[KeyChunk], max_bytes: int) -> bytes:
    """The serialized ReadRequest asking for answers (up to max_bytes) to chunks' keys, in
    order."""
    parts = []
    for chunk in chunks:
        if chunk.wire is None:
            chunk.wire = replica_pb2.ReadRequest(keys=chunk.keys).SerializeToString()
        parts.append(chunk.wire)
    parts.append(_read_fields(max_bytes))
    return b"".join(parts)


@functools.cache
def _read_fields(max_bytes: int) -> bytes:
    """A Read body's fields but for its keys: the same for every call."""
    return replica_pb2.ReadRequest(max_bytes=max_bytes, answers=True).SerializeToString()


def passthrough(body: bytes) -> bytes:
    """The request serializer of a stub fed bytes already serialized."""
    return body
