"""The writes of one request as columns: per write its key, value and tombstone flag, the
version it got, and the one writer of them all.

A BatchWrite of a hundred keys used to become a hundred Mutation objects and then a hundred
Record messages, each built and serialized: per key more than the router spends on the key
otherwise. Its columns come straight from the request and go to every owner as one
RecordColumns per call (framing.py); a Record is built only for a key that leaves the
batch path (the general path, a marker), which is why Writes is a Sequence of Records.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any, overload

from shardkv.router.requests.framing import COLUMN_RECORD_BYTES, ColumnChunk
from shardkv.v1 import replica_pb2

Record = replica_pb2.Record


def any_set(flags: bytes) -> bool:
    """Whether any of flags (a byte each) is set: counted in C, as any() would step
    through a batch's flags one by one on the hot path."""
    return flags.count(0) != len(flags)


@dataclass(frozen=True, slots=True)
class Mutations:
    """What a request asks to write: per write its key, its value (empty for a delete), and
    one byte saying whether it deletes (1) or writes the value (0)."""

    keys: list[bytes]
    values: list[bytes]
    deletes: bytes

    def __post_init__(self) -> None:
        """One value and one flag per key, and no value for a delete: the columns go to
        the nodes as they are (a node would drop the value, but count it to the limit)."""
        if not len(self.keys) == len(self.values) == len(self.deletes):
            raise ValueError(
                f"{len(self.keys)} keys, {len(self.values)} values and {len(self.deletes)}"
                " delete flags: one each per write"
            )
        if any_set(self.deletes) and any(
            value for value, delete in zip(self.values, self.deletes, strict=True) if delete
        ):
            raise ValueError("a delete carries no value")

    @classmethod
    def of(cls, writes: Sequence[tuple[bytes, bytes | None]]) -> Mutations:
        """(key, value) pairs; a value of None deletes the key."""
        return cls(
            [key for key, _ in writes],
            [b"" if value is None else value for _, value in writes],
            bytes(value is None for _, value in writes),
        )


class Writes(Sequence[Record]):
    """Mutations with the versions they got and their writer (this router)."""

    __slots__ = ("keys", "tombstones", "values", "versions", "writer")

    def __init__(
        self,
        keys: list[bytes],
        values: list[bytes],
        tombstones: bytes,
        versions: Sequence[int],
        writer: int,
    ) -> None:
        self.keys = keys
        self.values = values
        self.tombstones = tombstones
        self.versions = versions
        self.writer = writer

    @classmethod
    def of_records(cls, records: Sequence[Record]) -> Writes:
        """records as columns: records routed again after a fence refusal come back to the
        batch path as Records (fencing.rerouted), all of one write, so of one writer."""
        writers = {record.writer for record in records}
        if len(writers) > 1:
            raise ValueError(f"records of {len(writers)} writers cannot share one column set")
        return cls(
            [record.key for record in records],
            [record.value for record in records],
            bytes(record.tombstone for record in records),
            [record.version for record in records],
            writers.pop() if writers else 0,
        )

    def __len__(self) -> int:
        return len(self.keys)

    @overload
    def __getitem__(self, index: int) -> Record: ...

    @overload
    def __getitem__(self, index: slice) -> list[Record]: ...

    def __getitem__(self, index: int | slice) -> Record | list[Record]:
        if isinstance(index, slice):
            return [self[i] for i in range(len(self.keys))[index]]
        return Record(
            key=self.keys[index],
            value=self.values[index],
            version=self.versions[index],
            writer=self.writer,
            tombstone=bool(self.tombstones[index]),
        )

    def chunk(self, indexes: Sequence[int]) -> ColumnChunk:
        """The writes at indexes, as one node's chunk (framing.py)."""
        pick = _picker(indexes)
        keys, values, flags = pick(self.keys), pick(self.values), self.tombstones
        return ColumnChunk(
            keys,
            values,
            pick(self.versions),
            bytes(pick(flags)) if any_set(flags) else bytes(len(indexes)),
            self.writer,
            sum(map(len, keys)) + sum(map(len, values)) + COLUMN_RECORD_BYTES * len(indexes),
        )


def _picker(indexes: Sequence[int]) -> Callable[[Sequence[Any]], Sequence[Any]]:
    """What picks the items at indexes out of a column: itemgetter, a loop in C, for two or
    more (of one index it gives the item itself, not a tuple)."""
    if len(indexes) > 1:
        getter: Callable[[Sequence[Any]], Sequence[Any]] = itemgetter(*indexes)
        return getter
    return lambda column: [column[i] for i in indexes]
