"""Checks of incoming requests beyond shardkv.common.limits; each error names the rule broken."""

from __future__ import annotations

from shardkv.common.limits import LimitExceeded, Limits, scan_range
from shardkv.common.node_ids import check_node_id
from shardkv.shardd import store
from shardkv.v1 import kv_pb2, replica_pb2

__all__ = ["check_consistency", "check_range", "check_record", "check_target", "response_budget"]

_CONSISTENCY = ", ".join(f"{name}={number}" for name, number in kv_pb2.Consistency.items())


def check_consistency(value: int) -> None:
    """A node answers alone, so every level means the same to it; an unknown one is a bug in
    the caller and is refused rather than silently read as the default."""
    if value not in kv_pb2.Consistency.values():
        raise LimitExceeded(f"consistency {value} is not one of {_CONSISTENCY}")


def check_target(target: str) -> None:
    """A hint or marker target: a name the store can hold (its own length check) that is
    also a node id, since targets are node ids (shardkv.common.node_ids)."""
    store.check_target(target)
    check_node_id(target, "hint target")


def check_range(start: bytes, end: bytes) -> tuple[bytes, bytes]:
    """[start, end) of a Replica range call (end b"" = open); start must sort before end."""
    return scan_range(b"", start, end)


def check_record(limits: Limits, record: replica_pb2.Record) -> None:
    """A record a router asks the node to store or park."""
    limits.check_key(record.key)
    limits.check_value(record.key, record.value)
    if record.version == 0:
        raise LimitExceeded(
            f"record of key {record.key[:64]!r} has version 0, which means no record;"
            " versions must be positive"
        )


def response_budget(limits: Limits) -> int:
    """Bytes of keys and values one answer may carry, leaving room for framing."""
    return limits.max_message_bytes - (64 << 10)
