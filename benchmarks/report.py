"""The Markdown report of one run: where it ran, the targets, and a table per section."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.plan import PAIRED_ROUNDS, SYSTEM_TITLES

Row = dict[str, Any]
# Cores used by processes not under test above which a cell is flagged as disturbed.
NOISY_CORES = 0.25

SECTIONS = {
    "sweep": "Single-key calls against concurrency (100 B values, uniform keys)",
    "mixes": "Workloads at 256 in flight (100 B values)",
    "values": "1 KiB values at 256 in flight (uniform keys)",
    "batches": "Batches (one BatchWrite/BatchGet; etcd: one Txn) ",
    "nodes": "One router in front of more nodes (single puts, 100 B values, uniform keys)",
    "steady": "Steady run",
    "paired": "Paired rounds (both systems up at once, taking turns; the targets comparing two"
    " systems take the median round)",
}

HOW = f"""\
How it was measured: every system runs as its own processes on this machine, started by
the benchmark (data in temp dirs on the same disk, loopback ports). One client process
drives each system with an asyncio closed loop of K operations in flight; a cell warms
up, then counts the calls that finish in its window. shardkv is driven through
`shardkv.client.AsyncClient` (so concurrent single-key calls are coalesced by the SDK, as
users get them); etcd through aetcd's generated stubs on a plain grpc.aio channel, one
unary Put or Range per operation (linearizable, etcd's default, unless the workload says
serializable), round-robin over its members. Latency is
per call (HdrHistogram, 3 significant digits). CPU is user+system time of each process
over the window, from /proc, per 1000 keys; `client` is the load generator itself;
"other CPU" is the cores' worth used meanwhile by processes not under test (anything
well above 0 means the cell competed with something else for the two cores; before each
cell the run waits a few seconds, within a budget, for such processes to calm down).
Keys are read from a keyspace preloaded before the first cell of each system. The targets
that compare two systems (batches of 100 against etcd-3, one call in flight against a lone
shardd) are measured again at the end in paired rounds: both systems up at once, each
running the cell in turn, {PAIRED_ROUNDS} rounds alternating which goes first; the median
round decides, since this VM's speed drifts over the minutes between two systems' own
cells."""


def _system(row: Row) -> str:
    """The row's system, with its round when it ran in the paired rounds."""
    return row["system"] if "round" not in row else f"{row['system']} (round {row['round'] + 1})"


def _ms(us: float) -> str:
    return f"{us / 1000:.2f}"


def _cpu(row: Row) -> str:
    per = row.get("cpu_s_per_1k_keys") or {}
    return " · ".join(f"{name} {value:.3f}" for name, value in per.items()) or "-"


def _rss(row: Row) -> str:
    rss = row.get("rss_mb") or {}
    return " · ".join(f"{name} {value:.0f}" for name, value in rss.items()) or "-"


def _mix(cell: dict[str, Any]) -> str:
    return f"{cell['mix']} serializable" if cell.get("serializable") else cell["mix"]


def _call(cell: dict[str, Any]) -> str:
    return "single" if cell["batch"] == 1 else f"batch {cell['batch']}"


def _table(rows: Sequence[Row]) -> list[str]:
    lines = [
        "| system | workload | keys | value | call | in flight | calls/s | keys/s "
        "| p50 ms | p99 ms | p99.9 ms | errors | CPU s per 1k keys | other CPU | RSS MiB |",
        "|---|---|---|---|---|--:|--:|--:|--:|--:|--:|--:|---|--:|---|",
    ]
    for row in rows:
        cell = row["cell"]
        head = (
            f"| {_system(row)} | {_mix(cell)} | {cell['keys']} | {cell['value_bytes']} B "
            f"| {_call(cell)} | {cell['in_flight']} "
        )
        if row["status"] != "ok":
            reason = row.get("reason", row["status"])
            lines.append(head + f"| {row['status']} | | | | | | | {reason} | | |")
            continue
        lat = row["latency_us"]
        errors = str(row["errors"])
        if row["error_kinds"]:
            errors += " (" + ", ".join(f"{k} {v}" for k, v in row["error_kinds"].items()) + ")"
        # What makes a row unfit for a target (rows.flaws) shows where the errors do.
        if row.get("misses"):
            errors += f"; {row['misses']:,} reads missed"
        if row.get("exited"):
            errors += f"; exited: {', '.join(row['exited'])}"
        lines.append(
            head + f"| {row['calls_per_s']:,.0f} | {row['keys_per_s']:,.0f} "
            f"| {_ms(lat['p50'])} | {_ms(lat['p99'])} | {_ms(lat['p99.9'])} | {errors} "
            f"| {_cpu(row)} | {row['other_cpu_cores']:.2f} | {_rss(row)} |"
        )
    return lines


