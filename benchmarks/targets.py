"""The speed targets of issue 5, judged against one run's results.

Each target names the cells it compares; a target whose cells did not run (etcd missing,
a profile without them) is reported as n/a, never as a pass. Nor does bad data pass: a
cell with failed calls, reads that missed preloaded keys, or a server that exited measured
a system that was not doing its job (a dead node answers fast), so such a cell of the
system under claim makes its target MISS, and such a peer cell, or a peer measured at 0,
makes a comparison n/a (see `flaws`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from benchmarks.plan import BATCH_IN_FLIGHT, ETCD1, ETCD3, SHARDD, SHARDKV

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
    rows: Sequence[Row],
    system: str,
    *,
    mix: str,
    in_flight: int,
    batch: int = 1,
    keys: str = "uniform",
    value_bytes: int = 100,
    section: str | None = None,
) -> Row | None:
    """The ok row of system for that cell, or None."""
    for row in rows:
        cell = row["cell"]
        if (
            row["system"] == system
            and row["status"] == "ok"
            and cell["mix"] == mix
            and cell["in_flight"] == in_flight
            and cell["batch"] == batch
            and cell["keys"] == keys
            and cell["value_bytes"] == value_bytes
            and (section is None or row.get("section") == section)
        ):
            return row
    return None


def _na(name: str, bound: str, why: str) -> Verdict:
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


def _judged(
    name: str,
    measured: str,
    bound: str,
    ratio: float | None,
    met: bool,
    ours: Row,
    peer: Row | None = None,
) -> Verdict:
    """The verdict of a measured target: PASS only when the bound is met and every row behind
    it is clean. A flawed row of the system under claim is a MISS (it did not serve its
    workload cleanly); a flawed peer row makes the comparison meaningless, so n/a."""
    if mine := flaws(ours):
        return Verdict(name, f"{measured} ({'; '.join(mine)})", bound, ratio, "MISS")
    if peer is not None and (theirs := flaws(peer)):
        return _na(name, bound, f"{peer['system']} cell unfit: {'; '.join(theirs)}")
    return Verdict(name, measured, bound, ratio, "PASS" if met else "MISS")


def _ratio_at_least(
    name: str, ours: Row | None, theirs: Row | None, minimum: float, what: str, their_name: str
) -> Verdict:
    bound = f">= {minimum:g}x {their_name}"
    if ours is None or theirs is None:
        missing = "shardkv" if ours is None else their_name
        return _na(name, bound, f"{missing} cell did not run")
    mine, other = ours["calls_per_s"], theirs["calls_per_s"]
    if other <= 0:
        # Any rate over nothing is "infinitely" better, which says nothing about either.
        return _na(name, bound, f"{their_name} measured {other:g} {what}")
    ratio = mine / other
    measured = f"{mine:,.0f} vs {other:,.0f} {what}"
    return _judged(name, measured, bound, round(ratio, 2), ratio >= minimum, ours, theirs)


def _at_most(
    name: str,
    value: float | None,
    maximum: float,
    unit: str,
    why_missing: str = "cell did not run",
    source: Row | None = None,
) -> Verdict:
    """value against a ceiling; source is the row value was read from (None for figures
    measured outside the load generator), whose flaws forbid a PASS."""
    bound = f"<= {maximum:g} {unit}"
    if value is None:
        return _na(name, bound, why_missing)
    ratio = value / maximum
    measured = f"{value:,.3g} {unit}"
    if source is not None:
        return _judged(name, measured, bound, round(ratio, 2), value <= maximum, source)
    return Verdict(name, measured, bound, round(ratio, 2), "PASS" if value <= maximum else "MISS")


def _at_least(
    name: str, source: Row | None, value: float | None, minimum: float, unit: str
) -> Verdict:
    """value, read from the row source, against a floor."""
    bound = f">= {minimum:,.0f} {unit}"
    if source is None or value is None:
        return _na(name, bound, "cell did not run")
    ratio = value / minimum
    measured = f"{value:,.0f} {unit}"
    return _judged(name, measured, bound, round(ratio, 2), value >= minimum, source)


def _p50_ms(row: Row | None) -> float | None:
    return None if row is None else row["latency_us"]["p50"] / 1000


def _keys_per_s(row: Row | None) -> float | None:
    return None if row is None else float(row["keys_per_s"])


def _router_vs_direct(rows: Sequence[Row], in_flight: int) -> Verdict:
    """Mean latency of a Get via the router over a Get asked of one shardd directly, at the
    same concurrency (in a closed loop this is also the inverse throughput ratio)."""
    name = f"Get via router vs direct shardd, {in_flight} in flight (mean latency)"
    bound = "<= 1.5x direct"
    router = find(rows, SHARDKV, mix="get-only", in_flight=in_flight)
    direct = find(rows, SHARDD, mix="get-only", in_flight=in_flight)
    if router is None or direct is None:
        return _na(name, bound, "cell did not run")
    mine, theirs = router["latency_us"]["mean"], direct["latency_us"]["mean"]
    if theirs <= 0:
        return _na(name, bound, f"direct shardd measured a mean of {theirs:g} µs")
    ratio = mine / theirs
    measured = f"{mine / 1000:.2f} ms vs {theirs / 1000:.2f} ms"
    return _judged(name, measured, bound, round(ratio, 2), ratio <= 1.5, router, direct)


def _growth(samples: Sequence[dict[str, float]]) -> dict[str, float]:
    """Per process: the last sample over the first."""
    first, last = samples[0], samples[-1]
    return {p: last[p] / first[p] for p in first if p != "t_s" and p in last and first[p]}


def _gone(row: Row) -> list[str]:
    """Processes that exited during row's cell: those the row names as exited, and any
    process of the first RSS sample that a later sample lacks or reads as 0 (a process that
    is gone has no RSS to read, and comparing only the survivors would call a crash stable)."""
    names = [p for p in row["rss_samples"][0] if p != "t_s"]
    gone = {p for p in names for sample in row["rss_samples"] if not sample.get(p)}
    return sorted(gone | set(row.get("exited") or ()))


def _rss_stable(rows: Sequence[Row]) -> Verdict:
    """Every process's RSS at the end of the steady run within 10% of the first sample
    (taken when warm-up ended). The anonymous part is shown beside it: LMDB's mapped file
    counts in a node's RSS as the data it touches grows, a leak shows in the heap."""
    name = "RSS stable in a steady run (end vs after warm-up)"
    bound = "<= 1.10x"
    steady = [r for r in rows if r.get("section") == "steady"]
    if not steady:
        return _na(name, bound, "no steady run")
    row = steady[-1]
    if row["status"] != "ok":
        return _na(name, bound, f"steady run {row['status']}: {row.get('reason', '')}")
    rss, anon = row["rss_samples"], row.get("anon_samples") or []
    if len(rss) < 2:
        return _na(name, bound, "RSS not sampled")
    if gone := _gone(row):
        return Verdict(name, f"exited during the run: {', '.join(gone)}", bound, None, "MISS")
    growth = _growth(rss)
    worst = max(growth, key=lambda p: growth[p])
    measured = (
        f"worst {worst}: {rss[0][worst]:.0f} -> {rss[-1][worst]:.0f} MiB"
        f" over {row['window_s'] / 60:.1f} min"
    )
    if len(anon) >= 2:
        anon_growth = _growth(anon)
        worst_anon = max(anon_growth, key=lambda p: anon_growth[p])
        measured += (
            f"; anonymous memory: worst {worst_anon} {anon[0][worst_anon]:.0f} ->"
            f" {anon[-1][worst_anon]:.0f} MiB"
        )
    ratio = growth[worst]
    return _judged(name, measured, bound, round(ratio, 3), ratio <= 1.10, row)


