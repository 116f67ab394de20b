"""Conversion between the store's records and the Replica API's wire messages.

Apply and Read move every record of a replicated write or read through here, three times
per key (once per replica), so the two hot conversions do the least Python work per
record that they can: ``records_from_pb`` reads each field of a message once and checks
the limits with plain comparisons (the detailed check, which names the rule broken, runs
only for a record that fails them), and a Read's answer is built from the fields of the
LMDB values (``stored_fields``), without a Record in between, each entry added in place.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Sequence
from itertools import chain, islice, repeat
from operator import gt

from shardkv.common.answers import UINT32, UINT64, Fields, unpacked
from shardkv.common.limits import LimitExceeded, Limits
from shardkv.shardd.records import HEADER, TOMBSTONE, CorruptRecord, Hint, Record, Restored
from shardkv.shardd.validate import check_record
from shardkv.v1 import replica_pb2

_HEADER_SIZE = HEADER.size
_unpack_header = HEADER.unpack_from
_new = tuple.__new__
# Bytes of one integer of each packed array type (RecordColumns' ends and versions).
_SIZE = {code: array(code).itemsize for code in (UINT32, UINT64)}


def record_to_pb(record: Record) -> replica_pb2.Record:
    return replica_pb2.Record(
        key=record.key,
        value=record.value,
        version=record.version,
        writer=record.writer,
        tombstone=record.tombstone,
    )


def record_from_pb(message: replica_pb2.Record) -> Record:
    """The record a message carries (Restored when it is marked as a restore's); a
    tombstone keeps no value, whatever was sent."""
    value = b"" if message.tombstone else message.value
    kind = Restored if message.restore else Record
    return kind(message.key, value, message.version, message.writer, message.tombstone)


def records_from_pb(messages: Iterable[replica_pb2.Record], limits: Limits) -> list[Record]:
    """The records of an Apply, each checked as validate.check_record checks it (key and
    value sizes, a positive version; LimitExceeded names the rule broken), as
    record_from_pb converts it."""
    max_key = limits.max_key_bytes
    max_value = limits.max_value_bytes
    records: list[Record] = []
    add = records.append
    for message in messages:
        key = message.key
        value = message.value
        version = message.version
        if not 0 < len(key) <= max_key or len(value) > max_value or not version:
            check_record(limits, message)
        tombstone = message.tombstone
        kind = Restored if message.restore else Record
        # As Record._make builds it, without the named tuple's constructor call per field
        # (a third of this loop's time).
        add(_new(kind, (key, b"" if tombstone else value, version, message.writer, tombstone)))
    return records


def records_from_columns(
    columns: Sequence[replica_pb2.RecordColumns], limits: Limits, *, held: int = 0
) -> list[Record]:
    """The records of an Apply's columns, in order, checked as records_from_pb checks
    records. Columns that do not describe records (arrays of different lengths, ends out
    of order or past their bytes, a flag neither 0 nor 1) are refused whole: LimitExceeded
    names the columns and what is wrong. held: the records the Apply carries as messages;
    with the columns' they may not exceed the batch limit, checked before any column is
    read, as a batch of messages is refused before any is converted."""
    limits.check_batch(columns, "Apply columns")
    total = held + sum(len(message.key_ends) // _SIZE[UINT32] for message in columns)
    limits.check_batch(range(total), "Apply records and columns")
    records: list[Record] = []
    for number, message in enumerate(columns):
        records += _column_records(message, limits, f"Apply columns {number}")
    return records


def _column_records(message: replica_pb2.RecordColumns, limits: Limits, what: str) -> list[Record]:
    key_ends = _numbers(UINT32, message.key_ends, f"{what} key_ends")
    value_ends = _numbers(UINT32, message.value_ends, f"{what} value_ends")
    versions = _numbers(UINT64, message.versions, f"{what} versions")
    tombstones = message.tombstones
    count = len(key_ends)
    if not len(value_ends) == len(versions) == len(tombstones) == count:
        raise LimitExceeded(
            f"{what}: {count} key ends, {len(value_ends)} value ends, {len(versions)} versions"
            f" and {len(tombstones)} tombstone flags; each must have one per record"
        )
    keys = _cut(message.keys, key_ends, f"{what} keys")
    values = _cut(message.values, value_ends, f"{what} values")
    # Whole-column checks first, in C (bytes.count, `in`); key by key only to name a fault.
    live = tombstones.count(0) == count
    if count and (
        not limits.keys_fit(keys)
        or max(map(len, values)) > limits.max_value_bytes
        or 0 in versions
        or (not live and tombstones.translate(None, b"\x00\x01"))
    ):
        checked = zip(keys, values, versions, tombstones, strict=True)
        for index, (key, value, version, flag) in enumerate(checked):
            if flag > 1:
                raise LimitExceeded(
                    f"{what} record {index}: tombstone flag {flag} of key {key[:64]!r} is"
                    " neither 0 nor 1"
                )
            try:
                check_record(limits, replica_pb2.Record(key=key, value=value, version=version))
            except LimitExceeded as err:
                raise LimitExceeded(f"{what} record {index}: {err}") from None
    flags: Iterable[bool] = repeat(False, count)
    if not live:  # a tombstone keeps no value, whatever was sent
        flags = [flag == 1 for flag in tombstones]
        values = [b"" if flag else value for value, flag in zip(values, flags, strict=True)]
    # Each record built as records_from_pb builds it, by map: a loop in C.
    rows = zip(keys, values, versions, repeat(message.writer, count), flags, strict=True)
    return list(map(_new, repeat(Record, count), rows))


def _numbers(code: str, data: bytes, what: str) -> Sequence[int]:
    """The integers of a packed array, or LimitExceeded when data is not a whole number
    of them."""
    size = _SIZE[code]
    if len(data) % size:
        raise LimitExceeded(
            f"{what}: {len(data)} bytes is not a whole number of {size}-byte integers"
        )
    return unpacked(code, data)


def _cut(data: bytes, ends: Sequence[int], what: str) -> list[bytes]:
    """data cut at ends (where each part ends), or LimitExceeded when ends are not in order
    or do not end where data does: checked before anything is cut, since ends out of order
    would have each part copy up to all of data."""
    if not ends:
        if data:
            raise LimitExceeded(f"{what}: {len(data)} bytes for no record")
        return []
    if any(map(gt, ends, islice(ends, 1, None))):
        raise LimitExceeded(f"{what}: the ends are not in order")
    if ends[-1] != len(data):
        raise LimitExceeded(f"{what}: the ends do not end at its {len(data)} bytes")
    return [data[start:end] for start, end in zip(chain((0,), ends), ends, strict=False)]


def hint_from_pb(message: replica_pb2.Hint) -> Hint:
    return Hint(message.target, record_from_pb(message.record))


def missing_pb(key: bytes) -> replica_pb2.Record:
    """The reply for a key the node holds no record of (version 0, as replica.proto says)."""
    return replica_pb2.Record(key=key)


def stored_fields(key: bytes, raw: bytes | memoryview | None) -> Fields | None:
    """The answer's fields of key, stored as raw (the LMDB value; None: no record), as
    records.decode would give them, without building a Record. raw may be a view of an
    LMDB page: the value bytes are copied out of it here."""
    if raw is None:
        return None
    if len(raw) < _HEADER_SIZE:
        raise CorruptRecord(
            f"stored value of key {key[:64]!r} has {len(raw)} bytes, "
            f"shorter than the {_HEADER_SIZE}-byte header"
        )
    version, writer, flags = _unpack_header(raw)
    if flags & TOMBSTONE:
        return (b"", version, writer, True)
    return (bytes(raw[_HEADER_SIZE:]), version, writer, False)


def read_response(
    keys: Sequence[bytes], entries: Sequence[Fields | None], resume_at: int
) -> replica_pb2.ReadResponse:
    """The Read answer of keys (a prefix of them when entries is shorter): each entry
    added in place (a message built apart would be copied into the answer), a key the
    node holds no record of with version 0, as replica.proto says."""
    response = replica_pb2.ReadResponse(resume_at=resume_at)
    add = response.records.add
    for key, fields in zip(keys, entries, strict=False):
        if fields is None:
            add(key=key)
        else:
            value, version, writer, tombstone = fields
            add(key=key, value=value, version=version, writer=writer, tombstone=tombstone)
    return response
