"""The closed-loop load generator: K operations in flight against one system for a while.

K worker coroutines each issue one call, wait for it, and issue the next, so exactly K
calls are in flight (a closed loop, as a pool of application threads or tasks behaves).
A cell warms up, then measures for its duration: calls finished inside the window count,
their latencies go into an HdrHistogram (µs), and the CPU time and RSS of every server
process (and of this client process) are read from /proc at both ends of the window.

Keys are `v<value bytes>/<index>`: each value size has its own keyspace (keys.py), which
`preload` fills so that reads find what they ask for.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from hdrh.histogram import HdrHistogram

from benchmarks.keys import key_pool, keyspace_keys, value_of
from benchmarks.nodemetrics import NodeProbe
from benchmarks.procstat import Usage, machine_busy_s, usages

# Fraction of operations that are reads, by workload name.
MIXES: dict[str, float] = {"put-only": 0.0, "get-only": 1.0, "50/50": 0.5, "95/5": 0.95}
DISTRIBUTIONS = ("uniform", "zipf")
DEFAULT_KEYSPACE = 100_000
CLIENT = "client"
# How long stragglers may take to finish once a window has closed.
DRAIN_TIMEOUT_S = 30.0
# Latencies are recorded in microseconds, up to 2 minutes.
_HIST_MAX_US = 120_000_000


class Driver(Protocol):
    """What the load generator needs of a system; one object per system under test."""

    # The largest batch the system takes in one call (larger batches are n/a).
    max_batch: int

    async def get(self, key: bytes) -> bool:
        """Reads key; returns whether it was found."""

    async def put(self, key: bytes, value: bytes) -> None:
        """Writes key durably."""

    async def batch_get(self, keys: Sequence[bytes]) -> int:
        """Reads keys in one call; returns how many were found."""

    async def batch_put(self, items: Sequence[tuple[bytes, bytes]]) -> None:
        """Writes all items in one call."""

    async def close(self) -> None:
        """Releases channels."""


@dataclass(frozen=True)
class Cell:
    """One measurement: a workload at a concurrency against whichever system runs it."""

    mix: str
    keys: str = "uniform"
    value_bytes: int = 100
    batch: int = 1
    in_flight: int = 256
    duration_s: float = 4.0
    warmup_s: float = 1.0
    keyspace: int = DEFAULT_KEYSPACE
    # Seconds between RSS samples during the window (0 = only at the ends).
    sample_every_s: float = 0.0
    # Reads answered by whichever member is asked, without a quorum round (etcd's
    # serializable Range); the run gives such cells a driver that reads that way.
    serializable: bool = False

    def __post_init__(self) -> None:
        if self.mix not in MIXES:
            raise ValueError(f"unknown mix {self.mix!r}; known: {', '.join(MIXES)}")
        if self.keys not in DISTRIBUTIONS:
            raise ValueError(f"unknown key distribution {self.keys!r}")
        if self.batch < 1 or self.in_flight < 1 or self.batch > self.keyspace:
            raise ValueError(f"bad batch {self.batch} / in_flight {self.in_flight}")

    @property
    def label(self) -> str:
        batch = "single" if self.batch == 1 else f"batch {self.batch}"
        mix = f"{self.mix} serializable" if self.serializable else self.mix
        return f"{mix} {self.keys} {self.value_bytes}B {batch} x{self.in_flight}"


@dataclass
class CellResult:
    """What one cell measured; `asdict` of it is one row of the results JSON."""

    system: str
    cell: dict[str, Any]
    window_s: float
    calls: int
    keys: int
    calls_per_s: float
    keys_per_s: float
    latency_us: dict[str, float]
    errors: int
    error_kinds: dict[str, int]
    misses: int
    cpu_s: dict[str, float]
    cpu_s_per_1k_keys: dict[str, float]
    cpu_util: dict[str, float]
    # Cores' worth of CPU that processes other than the measured ones used in the window:
    # another program competing for the two cores makes the cell's figures unreliable.
    other_cpu_cores: float
    rss_mb: dict[str, float]
    # Inside each shardd (from its metrics endpoint): commits, commit sizes, method times.
    node_metrics: dict[str, Any]
    # RSS during the window, all of it and its anonymous part, when the cell samples it.
    rss_samples: list[dict[str, float]] = field(default_factory=list)
    anon_samples: list[dict[str, float]] = field(default_factory=list)
    # Processes watched from the cell's start that were gone at its end: their figures are
    # missing from cpu_s, rss_mb and the samples, and the survivors' figures are not those
    # of a working system, so the targets refuse to PASS on such a row.
    exited: list[str] = field(default_factory=list)
    status: str = "ok"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


async def preload(driver: Driver, *, value_bytes: int, keyspace: int, in_flight: int = 8) -> None:
    """Writes every key of the keyspace once, in the largest batches the driver takes."""
    keys = keyspace_keys(value_bytes, keyspace)
    value = value_of(value_bytes)
    step = min(driver.max_batch, 1000)
    chunks = [keys[i : i + step] for i in range(0, keyspace, step)]
    queue = iter(chunks)

    async def writer() -> None:
        for chunk in queue:
            await driver.batch_put([(k, value) for k in chunk])

    await asyncio.gather(*(writer() for _ in range(in_flight)))


def _error_kind(err: BaseException) -> str:
    """The exception class and, for gRPC and SDK errors, the status code name."""
    code = getattr(err, "code", None)
    if callable(code):  # grpc.aio.AioRpcError
        code = code()
    name = getattr(code, "name", None)
    return f"{type(err).__name__}:{name}" if isinstance(name, str) else type(err).__name__


class _Window:
    """Counters of one cell, filled by the workers while `open` is true."""

    def __init__(self) -> None:
        self.open = False
        self.stop = False
        self.calls = 0
        self.keys = 0
        self.misses = 0
        self.errors: Counter[str] = Counter()
        self.hist = HdrHistogram(1, _HIST_MAX_US, 3)


async def _worker(driver: Driver, cell: Cell, window: _Window, seed: int) -> None:
    rnd = random.Random(seed)
    pool = key_pool(cell.keys, cell.value_bytes, cell.keyspace)
    value = value_of(cell.value_bytes)
    read_fraction = MIXES[cell.mix]
    span = len(pool) - cell.batch
    batch = cell.batch
    while not window.stop:
        offset = rnd.randrange(span)
        is_read = rnd.random() < read_fraction
        started = time.perf_counter_ns()
        try:
            if batch == 1:
                key = pool[offset]
                if is_read:
                    found = 1 if await driver.get(key) else 0
                else:
                    await driver.put(key, value)
                count = 1
            else:
                # A batch names each key once (etcd refuses duplicate keys in a Txn).
                keys = list(dict.fromkeys(pool[offset : offset + batch]))
                count = len(keys)
                if is_read:
                    found = await driver.batch_get(keys)
                else:
                    await driver.batch_put([(k, value) for k in keys])
        except asyncio.CancelledError:
            raise
        except Exception as err:
            if window.open:
                window.errors[_error_kind(err)] += 1
            # A failing system must not turn the loop into a busy spin.
            await asyncio.sleep(0.01)
            continue
        if window.open:
            window.hist.record_value(max(1, (time.perf_counter_ns() - started) // 1000))
            window.calls += 1
            window.keys += count
            if is_read:
                window.misses += count - found


def _client_and(pids: dict[str, int]) -> dict[str, int]:
    return {**pids, CLIENT: os.getpid()}


def _rss_mb(readings: dict[str, Usage]) -> dict[str, float]:
    return {name: round(u.rss_bytes / 2**20, 1) for name, u in readings.items()}


def _anon_mb(readings: dict[str, Usage]) -> dict[str, float]:
    return {name: round(u.anon_bytes / 2**20, 1) for name, u in readings.items()}


class _Sampler:
    """RSS readings of the watched processes at moments of the window."""

    def __init__(self, watched: dict[str, int]) -> None:
        self.watched = watched
        self.started = time.perf_counter()
        self.rss: list[dict[str, float]] = []
        self.anon: list[dict[str, float]] = []

    def add(self, readings: dict[str, Usage] | None = None) -> None:
        readings = usages(self.watched) if readings is None else readings
        t_s = round(time.perf_counter() - self.started, 1)
        self.rss.append({"t_s": t_s, **_rss_mb(readings)})
        self.anon.append({"t_s": t_s, **_anon_mb(readings)})


async def run_cell(
    driver: Driver,
    cell: Cell,
    *,
    system: str,
    pids: dict[str, int],
    on_tick: Callable[[float], None] | None = None,
    probe: NodeProbe | None = None,
) -> CellResult:
    """Runs one cell against driver; pids names the server processes to account, probe
    reads the nodes' own figures at both ends of the window."""
    if cell.batch > driver.max_batch:
        raise ValueError(f"{system} takes batches of at most {driver.max_batch}")
    window = _Window()
    tasks = [
        asyncio.create_task(_worker(driver, cell, window, seed=i)) for i in range(cell.in_flight)
    ]
    watched = _client_and(pids)
    try:
        await _sleep_ticking(cell.warmup_s, on_tick)
        inside_before = await probe.snapshot() if probe else {}
        before = usages(watched)
        busy_before = machine_busy_s()
        sampler = _Sampler(watched)
        if cell.sample_every_s > 0:
            sampler.add(before)
        window.open = True
        await _sleep_ticking(
            cell.duration_s, on_tick, sample_every_s=cell.sample_every_s, sample=sampler.add
        )
        window.open = False
        elapsed = time.perf_counter() - sampler.started
        after = usages(watched)
        busy = machine_busy_s() - busy_before
        inside = NodeProbe.compare(inside_before, await probe.snapshot(), elapsed) if probe else {}
    finally:
        window.stop = True
        _done, pending = await asyncio.wait(tasks, timeout=DRAIN_TIMEOUT_S)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    result = _result(system, cell, window, elapsed, before, after, busy, sampler, inside)
    result.exited = sorted(set(watched) - set(after))
    return result


