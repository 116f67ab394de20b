"""Judges a history against the final state that every replica agreed on.

Versions decide last-write-wins, so the checks speak in versions:

- lost: an acknowledged write whose version is above the final record's. The final record
  must be that write or one with a higher version; anything else means the write was
  dropped after it was acknowledged (a durability bug).
- stale: a read that returned a version below a write acknowledged before the read began
  (R + W > N promises that never happens), or that returned not-found although the newest
  such write was a put and no delete could explain it.
- phantom: a read or the final state holding a value no put (acknowledged or unknown) wrote.
- discarded: an acknowledged write whose version is below that of a write to the same key
  acknowledged before it began: LWW threw it away the moment it was written, although it
  is the later one in real time. That happens when versions disagree with real time (clock
  skew between routers); with one router, whose clock only moves forward, it never must.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from shardkv.v1 import replica_pb2

from faults.history import DELETE, FAILED, GET, OK, PUT, Op


@dataclass(frozen=True, slots=True)
class Final:
    """The record every replica holds for a key at the end (version 0: no record)."""

    version: int
    writer: int
    tombstone: bool
    value: bytes

    @classmethod
    def of(cls, record: replica_pb2.Record) -> Final:
        return cls(record.version, record.writer, record.tombstone, record.value)


@dataclass
class Verdict:
    """What the checks found, and the figures a report quotes."""

    ops: int = 0
    acknowledged_writes: int = 0
    unknown_writes: int = 0
    failed_writes: int = 0
    reads: int = 0
    acknowledged_deletes: int = 0
    lost: list[tuple[Op, Final]] = field(default_factory=list)
    stale: list[tuple[Op, Op]] = field(default_factory=list)
    phantoms: list[Op] = field(default_factory=list)
    discarded: list[tuple[Op, Op]] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"ops={self.ops} acknowledged_writes={self.acknowledged_writes}"
            f" (deletes {self.acknowledged_deletes}) unknown_writes={self.unknown_writes}"
            f" failed_writes={self.failed_writes} reads_ok={self.reads} lost={len(self.lost)}"
            f" stale_reads={len(self.stale)} phantoms={len(self.phantoms)}"
            f" lww_discards={len(self.discarded)}"
        )

    def problems(self, *, allow_discards: bool = False) -> list[str]:
        """Human-readable lines for every violation (empty when the history is clean)."""
        lines = [f"LOST {op} final={final}" for op, final in self.lost[:20]]
        lines += [f"STALE {read} newer acknowledged {write}" for read, write in self.stale[:20]]
        lines += [f"PHANTOM {op}" for op in self.phantoms[:20]]
        if not allow_discards:
            lines += [f"DISCARDED {op} by earlier {by}" for op, by in self.discarded[:20]]
        return lines


def check(ops: Iterable[Op], final: Mapping[bytes, Final]) -> Verdict:
    """Runs every check of the module docstring over ops, given each key's final record."""
    by_key: defaultdict[bytes, list[Op]] = defaultdict(list)
    verdict = Verdict()
    for op in ops:
        by_key[op.key].append(op)
        verdict.ops += 1
        if op.is_write:
            verdict.acknowledged_writes += op.outcome == OK
            verdict.acknowledged_deletes += op.outcome == OK and op.kind == DELETE
            verdict.failed_writes += op.outcome == FAILED
            verdict.unknown_writes += op.outcome not in (OK, FAILED)
        else:
            verdict.reads += op.outcome == OK
    for key, key_ops in by_key.items():
        _check_key(key_ops, final.get(key, Final(0, 0, False, b"")), verdict)
    return verdict


def _check_key(ops: list[Op], final: Final, verdict: Verdict) -> None:
    writes = [op for op in ops if op.is_write and op.outcome != FAILED]
    acked = sorted((op for op in writes if op.outcome == OK), key=lambda op: op.end)
    written_values = {op.value for op in writes if op.kind == PUT}

    # lost: an acknowledged version above the final one
    for op in acked:
        if final.version < op.version:
            verdict.lost.append((op, final))

    # phantom: the final value or a read value that no put wrote
    if final.version and not final.tombstone and final.value not in written_values:
        verdict.phantoms.append(Op("final", PUT, ops[0].key, final.value, 0, 0, OK, final.version))
    for read in (op for op in ops if op.kind == GET and op.outcome == OK):
        if read.value is not None and read.value not in written_values:
            verdict.phantoms.append(read)
        newest = max(
            (w for w in acked if w.end < read.start), key=lambda w: w.version, default=None
        )
        if newest is not None and _stale(read, newest, writes):
            verdict.stale.append((read, newest))

    # discarded: a write acknowledged earlier in real time carries a higher version, so
    # this one lost the moment it was written
    ended = sorted(acked, key=lambda op: op.end)
    index, highest = 0, None
    for op in sorted(acked, key=lambda op: op.start):
        while index < len(ended) and ended[index].end < op.start:
            if highest is None or ended[index].version > highest.version:
                highest = ended[index]
            index += 1
        if highest is not None and highest.version > op.version:
            verdict.discarded.append((op, highest))


def _stale(read: Op, newest: Op, writes: list[Op]) -> bool:
    """Whether read is older than newest, an acknowledged write that ended before it began."""
    if read.value is not None:
        return read.version < newest.version
    if newest.kind == DELETE:
        return False
    # Not found after an acknowledged put: only a delete newer than the put explains it.
    return not any(
        w.kind == DELETE and w.start < read.end and (not w.version or w.version > newest.version)
        for w in writes
    )
