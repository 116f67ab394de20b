"""What the history checker (checker.py) reports: the kinds of finding, each finding, the
verdict with the figures a report quotes, and the final record a key's replicas agree on."""

from __future__ import annotations

from dataclasses import dataclass, field

from shardkv.v1 import replica_pb2

from faults.history import Op

PHANTOM, FUTURE, MISLABELLED, REORDERED = "phantom", "future", "mislabelled", "reordered"
UNVERSIONED, LOST, SILENT_DELETE = "unversioned", "lost", "silent_delete"
STALE, DISCARDED = "stale", "discarded"
KINDS = (
    PHANTOM, FUTURE, MISLABELLED, REORDERED, UNVERSIONED, LOST, SILENT_DELETE, STALE, DISCARDED
)  # fmt: skip


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

    def __str__(self) -> str:
        held = "tombstone" if self.tombstone else f"value={self.value!r}"
        return f"final record {held} version={self.version} writer={self.writer}"


NO_RECORD = Final(0, 0, False, b"")


@dataclass(frozen=True, slots=True)
class Finding:
    """One violation: its kind, the key, the operation at fault (None: the final record)
    and why, naming the other operation or record that shows it."""

    kind: str
    key: bytes
    op: Op | None
    why: str

    def __str__(self) -> str:
        subject = str(self.op) if self.op is not None else f"final record of {self.key!r}"
        return f"{self.kind.upper()} {subject}: {self.why}"


@dataclass
class Verdict:
    """What the checks found, and the figures a report quotes."""

    ops: int = 0
    acknowledged_writes: int = 0
    unknown_writes: int = 0
    failed_writes: int = 0
    # Successful reads (not-found answers included) and how many of them were not-found.
    reads: int = 0
    reads_not_found: int = 0
    failed_reads: int = 0
    acknowledged_deletes: int = 0
    findings: list[Finding] = field(default_factory=list)

    def of(self, kind: str) -> list[Finding]:
        """The findings of one kind (one of KINDS)."""
        return [finding for finding in self.findings if finding.kind == kind]

    @property
    def discarded(self) -> list[Finding]:
        return self.of(DISCARDED)

    def summary(self) -> str:
        counts = " ".join(f"{kind}={len(self.of(kind))}" for kind in KINDS)
        return (
            f"ops={self.ops} acknowledged_writes={self.acknowledged_writes}"
            f" (deletes {self.acknowledged_deletes}) unknown_writes={self.unknown_writes}"
            f" failed_writes={self.failed_writes} reads_ok={self.reads}"
            f" (not found {self.reads_not_found}) reads_failed={self.failed_reads} {counts}"
        )

    def problems(self, *, allow_discards: bool = False) -> list[str]:
        """Human-readable lines for every violation, at most 20 per kind (empty when the
        history is clean). allow_discards: LWW discards across clocks are expected."""
        lines: list[str] = []
        for kind in KINDS:
            if not (allow_discards and kind == DISCARDED):
                lines += [str(finding) for finding in self.of(kind)[:20]]
        return lines
