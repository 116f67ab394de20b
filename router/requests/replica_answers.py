"""One node's answers to one chunk of a batch read (replica.proto, ReadAnswers).

The batch read path compares replicas by the (version, writer) of each key, which names one
write, and answers with the newest one's entry as the node serialized it; it parses an entry
only to repair a replica that answered an older record.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from shardkv.common import native
from shardkv.common.answers import UINT32, UINT64, get_result, read_answers, unpacked
from shardkv.v1 import replica_pb2


@dataclass(slots=True)
class ReplicaAnswers:
    """Per key of a chunk, in its order: where its entry lies in entries (shared by the
    chunks of one reply), its version (0: none held) and its writer."""

    entries: bytes
    starts: array[int]
    ends: array[int]
    versions: array[int]
    writers: array[int]

    @property
    def size(self) -> int:
        """Bytes of the chunk's entries."""
        return self.ends[-1] - self.starts[0] if self.ends else 0

    def entry(self, position: int) -> bytes:
        return self.entries[self.starts[position] : self.ends[position]]

    def same(self, position: int, other: ReplicaAnswers, other_position: int) -> bool:
        """Whether the entries at position and at other's other_position are the same
        bytes: with the same (version, writer), the same record (a tombstone and a value
        stamped alike, which only a bug or a restore gone wrong makes, are not)."""
        return self.entry(position) == other.entry(other_position)

    def record(self, position: int) -> replica_pb2.Record:
        """The record the entry at position stands for (a live value, or a tombstone when it
        has a version but is not found), to repair another replica with."""
        result = get_result(self.entry(position))
        version = self.versions[position]
        return replica_pb2.Record(
            key=result.key,
            value=result.value,
            version=version,
            writer=self.writers[position],
            tombstone=bool(version) and not result.found,
        )


def answers_of(keys: Sequence[bytes], reply: replica_pb2.ReadResponse) -> replica_pb2.ReadAnswers:
    """reply's answers to keys (a prefix when the node stopped at its byte budget); built
    from its records when the node answered records (a node from before ReadAnswers)."""
    if reply.HasField("answers"):
        answers: replica_pb2.ReadAnswers = reply.answers
        return answers
    fields = [
        (r.value, r.version, r.writer, r.tombstone) if r.version else None for r in reply.records
    ]
    return read_answers(keys, fields)


def split(replies: list[replica_pb2.ReadAnswers], sizes: Sequence[int]) -> list[ReplicaAnswers]:
    """The answers of one coalesced read (several replies when the node stopped at its
    byte budget and was asked again for the rest), split by chunk of sizes keys."""
    if len(replies) == 1:
        [reply] = replies
        entries, bounds = reply.entries, unpacked(UINT32, reply.bounds)
        versions, writers = unpacked(UINT64, reply.versions), unpacked(UINT32, reply.writers)
    else:  # a call's bytes stay far below 4 GiB: 1000 keys of at most 1 MiB (Limits)
        entries, bounds = b"".join(r.entries for r in replies), array(UINT32, [0])
        versions, writers = array(UINT64), array(UINT32)
        for reply in replies:
            base = bounds[-1]
            bounds.extend(base + bound for bound in unpacked(UINT32, reply.bounds)[1:])
            versions += unpacked(UINT64, reply.versions)
            writers += unpacked(UINT32, reply.writers)
    keys = sum(sizes)
    if (
        len(bounds) != keys + 1
        or len(versions) != keys
        or len(writers) != keys
        or (bounds[-1] != len(entries))
    ):
        raise ValueError(
            f"node answered {len(versions)} versions, {len(writers)} writers and"
            f" {len(bounds)} bounds over {len(entries)} bytes for {keys} keys"
        )
    # Entries lie side by side: each starts where the one before ends (a reply that says
    # otherwise fails its call, as one of the wrong size does, and its keys ask elsewhere).
    if not ascending(bounds):
        raise ValueError(f"node answered bounds that go backwards over {len(entries)} bytes")
    chunks: list[ReplicaAnswers] = []
    first = 0
    for size in sizes:
        last = first + size
        chunks.append(
            ReplicaAnswers(
                entries,
                bounds[first:last],
                bounds[first + 1 : last + 1],
                versions[first:last],
                writers[first:last],
            )
        )
        first = last
    return chunks


def python_ascending(bounds: array[int]) -> bool:
    """Whether bounds never go down (_spans.c checks it in C)."""
    listed = bounds.tolist()
    return listed == sorted(listed)


_SPANS = native.extension(native.SPANS)
ascending: Callable[[array[int]], bool] = python_ascending if _SPANS is None else _SPANS.ascending
