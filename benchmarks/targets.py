"""The speed targets of issue 16, judged against one run's results.

Each target names the cells it compares; a target whose cells did not run (etcd missing,
a profile without them) is reported as n/a, never as a pass. Nor does bad data pass: a
cell with failed calls, reads that missed preloaded keys, or a server that exited measured
a system that was not doing its job (a dead node answers fast), so such a cell of the
system under claim makes its target MISS, and such a peer cell, or a peer measured at 0,
makes a comparison n/a (see `rows.flaws`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from benchmarks.plan import BATCH_IN_FLIGHT, ETCD1, ETCD3, SHARDD, SHARDKV, SHARDKV12
from benchmarks.rows import Row, Verdict, find, flaws, judged, matches, na


def _cpu_per_key_us(row: Row, prefix: str) -> float | None:
    """Mean CPU µs per key of the row's processes whose name starts with prefix (r: the
    router, n: the nodes, e: etcd's members); None when none was measured."""
    per_1k = [v for name, v in (row.get("cpu_s_per_1k_keys") or {}).items() if name[0] == prefix]
    return sum(per_1k) * 1000 / len(per_1k) if per_1k else None


def _total_cpu_per_key_us(row: Row, prefixes: str) -> float | None:
    """CPU µs per key of all the row's server processes (names starting with one of
    prefixes): what the whole service spends on a key."""
    per_1k = [v for n, v in (row.get("cpu_s_per_1k_keys") or {}).items() if n[0] in prefixes]
    return sum(per_1k) * 1000 if per_1k else None


def _router_vs_node(name: str, row: Row | None) -> Verdict:
    """Router CPU per key over one node's (the mean of the cell's nodes), same cell."""
    bound = "<= 1.2x a node's"
    if row is None:
        return na(name, bound, "cell did not run")
    router, node = _cpu_per_key_us(row, "r"), _cpu_per_key_us(row, "n")
    if router is None or node is None or node <= 0:
        return na(name, bound, "router or node CPU not measured")
    ratio = router / node
    measured = f"router {router:.2f} µs vs node {node:.2f} µs per key"
    share = _share_read(row)
    if share is not None:
        measured += f" (a node read {share:.2f} of the keys: {node / share:.2f} µs per key it read)"
    return judged(name, measured, bound, round(ratio, 2), ratio <= 1.2, [row])


def _share_read(row: Row) -> float | None:
    """The mean node's keys read over the keys the cell read, when nodes read fewer than
    all of them (R of N owners asked): a node's CPU per key of the cell then covers a
    share of the keys only, while the router handles every one. None when not measured
    or when each node read every key (writes read none)."""
    keys_per_s = row.get("keys_per_s") or 0.0
    read = [m.get("keys_read_per_s", 0.0) for m in (row.get("node_metrics") or {}).values()]
    if not read or keys_per_s <= 0:
        return None
    share = sum(read) / len(read) / keys_per_s
    return share if 0 < share < 0.95 else None


Round = tuple[Row, Row]


@dataclass(frozen=True)
class Rounds:
    """The (ours, theirs) rows of each round of a comparison in which both served the cell,
    and why ours failed in a round, if it did (a round whose peer failed, or that ours did
    not run for want of a peer, is left out)."""

    found: list[Round]
    failed: str | None = None


def rounds(rows: Sequence[Row], ours: str, theirs: str, **cell: Any) -> Rounds:
    """The paired rounds of a cell (paired.py); without any, the cells each system ran
    alone, as one round."""
    by_round: dict[int, dict[str, Row]] = {}
    for row in rows:
        if row.get("section") == "paired":
            for system in (ours, theirs):
                if matches(row, system, **cell):
                    by_round.setdefault(row["round"], {})[system] = row
    if not by_round:
        mine, other = find(rows, ours, **cell), find(rows, theirs, **cell)
        return Rounds([] if mine is None or other is None else [(mine, other)])
    found: list[Round] = []
    failed = None
    for number, served in sorted(by_round.items()):
        mine, other = served.get(ours), served.get(theirs)
        if mine is None or mine["status"] == "failed":
            why = "did not run" if mine is None else mine.get("reason", "failed")
            failed = failed or f"{ours} in round {number + 1}: {why}"
        elif mine["status"] == "ok" and other is not None and other["status"] == "ok":
            found.append((mine, other))
    return Rounds(found, failed)