def _inside(rows: Sequence[Row]) -> list[str]:
    """Per cell with node figures: each node's commits/s x records per commit, and the
    busiest methods with their mean time from arrival to answer."""
    measured = [r for r in rows if r["status"] == "ok" and r.get("node_metrics")]
    if not measured:
        return []
    lines = [
        "## Inside the nodes",
        "",
        "From each shardd's metrics endpoint over the same windows: group commits per second x"
        " records per commit (one LMDB transaction and fsync each), and per gRPC method calls"
        " per second and mean milliseconds from arrival to answer (Replica/Apply includes"
        " waiting for its group commit).",
        "",
        "| system | workload | call | in flight | per node |",
        "|---|---|---|--:|---|",
    ]
    for row in measured:
        cell = row["cell"]
        nodes = []
        for node, figures in row["node_metrics"].items():
            methods = sorted(figures["methods"].items(), key=lambda m: -m[1]["calls_per_s"])
            calls = ", ".join(
                f"{name} {m['calls_per_s']:,.0f}/s {m['mean_ms']:.2f} ms" for name, m in methods[:2]
            )
            nodes.append(
                f"{node}: {figures['commits_per_s']:,.0f} commits/s x "
                f"{figures['records_per_commit']:.0f}; {calls}"
            )
        lines.append(
            f"| {_system(row)} | {cell['mix']} {cell['keys']} {cell['value_bytes']} B "
            f"| {_call(cell)} | {cell['in_flight']} | {'<br>'.join(nodes)} |"
        )
    return [*lines, ""]


def _targets(verdicts: Sequence[dict[str, Any]]) -> list[str]:
    lines = ["| target | measured | bound | ratio | verdict |", "|---|---|---|--:|---|"]
    for v in verdicts:
        ratio = "" if v["ratio"] is None else f"{v['ratio']:.2f}"
        mark = {"PASS": "**PASS**", "MISS": "**MISS**"}.get(v["verdict"], v["verdict"])
        lines.append(f"| {v['name']} | {v['measured']} | {v['bound']} | {ratio} | {mark} |")
    return lines


def _comparisons(found: Sequence[dict[str, Any]]) -> list[str]:
    if not found:
        return []
    lines = [
        "## Single keys against etcd (reported, not targets)",
        "",
        "shardkv's side is coalesced by the SDK while etcd's Python client sends one call per"
        " operation, so these compare clients as much as servers (the server CPU target above"
        " is the fair comparison).",
        "",
        "| what | shardkv | etcd | ratio |",
        "|---|--:|--:|--:|",
    ]
    for c in found:
        ours = "n/a" if c["ours"] is None else f"{c['ours']:,.0f}"
        theirs = "n/a" if c["theirs"] is None else f"{c['theirs']:,.0f}"
        ratio = "" if c["ratio"] is None else f"{c['ratio']:.2f}x"
        lines.append(f"| {c['name']}, 256 in flight | {ours} | {theirs} | {ratio} |")
    return [*lines, ""]


