"""One line of figures per scenario, printed (pytest -s shows it) and kept for the summary."""

from __future__ import annotations

from faults.history import History
from faults.verdict import Verdict


def scenario_line(
    name: str,
    history: History,
    verdict: Verdict,
    faults: list[str],
    converge_s: float,
    during: dict[str, int] | None = None,
    reads: dict[str, int] | None = None,
) -> str:
    """during: acknowledged writes per fault, while it lasted; reads: successful reads per
    fault, while it lasted (history.reads_during)."""
    described = [_fault_figures(f, during or {}, reads or {}) for f in faults]
    line = (
        f"[{name}] {verdict.summary()} workload_s={history.elapsed_s:.1f}"
        f" faults={len(faults)} converge_s={converge_s:.2f} | " + "; ".join(described)
    )
    print(line)
    return line


def _fault_figures(fault: str, during: dict[str, int], reads: dict[str, int]) -> str:
    figures = [f"{during[fault]} writes acknowledged"] if fault in during else []
    figures += [f"{reads[fault]} reads ok"] if fault in reads else []
    return f"{fault} ({', '.join(figures)} meanwhile)" if figures else fault
