"""Conversion between the store's records and the Replica API's wire messages."""

from __future__ import annotations

from shardkv.shardd.records import Hint, Record, Restored
from shardkv.v1 import replica_pb2


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


def hint_from_pb(message: replica_pb2.Hint) -> Hint:
    return Hint(message.target, record_from_pb(message.record))


def missing_pb(key: bytes) -> replica_pb2.Record:
    """The reply for a key the node holds no record of (version 0, as replica.proto says)."""
    return replica_pb2.Record(key=key)
