"""How one record is laid out as an LMDB value, and which of two records wins.

An LMDB value is a fixed 13-byte header followed by the value bytes:

    version  u64  big-endian  hybrid logical clock (see shardkv.common.hlc)
    writer   u32  big-endian  tie-break number of the writer that assigned the version
    flags    u8               bit 0 = tombstone (the record marks a delete; no value bytes)

Records are ordered by (version, writer), and records with equal pairs by their contents
(a tombstone beats a value, then the greater value bytes win): the one comparison the
router shares, shardkv.common.hlc.precedes. So all replicas settle on the same record
whatever order the writes reach them in.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import NamedTuple

from shardkv.common.hlc import precedes

HEADER = struct.Struct(">QIB")
# The header's (version, writer): what every write compares with the stored record; a
# marker's whole value (shardkv.shardd.parked).
STAMP = struct.Struct(">QI")
TOMBSTONE = 0x01
# Bytes a record takes on the wire beside its key and value bytes, roughly (Record.size).
RECORD_BYTES = 32
# Length prefixes used only when hashing records for digests (see digest_bytes).
_LENGTH = struct.Struct(">I")

Stamp = tuple[int, int]


class CorruptRecord(ValueError):
    """A stored value is shorter than the record header: the file was damaged."""


class Record(NamedTuple):
    """One versioned key: a value, or a tombstone when the key was deleted.

    A named tuple rather than a frozen dataclass: every replica of every write and read
    makes one, and a tuple is built three times faster (no __setattr__ per field). Compare
    kinds with type(), not ==: a Restored record equals a Record with the same fields."""

    key: bytes
    value: bytes
    version: int
    writer: int
    tombstone: bool = False

    @property
    def stamp(self) -> Stamp:
        """The (version, writer) pair that orders this record against others."""
        return (self.version, self.writer)

    def newer_than(self, stamp: Stamp | None) -> bool:
        """Whether this record's stamp beats a stored stamp (None = nothing); equal stamps
        do not (compare contents too with beats)."""
        return stamp is None or self.stamp > stamp

    def beats(self, stored: bytes | memoryview | None) -> bool:
        """Whether this record wins against a stored LMDB value (None = nothing stored), by
        the shared order of records; the stored contents are decoded only on a tie."""
        if stored is None:
            return True
        stamp = STAMP.unpack_from(stored)
        ours = (self.version, self.writer)
        if stamp != ours:
            return ours > stamp
        return precedes(decode(self.key, stored), self)

    def size(self) -> int:
        """Approximate bytes this record takes on the wire, for paging by size."""
        return len(self.key) + len(self.value) + RECORD_BYTES


class Restored(Record):
    """A record written back by a restore: stored only as the node's purge watermark allows
    (shardkv.shardd.watermark), so a key deleted and purged since the backup stays gone."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class Hint:
    """A record parked on this node for target, a replica that was down when it was written."""

    target: str
    record: Record


def encode(record: Record) -> bytes:
    """The LMDB value of a record; a tombstone keeps no value bytes."""
    if record.tombstone:
        return HEADER.pack(record.version, record.writer, TOMBSTONE)
    return HEADER.pack(record.version, record.writer, 0) + record.value


def decode(key: bytes, raw: bytes | memoryview) -> Record:
    """The record stored under key as raw (the LMDB value)."""
    if len(raw) < HEADER.size:
        raise CorruptRecord(
            f"stored value of key {key[:64]!r} has {len(raw)} bytes, "
            f"shorter than the {HEADER.size}-byte header"
        )
    version, writer, flags = HEADER.unpack_from(raw)
    tombstone = bool(flags & TOMBSTONE)
    return Record(key, b"" if tombstone else bytes(raw[HEADER.size :]), version, writer, tombstone)


def stamp_of(raw: bytes | memoryview) -> Stamp:
    """The (version, writer) of a stored value, without copying its value bytes."""
    version, writer = STAMP.unpack_from(raw)
    return (version, writer)


def digest_bytes(record: Record) -> bytes:
    """The unambiguous byte form of a record that range digests hash, in this order:
    key length, key, version, writer, tombstone flag, value length, value."""
    return b"".join(
        (
            _LENGTH.pack(len(record.key)),
            record.key,
            HEADER.pack(record.version, record.writer, TOMBSTONE if record.tombstone else 0),
            _LENGTH.pack(len(record.value)),
            record.value,
        )
    )
