"""PNG charts of one run: throughput against concurrency, latency percentiles, RSS over a
steady run. Each returns the path it wrote, or None when the run lacks the cells."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never a display
import matplotlib.pyplot as plt

from benchmarks.plan import CONCURRENCY, SYSTEM_TITLES
from benchmarks.rows import find

Row = dict[str, Any]
PERCENTILES = ("p50", "p99", "p99.9")


def _systems(rows: Sequence[Row]) -> list[str]:
    return list(dict.fromkeys(r["system"] for r in rows))


def throughput(rows: Sequence[Row], path: Path) -> Path | None:
    """Ops/s against operations in flight, put-only and get-only, a line per system."""
    mixes = ("put-only", "get-only")
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    drawn = False
    for ax, mix in zip(axes, mixes, strict=True):
        for system in _systems(rows):
            points = [
                (k, row["calls_per_s"])
                for k in CONCURRENCY
                if (row := find(rows, system, mix=mix, in_flight=k, section="sweep"))
            ]
            if len(points) < 2:
                continue
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, marker="o", label=SYSTEM_TITLES.get(system, system))
            drawn = True
        ax.set_xscale("log", base=2)
        ax.set_xticks(list(CONCURRENCY), [str(k) for k in CONCURRENCY])
        ax.set_xlabel("operations in flight")
        ax.set_ylabel("ops/s")
        ax.set_title(f"{mix}, single-key, 100 B, uniform")
        ax.grid(True, alpha=0.3)
    if not drawn:
        plt.close(fig)
        return None
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
            break
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def latency(rows: Sequence[Row], path: Path) -> Path | None:
    """p50/p99/p99.9 per system for Put and Get at 1 and at 256 in flight (log scale)."""
    panels = [(mix, k) for k in (1, 256) for mix in ("put-only", "get-only")]
    fig, axes = plt.subplots(1, len(panels), figsize=(16, 4.5))
    drawn = False
    for ax, (mix, k) in zip(axes, panels, strict=True):
        found = [
            (s, row)
            for s in _systems(rows)
            if (row := find(rows, s, mix=mix, in_flight=k, section="sweep"))
        ]
        width = 0.8 / max(1, len(found))
        for i, (system, row) in enumerate(found):
            values = [row["latency_us"][p] / 1000 for p in PERCENTILES]
            xs = [j + i * width for j in range(len(PERCENTILES))]
            ax.bar(xs, values, width, label=system)
            drawn = True
        centre = (len(found) - 1) * width / 2
        ax.set_xticks([j + centre for j in range(len(PERCENTILES))], PERCENTILES)
        ax.set_yscale("log")
        ax.set_ylabel("latency, ms")
        ax.set_title(f"{mix}, {k} in flight")
        ax.grid(True, axis="y", alpha=0.3)
        if found:
            ax.legend(fontsize=7)
    if not drawn:
        plt.close(fig)
        return None
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def rss(rows: Sequence[Row], path: Path) -> Path | None:
    """RSS of every process over the steady run."""
    steady = [r for r in rows if r.get("section") == "steady" and r["rss_samples"]]
    if not steady:
        return None
    rss = steady[-1]["rss_samples"]
    anon = steady[-1].get("anon_samples") or []
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name in (n for n in rss[0] if n != "t_s"):
        (line,) = ax.plot([s["t_s"] for s in rss], [s.get(name, 0) for s in rss], label=name)
        if anon:
            ax.plot(
                [s["t_s"] for s in anon],
                [s.get(name, 0) for s in anon],
                linestyle="--",
                color=line.get_color(),
                label=f"{name} (anonymous)",
            )
    ax.set_xlabel("seconds after warm-up")
    ax.set_ylabel("RSS, MiB")
    ax.set_title(
        f"steady run: {steady[-1]['system']}, {steady[-1]['cell']['mix']}, "
        f"{steady[-1]['cell']['in_flight']} in flight"
    )
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def draw_all(rows: Sequence[Row], stem: Path) -> list[Path]:
    """Every chart the run has cells for, as <stem>-<name>.png."""
    made = [
        throughput(rows, stem.with_name(f"{stem.name}-throughput.png")),
        latency(rows, stem.with_name(f"{stem.name}-latency.png")),
        rss(rows, stem.with_name(f"{stem.name}-rss.png")),
    ]
    return [p for p in made if p is not None]
