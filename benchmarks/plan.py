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
SHARDD = "shardd"
ETCD1 = "etcd-1"
ETCD3 = "etcd-3"

SYSTEM_TITLES = {
    SHARDKV: "shardkv: router + 3 shardd (N=3, R=W=2, durable)",
    SHARDD: "one shardd asked directly (durable)",
    ETCD1: "etcd, 1 member",
    ETCD3: "etcd, 3 members",
}
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
    "(its default --max-txn-ops is 128). The quick profile keeps only the cells the targets need."
)


@dataclass(frozen=True)
class Planned:
    """A cell and the report section it belongs to."""

    section: str
    cell: Cell


@dataclass(frozen=True)
class Profile:
    """A named plan: the cells per system, in the order they run."""

    name: str
    summary: str
    cells: dict[str, tuple[Planned, ...]]
    # Whether to time preference-list lookups and measure ring balance.
    placement: bool = True

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
        return "\n".join(lines)

    def total_seconds(self) -> float:
        """Warm-up plus measuring time of every cell (no start-up or preload)."""
        return sum(
            p.cell.warmup_s + p.cell.duration_s for cells in self.cells.values() for p in cells
        )


def _sweep(base: Cell) -> list[Planned]:
    return [
        Planned("sweep", replace(base, mix=mix, in_flight=k))
        for mix in ("put-only", "get-only")
        for k in CONCURRENCY
    ]


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
        SHARDD: (*_sweep(base), *_batches(base, (100, 1000))),
    }
    if with_etcd:
        etcd = (*_sweep(base), *_mixes(base), *_values(base, 20_000), *_batches(base, (100,)))
        cells[ETCD1] = etcd
        cells[ETCD3] = etcd
    return Profile("full", "the whole suite (make bench)", cells)


def quick(*, with_etcd: bool = True) -> Profile:
    """`make bench-quick`: the cells the targets need, short, about a minute."""
    base = Cell("put-only", duration_s=2.0, warmup_s=0.5, keyspace=20_000)
    ends = [
        Planned("sweep", replace(base, mix=mix, in_flight=k))
        for mix in ("put-only", "get-only")
        for k in (1, 256)
    ]
    cells: dict[str, tuple[Planned, ...]] = {
        SHARDKV: (*ends, *_batches(base, (1000,))),
        SHARDD: tuple(p for p in ends if p.cell.mix == "get-only"),
    }
    if with_etcd:
        cells[ETCD1] = tuple(ends)
        cells[ETCD3] = tuple(p for p in ends if p.cell.in_flight == 256)
    return Profile("quick", "a one-minute subset (make bench-quick)", cells)


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
    return replace(profile, cells=cells, summary=f"{profile.summary}, only {', '.join(cells)}")


PROFILES = {"full": full, "quick": quick}
