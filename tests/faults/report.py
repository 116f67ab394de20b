"""One line of figures per scenario, printed (pytest -s shows it) and kept for the summary."""

from __future__ import annotations

from faults.checker import Verdict
from faults.history import History


def scenario_line(
    name: str,
    history: History,
    verdict: Verdict,
    faults: list[str],
    converge_s: float,
    during: dict[str, int] | None = None,
) -> str:
    """during: acknowledged writes per fault, while it lasted."""
    described = [
        f"{f} ({during[f]} writes acknowledged meanwhile)" if during else f for f in faults
    ]
    line = (
        f"[{name}] {verdict.summary()} workload_s={history.elapsed_s:.1f}"
        f" faults={len(faults)} converge_s={converge_s:.2f} | " + "; ".join(described)
    )
    print(line)
    return line
