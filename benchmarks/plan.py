"""Which cells each profile runs against which system, and for how long.

The full matrix (4 workloads x 2 key distributions x 2 value sizes x 3 call shapes x 4
concurrencies x 4 systems) would take hours; a profile picks the slices that answer the
questions users ask, and the report prints the choice (PLAN_TEXT and Profile.describe).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from benchmarks.load import Cell

SHARDKV = "shardkv"
# The same router in front of more nodes: does the router grow dearer with the cluster?
SHARDKV12 = "shardkv-12"
SHARDKV60 = "shardkv-60"
SHARDD = "shardd"
ETCD1 = "etcd-1"
ETCD3 = "etcd-3"

SYSTEM_TITLES = {
    SHARDKV: "shardkv: router + 3 shardd (N=3, R=W=2, durable)",
    SHARDKV12: "shardkv: router + 12 shardd (N=3, R=W=2, durable)",
    SHARDKV60: "shardkv: router + 60 shardd (N=3, R=W=2, durable)",
    SHARDD: "one shardd asked directly (durable)",
    ETCD1: "etcd, 1 member",
    ETCD3: "etcd, 3 members",
}
# Nodes behind the router, per shardkv system.
SHARDKV_NODES = {SHARDKV: 3, SHARDKV12: 12, SHARDKV60: 60}
ETCD_SYSTEMS = (ETCD1, ETCD3)
CONCURRENCY = (1, 16, 64, 256)
BATCH_IN_FLIGHT = 8
LARGE_VALUE = 1024

PLAN_TEXT = (
    "The full matrix would take hours, so the suite runs slices of it: a concurrency sweep "
    "(1, 16, 64, 256 in flight) of put-only and get-only with uniform keys and 100 B values; "
    "every workload (put-only, get-only, 50/50, 95/5 read/write) with uniform and Zipfian "
    "(s = 0.99) keys at 256 in flight; 1 KiB values at 256; batches of 100 and 1000 keys "
    f"with {BATCH_IN_FLIGHT} batches in flight; and a steady 50/50 run of shardkv sampling "
    "RSS. The lone shardd runs the sweep and the batches only; etcd runs no batch of 1000 "
    "(its default --max-txn-ops is 128), and its single-key Gets run twice: linearizable "
    "Range (etcd's default) and serializable Range (answered by the member asked, like a "
    "shardkv read at ONE). The same router also runs single puts in front of 12 nodes (and "
    "60 in the full profile), at 64 and 256 in flight. The quick profile "
    "keeps only the cells the targets need."
)


@dataclass(frozen=True)
class Planned:
    """A cell and the report section it belongs to."""

    section: str
    cell: Cell


@dataclass(frozen=True)
class Pair:
    """A comparison whose two systems run the same cell in alternating rounds, both
    started at once (paired.py): measured minutes apart, as the per-system cells are, the
    VM's speed moves between them (etcd-3's Txn of 100 puts measured 18,167 to 28,638
    keys/s in runs a few hours apart with nothing changed)."""

    ours: str
    theirs: str
    cell: Cell


# Rounds of every pair: ours first in even rounds, theirs first in odd ones; a target
# takes the median round.
PAIRED_ROUNDS = 3


@dataclass(frozen=True)
class Profile:
    """A named plan: the cells per system, in the order they run, then the pairs."""

    name: str
    summary: str
    cells: dict[str, tuple[Planned, ...]]
    # Whether to time preference-list lookups and measure ring balance.
    placement: bool = True
    pairs: tuple[Pair, ...] = ()

    @property
    def systems(self) -> tuple[str, ...]:
        return tuple(self.cells)

    def describe(self) -> str:
        """The plan in words, for the report."""
        lines = [f"Plan ({self.name}): {self.summary}. {PLAN_TEXT}", ""]
        for system, cells in self.cells.items():
            by_length = sorted({(p.cell.warmup_s, p.cell.duration_s) for p in cells})
            lengths = ", ".join(f"{w:g} s warm-up + {d:g} s measured" for w, d in by_length)
            lines.append(f"- `{system}`: {len(cells)} cells ({lengths})")
        if self.pairs:
            compared = "; ".join(f"{p.ours} vs {p.theirs}, {p.cell.label}" for p in self.pairs)
            lines.append(
                f"- paired, {PAIRED_ROUNDS} alternating rounds each, the systems up at once:"
                f" {compared}"
            )
        return "\n".join(lines)

    def total_seconds(self) -> float:
        """Warm-up plus measuring time of every cell (no start-up or preload)."""
        alone = sum(
            p.cell.warmup_s + p.cell.duration_s for cells in self.cells.values() for p in cells
        )
        paired = sum(2 * PAIRED_ROUNDS * (p.cell.warmup_s + p.cell.duration_s) for p in self.pairs)
        return alone + paired


def _sweep(base: Cell) -> list[Planned]:
    return [
        Planned("sweep", replace(base, mix=mix, in_flight=k))
        for mix in ("put-only", "get-only")
        for k in CONCURRENCY
    ]


def _serializable(base: Cell, levels: tuple[int, ...]) -> list[Planned]:
    """etcd's serializable Range beside its default linearizable one."""
    return [
        Planned("sweep", replace(base, mix="get-only", in_flight=k, serializable=True))
        for k in levels
    ]