def evaluate(rows: Sequence[Row], placement: dict[str, Any] | None) -> list[Verdict]:
    """Every target of issue 5, in the issue's order."""

    def cell(system: str, mix: str, in_flight: int, batch: int = 1) -> Row | None:
        return find(rows, system, mix=mix, in_flight=in_flight, batch=batch)

    get1, put1 = cell(SHARDKV, "get-only", 1), cell(SHARDKV, "put-only", 1)
    put_batch = cell(SHARDKV, "put-only", BATCH_IN_FLIGHT, 1000)
    get_batch = cell(SHARDKV, "get-only", BATCH_IN_FLIGHT, 1000)
    verdicts = [
        _ratio_at_least(
            "Put ops/s via router at 256 in flight vs etcd 3 members",
            cell(SHARDKV, "put-only", 256),
            cell(ETCD3, "put-only", 256),
            2.0,
            "Puts/s",
            ETCD3,
        ),
        _ratio_at_least(
            "Put ops/s via router at 256 in flight vs etcd 1 member",
            cell(SHARDKV, "put-only", 256),
            cell(ETCD1, "put-only", 256),
            1.5,
            "Puts/s",
            ETCD1,
        ),
        _ratio_at_least(
            "Get ops/s (R=2) at 256 in flight vs etcd 1 member Range",
            cell(SHARDKV, "get-only", 256),
            cell(ETCD1, "get-only", 256),
            4.0,
            "Gets/s",
            ETCD1,
        ),
        _at_most("Get p50 via router, 1 in flight", _p50_ms(get1), 1.5, "ms", source=get1),
        _at_most("Put p50 via router, 1 in flight", _p50_ms(put1), 2.5, "ms", source=put1),
        _at_least(
            "Keys written/s via router, batches of 1000",
            put_batch,
            _keys_per_s(put_batch),
            100_000,
            "keys/s",
        ),
        _at_least(
            "Keys read/s via router, batches of 1000",
            get_batch,
            _keys_per_s(get_batch),
            200_000,
            "keys/s",
        ),
        _router_vs_direct(rows, 1),
        _router_vs_direct(rows, 256),
    ]
    lookup = balance = None
    if placement:
        lookup = placement["lookup_us"]["100"]["median_us"]
        balance = placement["balance"]["max_over_mean"]
    verdicts += [
        _at_most(
            "Preference list at 100 nodes (median per lookup)",
            lookup,
            5.0,
            "µs",
            "placement not measured",
        ),
        _at_most(
            "Most loaded node over mean, 100 nodes, N=3",
            balance,
            1.10,
            "x",
            "placement not measured",
        ),
        _rss_stable(rows),
    ]
    return verdicts