def _median_round(
    measured: Sequence[tuple[float, str]], *, lower_is_better: bool
) -> tuple[float, str]:
    """The median round's (figure, what was measured); of an even count (a round left
    out), the worse middle one. Names every round's figure when there were several."""
    ordered = sorted(measured)
    middle = len(ordered) // 2 if lower_is_better else (len(ordered) - 1) // 2
    figure, text = ordered[middle]
    if len(measured) > 1:
        figures = ", ".join(f"{m[0]:.2f}" for m in measured)
        text = f"{text}; median of {len(measured)} paired rounds ({figures})"
    return figure, text


def _compared(name: str, bound: str, paired: Rounds) -> Verdict | None:
    """The verdict of a comparison that cannot be measured: ours failed in a round (a MISS:
    it did not serve the cell), or no round in which both served it (n/a)."""
    if paired.failed is not None:
        return Verdict(name, f"failed: {paired.failed}"[:300], bound, None, "MISS")
    if not paired.found:
        return na(name, bound, "no cell or round that both systems served")
    return None


def _keys_vs(name: str, paired: Rounds, minimum: float, their_name: str) -> Verdict:
    """Keys per second of ours over theirs (batches: keys, not calls), the median round."""
    bound = f">= {minimum:g}x {their_name}"
    if unmeasured := _compared(name, bound, paired):
        return unmeasured
    found = paired.found
    if any(theirs["keys_per_s"] <= 0 for _, theirs in found):
        return na(name, bound, f"{their_name} measured 0 keys/s")
    measured = [
        (
            ours["keys_per_s"] / theirs["keys_per_s"],
            f"{ours['keys_per_s']:,.0f} vs {theirs['keys_per_s']:,.0f} keys/s",
        )
        for ours, theirs in found
    ]
    ratio, text = _median_round(measured, lower_is_better=False)
    ours_rows, their_rows = [r[0] for r in found], [r[1] for r in found]
    return judged(name, text, bound, round(ratio, 2), ratio >= minimum, ours_rows, their_rows)


def _server_cpu_vs_etcd(ours: Row | None, theirs: Row | None) -> Verdict:
    """CPU of every server process per replicated write: shardkv's router and nodes against
    etcd's three members, single puts at 256 in flight (no client CPU on either side)."""
    name = "Server CPU per replicated write (router + 3 nodes vs etcd's 3 members), 256 in flight"
    bound = "<= 0.333x etcd-3"
    if ours is None or theirs is None:
        return na(name, bound, f"{'shardkv' if ours is None else ETCD3} cell did not run")
    mine, other = _total_cpu_per_key_us(ours, "rn"), _total_cpu_per_key_us(theirs, "e")
    if mine is None or other is None or other <= 0:
        return na(name, bound, "server CPU not measured")
    ratio = mine / other
    measured = f"{mine:.2f} µs vs {other:.2f} µs per write"
    return judged(name, measured, bound, round(ratio, 2), ratio <= 1 / 3, [ours], [theirs])


def _p50_over_direct(name: str, paired: Rounds) -> Verdict:
    """p50 via the router less p50 of the same call asked of one shardd, 1 in flight, the
    median round."""
    bound = "<= direct + 1.0 ms"
    if unmeasured := _compared(name, bound, paired):
        return unmeasured
    found = paired.found
    if any(direct["latency_us"]["p50"] <= 0 for _, direct in found):
        return na(name, bound, "direct shardd measured a p50 of 0 ms")
    measured = []
    for router, direct in found:
        mine, theirs = router["latency_us"]["p50"] / 1000, direct["latency_us"]["p50"] / 1000
        text = f"{mine:.2f} ms vs {theirs:.2f} ms direct (+{mine - theirs:.2f} ms)"
        measured.append((mine - theirs, text))
    extra, text = _median_round(measured, lower_is_better=True)
    ours_rows, their_rows = [r[0] for r in found], [r[1] for r in found]
    return judged(name, text, bound, round(extra, 2), extra <= 1.0, ours_rows, their_rows)


