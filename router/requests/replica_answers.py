"""One node's answers to one chunk of a batch read (replica.proto, ReadAnswers).

The batch read path compares replicas by the (version, writer) of each key, which names one
write, and answers with the newest one's entry as the node serialized it; it parses an entry
only to repair a replica that answered an older record.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from shardkv.common.answers import get_result, read_answers
from shardkv.v1 import replica_pb2


@dataclass(slots=True)
class ReplicaAnswers:
    """Per key of a chunk, in its order: where its entry lies in entries (shared by the
    chunks of one reply), its version (0: none held) and its writer."""

    entries: bytes
    starts: list[int]
    ends: list[int]
    versions: list[int]
    writers: list[int]

    @property
    def size(self) -> int:
        """Bytes of the chunk's entries."""
        return self.ends[-1] - self.starts[0] if self.ends else 0

    def entry(self, position: int) -> bytes:
        return self.entries[self.starts[position] : self.ends[position]]

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
    entries = replies[0].entries if len(replies) == 1 else b"".join(r.entries for r in replies)
    ends: list[int] = []
    versions: list[int] = []
    writers: list[int] = []
    for reply in replies:
        base = ends[-1] if ends else 0
        ends += reply.ends if not base else [base + end for end in reply.ends]
        versions += reply.versions
        writers += reply.writers
    starts = [0, *ends[:-1]]
    chunks: list[ReplicaAnswers] = []
    first = 0
    for size in sizes:
        last = first + size
        chunks.append(
            ReplicaAnswers(
                entries,
                starts[first:last],
                ends[first:last],
                versions[first:last],
                writers[first:last],
            )
        )
        first = last
    return chunks