async def _sleep_ticking(
    seconds: float,
    on_tick: Callable[[float], None] | None,
    *,
    sample_every_s: float = 0.0,
    sample: Callable[[], None] | None = None,
) -> None:
    """Sleeps, calling on_tick(seconds slept) about twice a second and sample() as asked."""
    step = 0.5
    if sample_every_s > 0:
        step = min(step, sample_every_s)
    deadline = time.perf_counter() + seconds
    next_sample = time.perf_counter() + sample_every_s
    last = time.perf_counter()
    while (now := time.perf_counter()) < deadline:
        await asyncio.sleep(min(step, deadline - now))
        now = time.perf_counter()
        if on_tick is not None:
            on_tick(now - last)
        last = now
        if sample is not None and sample_every_s > 0 and now >= next_sample:
            sample()
            next_sample += sample_every_s


def _result(
    system: str,
    cell: Cell,
    window: _Window,
    elapsed: float,
    before: dict[str, Usage],
    after: dict[str, Usage],
    machine_busy: float,
    sampler: _Sampler,
    inside: dict[str, Any],
) -> CellResult:
    hist = window.hist
    latency = {"p50": 0.0, "p99": 0.0, "p99.9": 0.0, "mean": 0.0, "max": 0.0}
    if window.calls:
        latency = {
            "p50": float(hist.get_value_at_percentile(50)),
            "p99": float(hist.get_value_at_percentile(99)),
            "p99.9": float(hist.get_value_at_percentile(99.9)),
            "mean": round(hist.get_mean_value(), 1),
            "max": float(hist.get_max_value()),
        }
    cpu = {
        name: round(after[name].cpu_s - before[name].cpu_s, 3) for name in after if name in before
    }
    per_1k = {
        name: round(s * 1000 / window.keys, 6) if window.keys else 0.0 for name, s in cpu.items()
    }
    util = {name: round(s / elapsed, 3) for name, s in cpu.items()}
    status = "ok" if window.calls else "failed"
    return CellResult(
        system=system,
        cell=asdict(cell),
        window_s=round(elapsed, 3),
        calls=window.calls,
        keys=window.keys,
        calls_per_s=round(window.calls / elapsed, 1),
        keys_per_s=round(window.keys / elapsed, 1),
        latency_us=latency,
        errors=sum(window.errors.values()),
        error_kinds=dict(window.errors),
        misses=window.misses,
        cpu_s=cpu,
        cpu_s_per_1k_keys=per_1k,
        cpu_util=util,
        other_cpu_cores=round(max(0.0, machine_busy - sum(cpu.values())) / elapsed, 2),
        rss_mb=_rss_mb(after),
        node_metrics=inside,
        rss_samples=sampler.rss,
        anon_samples=sampler.anon,
        status=status,
    )
