"""Judges a history against the final state that every replica agreed on.

Every put writes a value no other put writes (workload.py), so a value names the put that
wrote it; stamps decide last-write-wins. A stamp is (version, writer), as on every replica
(common/hlc.py, ``precedes``): routers sharing one wall clock stamp writes of the same
millisecond with the same version, and the higher writer number wins the tie. The writer
of an operation is its router's (``writer_of``); the writer a read saw is its value's put's.
Each read and the final record are linked to the write that produced that exact value and
version, and a finding is raised when:

- phantom: a read or the final record holds a value no put wrote, or only a failed put.
- future: a read returned a value whose put began after the read ended.
- mislabelled: a value is seen under a version its put cannot have had: version 0, or
  above the version its put was acknowledged with, or a version its writer also stamped on
  another write (a writer's clock never stamps two writes alike). A lower version than the
  acknowledged one can be an earlier attempt: the SDK retries a put on UNAVAILABLE under a
  new version, so a read that overlapped the put may see the first attempt.
- reordered: one clock stamped a write that began after another one had ended with a lower
  version. A clock is a writer's: a router's hybrid logical clock (or a node's, serving
  alone); it only moves forward, across restarts too. Versions learned from what reads and the final
  record show for unknown-outcome puts count as well, so an old value relabelled with a
  newer version is caught here even when its put's outcome is unknown.
- unversioned: an acknowledged write with version 0 (it would escape every version check).
- lost: an acknowledged write whose stamp is above the final record's: the final record
  must be that write or a newer one. Likewise a stamp a read returned: a replica that
  answered with it had committed it, and replicas only ever move to higher stamps.
- silent_delete: the final record is a tombstone no delete wrote: no acknowledged delete
  has its version and no unknown-outcome delete could have been stamped with it.
- stale: a read returned a stamp below a write acknowledged before the read began (R + W
  > N promises that never happens), or not-found although the newest such write was a put
  and no delete can explain it: an acknowledged delete with a higher stamp that began
  before the read ended (a delete stamped with the put's version by a higher writer
  wins too), or an unknown-outcome delete that began before the read ended and
  could have been stamped after every write acknowledged before the read (on its own
  clock: it did not end before any of them began).
- discarded: an acknowledged write whose stamp is below that of a write on another clock
  that ended before it began: LWW threw it away the moment it was written, although it is
  the later one in real time. That is how LWW behaves when router clocks disagree (README,
  "What last-write-wins means under clock skew"); a caller may allow it.

What the checks cannot see. An unknown-outcome write's version is known only where a read
or the final record shows its value; a delete's never is (a tombstone names no delete), so
unknown deletes are judged by when they ran. Across clocks, versions say nothing about real
time: with skewed routers a write on one clock may carry any version relative to the other
clock's, so a stamp that contradicts real time across clocks is reported as a discard (an
acknowledged write lost to an earlier one), never as reordered, and an unknown delete on
one clock may explain a not-found read after any write on the other. With one writer
(``check``'s default) none of this slack exists.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from faults.history import DELETE, FAILED, GET, OK, PUT, Op
from faults.verdict import (
    DISCARDED,
    FUTURE,
    LOST,
    MISLABELLED,
    NO_RECORD,
    PHANTOM,
    REORDERED,
    SILENT_DELETE,
    STALE,
    UNVERSIONED,
    Final,
    Finding,
    Verdict,
)

# The writer number that stamped an operation's version: its router's (hlc.writer_number
# of the router's id). One writer is one clock.
WriterOf = Callable[[Op], int]


def one_writer(op: Op) -> int:
    """Every version comes from one writer: one router (or one node serving alone), named
    0 whatever its number."""
    return 0


def check(
    ops: Iterable[Op], final: Mapping[bytes, Final], *, writer_of: WriterOf = one_writer
) -> Verdict:
    """Runs every check of the module docstring over ops, given each key's final record.

    writer_of names the writer (router) that stamped an operation's version: ops of one
    writer must get versions in real-time order, ops of different writers need not, and
    equal versions of different writers order by writer, as LWW does on every replica.
    """
    by_key: defaultdict[bytes, list[Op]] = defaultdict(list)
    verdict = Verdict()
    for op in ops:
        by_key[op.key].append(op)
        _count(op, verdict)
    for key in sorted(by_key.keys() | final.keys()):
        history = _KeyHistory(key, by_key[key], final.get(key, NO_RECORD), writer_of)
        verdict.findings += history.findings()
    return verdict


def _count(op: Op, verdict: Verdict) -> None:
    verdict.ops += 1
    if op.is_write:
        verdict.acknowledged_writes += op.outcome == OK
        verdict.acknowledged_deletes += op.outcome == OK and op.kind == DELETE
        verdict.failed_writes += op.outcome == FAILED
        verdict.unknown_writes += op.outcome not in (OK, FAILED)
    elif op.outcome == OK:
        verdict.reads += 1
        verdict.reads_not_found += op.value is None
    else:
        verdict.failed_reads += 1


@dataclass(frozen=True, slots=True)
class _Stamp:
    """A version a write got: the one it was acknowledged with, or one that a read or the
    final record showed for its value."""

    write: Op
    version: int
    writer: int

    @property
    def order(self) -> tuple[int, int]:
        """What LWW compares (common/hlc.py, precedes)."""
        return self.version, self.writer


class _KeyHistory:
    """One key's operations and final record, and the checks that link them."""

    def __init__(self, key: bytes, ops: Sequence[Op], final: Final, writer_of: WriterOf) -> None:
        self.key = key
        self.final = final
        self.writer_of = writer_of
        self.reads = [op for op in ops if op.kind == GET and op.outcome == OK]
        self.writes = [op for op in ops if op.is_write and op.outcome != FAILED]
        # Acknowledged writes with a version: what the lost and stale checks go by.
        self.acked = [op for op in self.writes if op.outcome == OK and op.version]
        self.puts = _puts_by_value(key, ops)
        # Every stamp, with where it was seen (for messages).
        self.stamps: dict[_Stamp, str] = {
            self.acknowledged(op): "acknowledged" for op in self.acked
        }
        # Reads whose value and version link to a put's stamp, with that stamp.
        self.linked_reads: list[tuple[Op, _Stamp]] = []
        self._findings: list[Finding] = []

    def findings(self) -> list[Finding]:
        """Runs every check once; linking comes first, as it learns unknown writes' versions."""
        self._check_unversioned()
        self._link_reads_and_final()
        self._check_order()
        self._check_lost()
        self._check_tombstone()
        self._check_stale()
        return self._findings

    def acknowledged(self, op: Op) -> _Stamp:
        """The stamp op was acknowledged with."""
        return _Stamp(op, op.version, self.writer_of(op))

    def _add(self, kind: str, op: Op | None, why: str) -> None:
        self._findings.append(Finding(kind, self.key, op, why))

    def _check_unversioned(self) -> None:
        for op in self.writes:
            if op.outcome == OK and not op.version:
                self._add(UNVERSIONED, op, "acknowledged without a version")

    def _link_reads_and_final(self) -> None:
        for read in self.reads:
            if read.value is not None:
                self._link(read.value, read.version, read)
        if self.final.version and not self.final.tombstone:
            self._link(self.final.value, self.final.version, None)

    def _link(self, value: bytes, version: int, read: Op | None) -> None:
        """Finds the put that wrote value, seen under version by read (None: in the final
        record), checks the pair can be one of that put's stamps, and records the stamp."""
        seen = str(read) if read is not None else str(self.final)
        put = self.puts.get(value)
        if put is None:
            self._add(PHANTOM, read, f"no put of {self.key!r} wrote {value!r}")
        elif put.outcome == FAILED:
            self._add(PHANTOM, read, f"{value!r} was written only by a failed put: {put}")
        elif read is not None and put.start > read.end:
            self._add(FUTURE, read, f"its value's put began after the read ended: {put}")
        elif not version:
            self._add(MISLABELLED, read, f"{value!r} under version 0, written by {put}")
        elif put.outcome == OK and put.version and version > put.version:
            self._add(
                MISLABELLED,
                read,
                f"version {version} is above the one its put was acknowledged with: {put}",
            )
        else:
            stamp = _Stamp(put, version, self.writer_of(put))
            self.stamps.setdefault(stamp, seen)
            if read is not None:
                self.linked_reads.append((read, stamp))

    def _check_order(self) -> None:
        """A clock stamps each write once with a new version, in real-time order; across
        clocks an earlier write's higher version discards a later acknowledged one."""
        owner: dict[tuple[int, int], _Stamp] = {}
        for stamp, seen in self.stamps.items():
            first = owner.setdefault((stamp.writer, stamp.version), stamp)
            if first.write != stamp.write:
                self._add(
                    MISLABELLED,
                    stamp.write,
                    f"version {stamp.version} ({seen}) was also stamped on {first.write}",
                )
        for stamp, seen in self.stamps.items():
            same, other = self._highest_before(stamp)
            if same is not None and same.version > stamp.version:
                self._add(
                    REORDERED,
                    stamp.write,
                    f"version {stamp.version} ({seen}) is below version {same.version}"
                    f" ({self.stamps[same]}) of {same.write}, which ended before it began",
                )
            acknowledged = stamp.write.outcome == OK and stamp.version == stamp.write.version
            if acknowledged and other is not None and other.order > stamp.order:
                self._add(
                    DISCARDED,
                    stamp.write,
                    f"lost at once to version {other.version} ({self.stamps[other]})"
                    f" of {other.write} on another clock, which ended before it began",
                )

    def _highest_before(self, stamp: _Stamp) -> tuple[_Stamp | None, _Stamp | None]:
        """The highest stamps, on stamp's clock and on other clocks, of writes that ended
        before stamp's write began."""
        same: _Stamp | None = None
        other: _Stamp | None = None
        for earlier in self.stamps:
            if earlier.write.end >= stamp.write.start:
                continue
            if earlier.writer == stamp.writer:
                if same is None or earlier.version > same.version:
                    same = earlier
            elif other is None or earlier.order > other.order:
                other = earlier
        return same, other

    def _check_lost(self) -> None:
        final = (self.final.version, self.final.writer)
        for op in self.acked:
            if final < self.acknowledged(op).order:
                self._add(LOST, op, f"the {self.final} is older")
        for read, stamp in self.linked_reads:
            if final < stamp.order:
                self._add(LOST, read, f"the version it read is above the {self.final}")

    def _check_tombstone(self) -> None:
        """A final tombstone must be a delete's: an acknowledged one with its stamp
        (version and writer), or an unknown-outcome one whose clock is the tombstone's
        writer and could have stamped that version."""
        final = self.final
        if not (final.version and final.tombstone):
            return
        deletes = [op for op in self.writes if op.kind == DELETE and self._final_writer(op)]
        if any(op.outcome == OK and op.version == final.version for op in deletes):
            return
        if any(op.outcome != OK and self._could_stamp(op, final.version) for op in deletes):
            return
        self._add(
            SILENT_DELETE,
            None,
            f"no delete wrote the {self.final} ({len(deletes)} deletes of the key, none"
            " acknowledged with that version or could have been stamped with it)",
        )

    def _final_writer(self, write: Op) -> bool:
        """Whether write's writer is the final record's: the same number, or the one writer
        of a history that names none (one_writer's 0)."""
        return self.writer_of(write) in (0, self.final.writer)

    def _could_stamp(self, write: Op, version: int) -> bool:
        """Whether write's clock could have stamped it with version, given the stamps known
        on that clock: not taken, above every write that ended before it began, below
        every write that began after it ended."""
        writer = self.writer_of(write)
        for stamp in self.stamps:
            if stamp.write == write or stamp.writer != writer:
                continue
            if stamp.version == version:
                return False
            if stamp.write.end < write.start and stamp.version > version:
                return False
            if write.end < stamp.write.start and stamp.version < version:
                return False
        return True

    def _check_stale(self) -> None:
        for read in self.reads:
            before = [op for op in self.acked if op.end < read.start]
            if not before:
                continue
            newest = max(before, key=lambda op: self.acknowledged(op).order)
            if read.value is not None and self._read(read) < self.acknowledged(newest).order:
                self._add(STALE, read, f"older than {newest}, acknowledged before it began")
            elif read.value is None and newest.kind == PUT and not self._deleted(read, before):
                self._add(
                    STALE,
                    read,
                    f"not found, but {newest} was acknowledged before it began and no delete"
                    " can be ordered after it",
                )

    def _read(self, read: Op) -> tuple[int, int]:
        """The stamp a read with a value saw: its version and the writer of its value's
        put (a value no put wrote is a phantom: writer 0 here)."""
        put = self.puts.get(read.value) if read.value is not None else None
        return read.version, self.writer_of(put) if put is not None else 0

    def _deleted(self, read: Op, before: Sequence[Op]) -> bool:
        """Whether a delete explains a not-found read, given the acknowledged writes that
        ended before the read began (the newest of which is a put)."""
        newest = max(self.acknowledged(op).order for op in before)
        for delete in self.writes:
            if delete.kind != DELETE or delete.start >= read.end:
                continue
            if delete.outcome == OK and self.acknowledged(delete).order > newest:
                return True
            if delete.outcome != OK and self._may_follow(delete, before):
                return True
        return False

    def _may_follow(self, write: Op, before: Sequence[Op]) -> bool:
        """Whether write's clock may have stamped it above every write in before: true
        unless it ended before one of those on its own clock began."""
        writer = self.writer_of(write)
        return not any(write.end < op.start for op in before if self.writer_of(op) == writer)


def _puts_by_value(key: bytes, ops: Iterable[Op]) -> dict[bytes, Op]:
    """Each put's value to the put; the workload writes every value once, so a value names
    its write. A repeated value breaks that premise, so it is refused."""
    puts: dict[bytes, Op] = {}
    for op in ops:
        if op.kind == PUT and op.value is not None:
            if op.value in puts:
                raise ValueError(
                    f"key {key!r}: {op.value!r} written twice ({puts[op.value]}; {op}):"
                    " the checker needs every put's value to be unique"
                )
            puts[op.value] = op
    return puts