def _cluster_sizes(base: Cell) -> list[Planned]:
    """Single puts through one router in front of more nodes, at 64 and 256 in flight (12
    nodes at 256 carry the load per node of 3 nodes at 64)."""
    return [Planned("nodes", replace(base, mix="put-only", in_flight=k)) for k in (64, 256)]


def _mixes(base: Cell) -> list[Planned]:
    cells = [
        replace(base, mix=mix, keys=keys, in_flight=256)
        for keys in ("uniform", "zipf")
        for mix in ("put-only", "get-only", "50/50", "95/5")
    ]
    # The uniform put-only and get-only cells at 256 are already in the sweep.
    return [
        Planned("mixes", c)
        for c in cells
        if not (c.keys == "uniform" and c.mix in ("put-only", "get-only"))
    ]


def _values(base: Cell, keyspace: int) -> list[Planned]:
    return [
        Planned(
            "values",
            replace(base, mix=mix, value_bytes=LARGE_VALUE, keyspace=keyspace, in_flight=256),
        )
        for mix in ("put-only", "get-only")
    ]


def _batches(base: Cell, sizes: tuple[int, ...]) -> list[Planned]:
    return [
        Planned("batches", replace(base, mix=mix, batch=size, in_flight=BATCH_IN_FLIGHT))
        for size in sizes
        for mix in ("put-only", "get-only")
    ]


def _pairs(base: Cell, *, with_etcd: bool) -> tuple[Pair, ...]:
    """The targets that compare two systems: batches of 100 against etcd-3's Txn, and one
    call in flight against a lone shardd."""
    batch = replace(base, batch=100, in_flight=BATCH_IN_FLIGHT)
    direct = (
        Pair(SHARDKV, SHARDD, replace(base, mix="get-only", in_flight=1)),
        Pair(SHARDKV, SHARDD, replace(base, mix="put-only", in_flight=1)),
    )
    if not with_etcd:
        return direct
    return (
        Pair(SHARDKV, ETCD3, replace(batch, mix="put-only")),
        Pair(SHARDKV, ETCD3, replace(batch, mix="get-only")),
        *direct,
    )


