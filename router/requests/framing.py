"""Records serialized once, whatever the number of replicas they go to.

A record bound for three owners used to be copied into three ApplyRequests and serialized
three times. Here each record is serialized once and framed as an entry of
ApplyRequest.records (field 1, length-delimited); an Apply's body is then the bytes of its
entries joined (protobuf concatenation appends repeated fields), sent through a stub
whose request serializer passes bytes through.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from shardkv.common.wire import varint
from shardkv.v1 import replica_pb2

# ApplyRequest.records: field 1, wire type 2 (length-delimited).
_RECORDS_TAG = b"\x0a"


@dataclass(frozen=True, slots=True)
class FramedRecords:
    """count records, each framed as an ApplyRequest.records entry, joined in data."""

    count: int
    data: bytes

    @classmethod
    def join(cls, framed: Sequence[bytes]) -> FramedRecords:
        return cls(len(framed), b"".join(framed))


def frame(record: replica_pb2.Record) -> bytes:
    """The record as one ApplyRequest.records entry: tag, varint length, message."""
    body = record.SerializeToString()
    return _RECORDS_TAG + varint(len(body)) + body


def passthrough(body: bytes) -> bytes:
    """The request serializer of a stub fed bytes already serialized."""
    return body
