"""Answer entries: a key's entry of a BatchGetResponse (kv.proto), serialized where the
record is read.

A node answers a router's batch read with one entry per key (replica.proto, ReadAnswers)
and the router passes the newest replica's entry on as it is, joining entries into its
answer instead of building a GetResult per key and serializing it again. The router builds
entries the same way for the keys it answers itself (the general read path, failures).
"""

from __future__ import annotations

import sys
from array import array
from collections.abc import Sequence

from shardkv.common.wire import varint
from shardkv.v1 import kv_pb2, replica_pb2

# The tag of BatchGetResponse.results (field 1, length-delimited): every entry starts so.
_RESULTS_TAG = b"\x0a"
# Type codes of the packed arrays of ReadAnswers: 4-byte and 8-byte unsigned integers.
UINT32, UINT64 = "I", "Q"
# A key's stored fields, as a node reads them: value, version, writer, tombstone; None
# where it holds no record.
Fields = tuple[bytes, int, int, bool]


def read_answers(keys: Sequence[bytes], fields: Sequence[Fields | None]) -> replica_pb2.ReadAnswers:
    """The answers of keys (a prefix of them when fields is shorter): each result added in
    place and the whole serialized once; each entry's end is worked out from the sizes of
    its fields as it is added (reading the sizes back costs a wrapper object per entry).
    Keys are shorter than 16 KiB (LMDB takes 511 bytes): their length takes one or two
    bytes."""
    results = kv_pb2.BatchGetResponse()
    add = results.results.add
    versions: list[int] = []
    writers: list[int] = []
    bounds = [0]
    end = 0
    for key, held in zip(keys, fields, strict=False):
        # The GetResult's bytes: the key's tag, length and bytes, then found (2 bytes), the
        # value's tag, length and bytes (none when empty), the version's tag and varint.
        size = len(key) + (2 if len(key) < 128 else 3)
        if held is None:
            add(key=key)
            versions.append(0)
            writers.append(0)
        else:
            value, version, writer, tombstone = held
            if tombstone:
                add(key=key)
            else:
                add(key=key, found=True, value=value, version=version)
                length = len(value)
                size += 2
                if version:
                    size += 1 + (version.bit_length() + 6) // 7
                if length:
                    size += 1 + (length.bit_length() + 6) // 7 + length
            versions.append(version)
            writers.append(writer)
        end += 1 + (size.bit_length() + 6) // 7 + size  # the entry's tag and length
        bounds.append(end)
    return replica_pb2.ReadAnswers(
        entries=results.SerializeToString(),
        bounds=packed(UINT32, bounds),
        versions=packed(UINT64, versions),
        writers=packed(UINT32, writers),
    )


def answered(answers: replica_pb2.ReadAnswers) -> int:
    """How many keys answers answers (one writer each)."""
    return len(answers.writers) // array(UINT32).itemsize


def packed(code: str, numbers: Sequence[int]) -> bytes:
    """numbers as a packed array of little-endian integers of type code."""
    values = array(code, numbers)
    if sys.byteorder == "big":
        values.byteswap()
    return values.tobytes()


def unpacked(code: str, data: bytes) -> array[int]:
    """The integers of a packed array of type code."""
    values = array(code)
    values.frombytes(data)
    if sys.byteorder == "big":
        values.byteswap()
    return values


def record_entry(key: bytes, record: replica_pb2.Record | None) -> bytes:
    """key's entry for record, the newest of its replicas (None: none holds one)."""
    if record is None or record.tombstone or not record.version:
        return _entry(kv_pb2.GetResult(key=key))
    result = kv_pb2.GetResult(key=key, found=True, value=record.value, version=record.version)
    return _entry(result)


def failed_entry(key: bytes, code: int, message: str) -> bytes:
    """key's entry when it could not be read: its status (a gRPC code) and why."""
    return _entry(kv_pb2.GetResult(key=key, status=kv_pb2.ItemStatus(code=code, message=message)))


def get_result(entry: bytes) -> kv_pb2.GetResult:
    """The GetResult an entry carries."""
    [result] = kv_pb2.BatchGetResponse.FromString(entry).results
    return result


def _entry(result: kv_pb2.GetResult) -> bytes:
    body = result.SerializeToString()
    return _RESULTS_TAG + varint(len(body)) + body