def _growth_with_nodes(small: Row | None, large: Row | None) -> Verdict:
    """Router CPU per key with 12 nodes at 256 in flight over 3 nodes at 64 (the same load
    per node): a router that checks or connects to every node grows dearer with them."""
    name = "Router CPU per put, 12 nodes at 256 in flight vs 3 nodes at 64"
    bound = "<= 1.25x"
    if small is None or large is None:
        return na(name, bound, "cell did not run")
    if spoilt := flaws(small):
        return Verdict(name, f"3-node cell: {'; '.join(spoilt)}", bound, None, "MISS")
    mine, base = _cpu_per_key_us(large, "r"), _cpu_per_key_us(small, "r")
    if mine is None or base is None or base <= 0:
        return na(name, bound, "router CPU not measured")
    ratio = mine / base
    measured = f"{mine:.2f} µs vs {base:.2f} µs per put"
    return judged(name, measured, bound, round(ratio, 2), ratio <= 1.25, [large])


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
        return na(name, bound, "no steady run")
    row = steady[-1]
    if row["status"] != "ok":
        return na(name, bound, f"steady run {row['status']}: {row.get('reason', '')}")
    rss, anon = row["rss_samples"], row.get("anon_samples") or []
    if len(rss) < 2:
        return na(name, bound, "RSS not sampled")
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
    return judged(name, measured, bound, round(ratio, 3), ratio <= 1.10, [row])


def evaluate(rows: Sequence[Row], placement: dict[str, Any] | None = None) -> list[Verdict]:
    """Every target of issue 16, in the issue's order, then memory over the steady run.
    (placement is reported in its own section, not judged.)"""

    def cell(system: str, mix: str, in_flight: int, batch: int = 1) -> Row | None:
        return find(rows, system, mix=mix, in_flight=in_flight, batch=batch)

    verdicts = [
        _router_vs_node(
            "Router CPU per key vs a node's, Put at 256 in flight", cell(SHARDKV, "put-only", 256)
        ),
        _router_vs_node(
            "Router CPU per key vs a node's, Get at 256 in flight", cell(SHARDKV, "get-only", 256)
        ),
    ]
    for size in (100, 1000):
        for mix, what in (("put-only", "written"), ("get-only", "read")):
            verdicts.append(
                _router_vs_node(
                    f"Router CPU per key vs a node's, batches of {size} {what}",
                    cell(SHARDKV, mix, BATCH_IN_FLIGHT, size),
                )
            )
    batches = {"in_flight": BATCH_IN_FLIGHT, "batch": 100}
    verdicts += [
        _keys_vs(
            "Keys written/s via router, batches of 100, vs etcd-3 Txn of 100 puts",
            rounds(rows, SHARDKV, ETCD3, mix="put-only", **batches),
            1.5,
            ETCD3,
        ),
        _keys_vs(
            "Keys read/s via router, batches of 100, vs etcd-3 Txn of 100 ranges",
            rounds(rows, SHARDKV, ETCD3, mix="get-only", **batches),
            1.0,
            ETCD3,
        ),
        _server_cpu_vs_etcd(cell(SHARDKV, "put-only", 256), cell(ETCD3, "put-only", 256)),
        _p50_over_direct(
            "Get p50 via router vs direct shardd, 1 in flight",
            rounds(rows, SHARDKV, SHARDD, mix="get-only", in_flight=1),
        ),
        _p50_over_direct(
            "Put p50 via router vs direct shardd, 1 in flight",
            rounds(rows, SHARDKV, SHARDD, mix="put-only", in_flight=1),
        ),
        _growth_with_nodes(cell(SHARDKV, "put-only", 64), cell(SHARDKV12, "put-only", 256)),
        _rss_stable(rows),
    ]
    return verdicts


@dataclass(frozen=True)
class Comparison:
    """A figure reported beside its peer's, not judged: single-key ops/s against etcd."""

    name: str
    ours: float | None
    theirs: float | None

    @property
    def ratio(self) -> float | None:
        if self.ours is None or not self.theirs:
            return None
        return round(self.ours / self.theirs, 2)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "ratio": self.ratio}


def comparisons(rows: Sequence[Row]) -> list[Comparison]:
    """Single-key ops/s at 256 in flight against etcd-1 and etcd-3 (Gets against both its
    linearizable and its serializable Range). Clean rows only: a row with errors, misses
    or an exited server is left out (None)."""

    def rate(system: str, mix: str, *, serializable: bool = False) -> float | None:
        row = find(rows, system, mix=mix, in_flight=256, serializable=serializable)
        return None if row is None or flaws(row) else float(row["calls_per_s"])

    found = []
    for etcd in (ETCD1, ETCD3):
        found += [
            Comparison(f"Puts/s vs {etcd} Put", rate(SHARDKV, "put-only"), rate(etcd, "put-only")),
            Comparison(
                f"Gets/s vs {etcd} linearizable Range",
                rate(SHARDKV, "get-only"),
                rate(etcd, "get-only"),
            ),
            Comparison(
                f"Gets/s vs {etcd} serializable Range",
                rate(SHARDKV, "get-only"),
                rate(etcd, "get-only", serializable=True),
            ),
        ]
    return found
