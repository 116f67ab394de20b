"""One line of figures per scenario, printed (pytest -s shows it) and kept for the summary."""

from __future__ import annotations

from faults.checker import Verdict
from faults.history import History


def scenario_line(
    name: str, history: History, verdict: Verdict, faults: list[str], converge_s: float
) -> str:
    line = (
        f"[{name}] {verdict.summary()} workload_s={history.elapsed_s:.1f}"
        f" faults={len(faults)} converge_s={converge_s:.2f} | " + "; ".join(faults)
    )
    print(line)
    return line
