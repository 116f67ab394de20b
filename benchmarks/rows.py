"""A run's rows as the targets read them: finding a cell's row, and whether a row's
figures can back a verdict at all (targets.py)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

Row = dict[str, Any]


@dataclass(frozen=True)
class Verdict:
    """One target: what was measured, against what bound, and whether it was met."""

    name: str
    measured: str
    bound: str
    ratio: float | None
    verdict: str  # PASS, MISS or n/a

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def find(
    rows: Sequence[Row], system: str, *, section: str | None = None, **cell: Any
) -> Row | None:
    """The ok row of system for the cell matches names, or None; rows of the paired rounds
    only when section says "paired"."""
    for row in rows:
        if (
            row["status"] == "ok"
            and matches(row, system, **cell)
            and (row.get("section") == section if section else row.get("section") != "paired")
        ):
            return row
    return None


def matches(
    row: Row,
    system: str,
    *,
    mix: str,
    in_flight: int,
    batch: int = 1,
    keys: str = "uniform",
    value_bytes: int = 100,
    serializable: bool = False,
) -> bool:
    """Whether row is system's row of that cell, whatever its status and section."""
    cell = row["cell"]
    return bool(
        row["system"] == system
        and cell["mix"] == mix
        and cell["in_flight"] == in_flight
        and cell["batch"] == batch
        and cell["keys"] == keys
        and cell["value_bytes"] == value_bytes
        and cell.get("serializable", False) == serializable
    )


def na(name: str, bound: str, why: str) -> Verdict:
    return Verdict(name, f"n/a ({why})", bound, None, "n/a")


def flaws(row: Row) -> list[str]:
    """Why row's figures cannot support a PASS (empty when they can): failed calls (their
    time is spent sleeping, not measured), reads that did not find a key the preload wrote
    (a miss is cheaper than a hit, and a lost key is a failure in itself), and server
    processes that exited during the cell (survivors answer errors fast; their RSS stops
    growing). A row that does not record errors or misses cannot show it had none."""
    found: list[str] = []
    for count in ("errors", "misses"):
        if count not in row:
            found.append(f"{count} not recorded")
        elif row[count]:
            found.append(f"{row[count]:,} {count}")
    if row.get("exited"):
        found.append(f"exited: {', '.join(row['exited'])}")
    return found


def judged(
    name: str,
    measured: str,
    bound: str,
    ratio: float | None,
    met: bool,
    ours: Sequence[Row],
    peers: Sequence[Row] = (),
) -> Verdict:
    """The verdict of a measured target: PASS only when the bound is met and every row behind
    it is clean. A flawed row of the system under claim is a MISS (it did not serve its
    workload cleanly); else a flawed peer row makes the comparison meaningless, so n/a."""
    for row in ours:
        if mine := flaws(row):
            return Verdict(name, f"{measured} ({'; '.join(mine)})", bound, ratio, "MISS")
    for peer in peers:
        if theirs := flaws(peer):
            return na(name, bound, f"{peer['system']} cell unfit: {'; '.join(theirs)}")
    return Verdict(name, measured, bound, ratio, "PASS" if met else "MISS")