def _placement(placement: dict[str, Any]) -> list[str]:
    lookup = placement["lookup_us"]
    bal = placement["balance"]
    lines = [
        "## Placement (`shardkv.router.ring.Ring`, in the benchmark process)",
        "",
        "| nodes | preference list (N=3), median µs | best µs |",
        "|--:|--:|--:|",
    ]
    lines += [f"| {n} | {v['median_us']:.2f} | {v['best_us']:.2f} |" for n, v in lookup.items()]
    lines += [
        "",
        f"Balance: {bal['keys']:,} keys placed with N={bal['replication']} on {bal['nodes']} "
        f"nodes of weight 1; busiest node {bal['max_over_mean']:.3f}x the mean, least loaded "
        f"{bal['min_over_mean']:.3f}x (sampling noise about ±0.01).",
        "",
    ]
    return lines


def _steady(rows: Sequence[Row]) -> list[str]:
    steady = [r for r in rows if r.get("section") == "steady" and r["rss_samples"]]
    if not steady:
        return []
    rss = steady[-1]["rss_samples"]
    anon = steady[-1].get("anon_samples") or [{} for _ in rss]
    names = [n for n in rss[0] if n != "t_s"]
    lines = [
        "",
        "RSS in MiB (its anonymous part, heap and the like, in brackets) during the steady"
        " run, sampled after warm-up:",
        "",
        "| s | " + " | ".join(names) + " |",
        "|--:|" + "--:|" * len(names),
    ]
    lines += [
        f"| {r['t_s']:.0f} | "
        + " | ".join(f"{r.get(n, 0):.0f} ({a.get(n, 0):.0f})" for n in names)
        + " |"
        for r, a in zip(rss, anon, strict=True)
    ]
    return lines


def render(doc: dict[str, Any], charts: Sequence[Path]) -> str:
    """The whole Markdown report of the results document `doc` (see run.py)."""
    meta = doc["meta"]
    rows: list[Row] = doc["results"]
    # Runs before the batch read's answers were placed in C named only the ring hash.
    extensions = meta.get("extensions", meta.get("ring_hash", "Python"))
    lines = [
        f"# shardkv benchmark, {meta['started']}",
        "",
        f"Profile **{doc['profile']['name']}** ({doc['profile']['summary']}), "
        f"command `{meta['command']}`, {meta['wall_s'] / 60:.1f} minutes.",
        "",
        f"Machine: {meta['cpu']}, {meta['cores']} cores, {meta['memory_gib']} GiB, "
        f"Linux {meta['kernel']}; data dirs on {meta['data_fs']}. Python {meta['python']}, "
        f"grpcio {meta['grpcio']}, etcd {meta['etcd'] or 'not installed'}; shardkv "
        f"{meta['commit']}, hot loops in {extensions}.",
        "",
    ]
    noisy = [r for r in rows if r["status"] == "ok" and r["other_cpu_cores"] > NOISY_CORES]
    if noisy:
        worst = max(r["other_cpu_cores"] for r in noisy)
        lines += [
            f"> **Caution:** in {len(noisy)} of {len(rows)} cells other processes on the "
            f"machine used more than {NOISY_CORES} cores (up to {worst:.2f}); those figures "
            'understate what the systems can do (see the "other CPU" column).',
            "",
        ]
    if meta.get("notes"):
        lines += [f"> **Note:** {note}" for note in meta["notes"]] + [""]
    lines += ["Systems:", ""]
    lines += [f"- `{s}`: {SYSTEM_TITLES.get(s, s)}" for s in doc["profile"]["systems"]]
    lines += ["", HOW, "", doc["profile"]["plan"], "", "## Targets (issue 16)", ""]
    lines += _targets(doc["targets"])
    lines += [""]
    lines += _comparisons(doc.get("comparisons") or [])
    if charts:
        lines += ["## Charts", "", *(f"![{p.stem}]({p.name})" for p in charts), ""]
    for section, title in SECTIONS.items():
        section_rows = [r for r in rows if r.get("section") == section]
        if not section_rows:
            continue
        lines += [f"## {title.strip()}", "", *_table(section_rows)]
        if section == "steady":
            lines += _steady(section_rows)
        lines += [""]
    lines += _inside(rows)
    if doc.get("placement"):
        lines += _placement(doc["placement"])
    return "\n".join(lines) + "\n"