def full(*, with_etcd: bool = True) -> Profile:
    """`make bench`: about 10-15 minutes on the 2-core reference machine."""
    base = Cell("put-only", duration_s=5.0, warmup_s=1.0, keyspace=100_000)
    steady = Planned(
        "steady",
        replace(
            base, mix="50/50", in_flight=256, duration_s=60.0, warmup_s=10.0, sample_every_s=5.0
        ),
    )
    cells: dict[str, tuple[Planned, ...]] = {
        SHARDKV: (
            *_sweep(base),
            *_mixes(base),
            *_values(base, 20_000),
            *_batches(base, (100, 1000)),
            steady,
        ),
        SHARDKV12: tuple(_cluster_sizes(base)),
        SHARDKV60: tuple(_cluster_sizes(base)),
        SHARDD: (*_sweep(base), *_batches(base, (100, 1000))),
    }
    if with_etcd:
        etcd = (
            *_sweep(base),
            *_serializable(base, (1, 256)),
            *_mixes(base),
            *_values(base, 20_000),
            *_batches(base, (100,)),
        )
        cells[ETCD1] = etcd
        cells[ETCD3] = etcd
    pairs = _pairs(replace(base, keyspace=20_000), with_etcd=with_etcd)
    return Profile("full", "the whole suite (make bench)", cells, pairs=pairs)


def quick(*, with_etcd: bool = True) -> Profile:
    """`make bench-quick`: the cells the targets need, short, about a minute."""
    base = Cell("put-only", duration_s=2.0, warmup_s=0.5, keyspace=20_000)
    ends = [
        Planned("sweep", replace(base, mix=mix, in_flight=k))
        for mix in ("put-only", "get-only")
        for k in (1, 256)
    ]
    batches = _batches(base, (100, 1000))
    put64 = Planned("sweep", replace(base, mix="put-only", in_flight=64))
    cells: dict[str, tuple[Planned, ...]] = {
        SHARDKV: (*ends, put64, *batches),
        SHARDKV12: tuple(p for p in _cluster_sizes(base) if p.cell.in_flight == 256),
        SHARDD: (*ends, *batches),
    }
    if with_etcd:
        at256 = tuple(p for p in ends if p.cell.in_flight == 256)
        cells[ETCD1] = (*at256, *_serializable(base, (256,)))
        cells[ETCD3] = (*at256, *_serializable(base, (256,)), *_batches(base, (100,)))
    pairs = _pairs(base, with_etcd=with_etcd)
    return Profile(
        "quick", "the cells the targets need, short (make bench-quick)", cells, pairs=pairs
    )


def soak(*, minutes: float = 5.0) -> Profile:
    """`make bench-soak`: shardkv under steady 50/50 load, RSS sampled every 10 s."""
    cell = Cell(
        "50/50",
        in_flight=256,
        duration_s=minutes * 60,
        warmup_s=30.0,
        keyspace=100_000,
        sample_every_s=10.0,
    )
    return Profile(
        "soak",
        f"a {minutes:g}-minute steady run (make bench-soak)",
        {SHARDKV: (Planned("steady", cell),)},
        placement=False,
    )


def smoke(*, system: str, seconds: float = 1.0) -> Profile:
    """A few-seconds plan for the test that keeps the machinery working: two sweep points
    (enough for a chart), single-key puts and a mixed batch cell."""
    base = Cell("get-only", duration_s=seconds, warmup_s=0.2, keyspace=2_000, in_flight=16)
    cells = (
        Planned("sweep", replace(base, in_flight=1)),
        Planned("sweep", base),
        Planned("sweep", replace(base, mix="put-only")),
        Planned("batches", replace(base, mix="50/50", batch=100, in_flight=2)),
    )
    return Profile("smoke", "machinery check", {system: cells}, placement=False)


def only(profile: Profile, systems: Sequence[str]) -> Profile:
    """profile restricted to systems (in the profile's order)."""
    unknown = set(systems) - set(SYSTEM_TITLES)
    if unknown:
        raise ValueError(f"unknown systems {sorted(unknown)}; known: {', '.join(SYSTEM_TITLES)}")
    cells = {s: c for s, c in profile.cells.items() if s in systems}
    pairs = tuple(p for p in profile.pairs if p.ours in systems and p.theirs in systems)
    summary = f"{profile.summary}, only {', '.join(cells)}"
    return replace(profile, cells=cells, pairs=pairs, summary=summary)


PROFILES = {"full": full, "quick": quick}
