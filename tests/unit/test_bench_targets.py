"""The benchmark targets refuse to PASS on bad data (issue 12, item 5).

Hand-made result rows that pass every target are spoiled one way at a time: failed calls,
reads that missed preloaded keys, a server that exited, a row that does not record its
errors, a peer measured at 0, a process that vanished from the steady run's RSS samples.
Each must turn the targets resting on that row into MISS (the system under claim) or n/a
(a peer), never PASS (the bounds themselves: test_bench_bounds.py). The last two tests
check that the row producers record an exited process at all: /proc reads a zombie as
gone, and run_cell names what it lost.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("hdrh", reason="the bench extra is not installed (make bench-deps)")

from bench_rows import (
    GET_P50,
    GROWTH,
    PUT_P50,
    READS_VS_ETCD3,
    ROUTER_BATCH,
    ROUTER_GET,
    ROUTER_PUT,
    RSS,
    SERVER_CPU,
    WRITES_VS_ETCD3,
    Row,
    clean_rows,
    the,
    verdicts_of,
)

from benchmarks.load import Cell, run_cell
from benchmarks.plan import BATCH_IN_FLIGHT, ETCD3, SHARDD, SHARDKV, SHARDKV12
from benchmarks.procstat import usage, usages

# A cell (system, mix, in flight[, batch]) and the names of the targets resting on it.
Supports = list[tuple[tuple[Any, ...], tuple[str, ...]]]
# The cells of the system under claim, and the targets each one supports.
OURS: Supports = [
    ((SHARDKV, "put-only", 256), (ROUTER_PUT, SERVER_CPU)),
    ((SHARDKV, "get-only", 256), (ROUTER_GET,)),
    ((SHARDKV, "get-only", 1), (GET_P50,)),
    ((SHARDKV, "put-only", 1), (PUT_P50,)),
    ((SHARDKV, "put-only", 64), (GROWTH,)),
    ((SHARDKV12, "put-only", 256), (GROWTH,)),
    ((SHARDKV, "put-only", BATCH_IN_FLIGHT, 100), (ROUTER_BATCH["put-only", 100], WRITES_VS_ETCD3)),
    ((SHARDKV, "get-only", BATCH_IN_FLIGHT, 100), (ROUTER_BATCH["get-only", 100], READS_VS_ETCD3)),
    ((SHARDKV, "put-only", BATCH_IN_FLIGHT, 1000), (ROUTER_BATCH["put-only", 1000],)),
    ((SHARDKV, "get-only", BATCH_IN_FLIGHT, 1000), (ROUTER_BATCH["get-only", 1000],)),
]
# The peers' cells, and the comparisons each one is the baseline of.
PEERS: Supports = [
    ((ETCD3, "put-only", 256), (SERVER_CPU,)),
    ((ETCD3, "put-only", BATCH_IN_FLIGHT, 100), (WRITES_VS_ETCD3,)),
    ((ETCD3, "get-only", BATCH_IN_FLIGHT, 100), (READS_VS_ETCD3,)),
    ((SHARDD, "get-only", 1), (GET_P50,)),
    ((SHARDD, "put-only", 1), (PUT_P50,)),
]
# Ways a row can be bad; misses only where the cell reads.
SPOILS: dict[str, Row] = {
    "errors": {"errors": 7, "error_kinds": {"AioRpcError:UNAVAILABLE": 7}},
    "misses": {"misses": 7},
    "exited": {"exited": ["n2"]},
}


def _spoiled(cells: Supports) -> list[Any]:
    return [
        pytest.param(cell, names, spoil, id=f"{'-'.join(map(str, cell))}-{spoil}")
        for cell, names in cells
        for spoil in SPOILS
        if spoil != "misses" or cell[1] != "put-only"
    ]


def test_clean_rows_pass_every_target() -> None:
    """The baseline the other tests spoil: without it a test could pass on a target that
    never passes at all."""
    verdicts = verdicts_of(clean_rows())
    assert {name: v.verdict for name, v in verdicts.items()} == dict.fromkeys(verdicts, "PASS")


@pytest.mark.parametrize(("cell", "names", "spoil"), _spoiled(OURS))
def test_a_bad_cell_of_ours_is_a_miss(
    cell: tuple[Any, ...], names: tuple[str, ...], spoil: str
) -> None:
    """Failed calls, missed reads or an exited server in a shardkv cell: every target that
    cell supports is a MISS, and says why, however good its figure."""
    rows = clean_rows()
    the(rows, *cell).update(SPOILS[spoil])
    verdicts = verdicts_of(rows)
    for name in names:
        assert verdicts[name].verdict == "MISS", verdicts[name]
        assert spoil in verdicts[name].measured or "n2" in verdicts[name].measured
    untouched = set(verdicts) - set(names)
    assert {verdicts[n].verdict for n in untouched} == {"PASS"}


@pytest.mark.parametrize(("cell", "names", "spoil"), _spoiled(PEERS))
def test_a_bad_peer_cell_makes_the_comparison_na(
    cell: tuple[Any, ...], names: tuple[str, ...], spoil: str
) -> None:
    """A peer that failed calls, missed reads or lost a server was not measured doing its
    job: comparing against it is n/a, never a PASS."""
    rows = clean_rows()
    the(rows, *cell).update(SPOILS[spoil])
    verdicts = verdicts_of(rows)
    for name in names:
        assert verdicts[name].verdict == "n/a", verdicts[name]
        assert verdicts[name].ratio is None


def test_a_row_without_error_counts_never_passes() -> None:
    """A row that does not say how many calls failed or reads missed cannot show none did."""
    rows = clean_rows()
    for field in ("errors", "misses"):
        del the(rows, SHARDKV, "put-only", 256)[field]
    verdicts = verdicts_of(rows)
    assert verdicts[ROUTER_PUT].verdict == "MISS"
    assert "not recorded" in verdicts[ROUTER_PUT].measured


def _steady_row(rows: list[Row]) -> Row:
    (row,) = (r for r in rows if r["section"] == "steady")
    return row


def test_a_process_missing_from_later_rss_samples_is_not_stable() -> None:
    """n2 died after the first sample: /proc no longer lists it, so later samples lack it.
    Comparing only the survivors would call the crash stable."""
    rows = clean_rows()
    for sample in _steady_row(rows)["rss_samples"][1:]:
        del sample["n2"]
    verdict = verdicts_of(rows)[RSS]
    assert verdict.verdict == "MISS", verdict
    assert "n2" in verdict.measured


def test_a_process_read_at_zero_rss_is_not_stable() -> None:
    """An unreaped dead server (a zombie) read as RSS 0: that is no memory that stayed flat."""
    rows = clean_rows()
    _steady_row(rows)["rss_samples"][-1]["n2"] = 0.0
    assert verdicts_of(rows)[RSS].verdict == "MISS"


def test_a_process_the_row_names_as_exited_is_not_stable() -> None:
    """n2 died during warm-up, so no sample holds it; only the row's exited list tells."""
    rows = clean_rows()
    row = _steady_row(rows)
    for sample in (*row["rss_samples"], *row["anon_samples"]):
        del sample["n2"]
    row["exited"] = ["n2"]
    verdict = verdicts_of(rows)[RSS]
    assert verdict.verdict == "MISS", verdict
    assert "n2" in verdict.measured


@pytest.mark.parametrize("spoil", ["errors", "misses"])
def test_a_steady_run_with_errors_or_misses_is_not_stable(spoil: str) -> None:
    """A system failing its calls is not under the steady load the target speaks of."""
    rows = clean_rows()
    _steady_row(rows).update(SPOILS[spoil])
    assert verdicts_of(rows)[RSS].verdict == "MISS"


def _exited_child() -> subprocess.Popen[bytes]:
    """A child process that has exited and is not reaped yet (a zombie), as a crashed
    server is until the Fleet polls it."""
    child = subprocess.Popen(["true"])
    deadline = time.monotonic() + 10
    while Path(f"/proc/{child.pid}/stat").read_text().split(") ")[1][0] != "Z":
        assert time.monotonic() < deadline, "the child did not exit"
        time.sleep(0.01)
    return child


def test_procstat_counts_an_unreaped_dead_process_as_gone() -> None:
    child = _exited_child()
    try:
        with pytest.raises(ProcessLookupError):
            usage(child.pid)
        assert usages({"n1": child.pid}) == {}
    finally:
        child.wait()


class _InstantDriver:
    """Answers every call after a millisecond; reads always find their key."""

    max_batch = 1000

    async def get(self, key: bytes) -> bool:
        await asyncio.sleep(0.001)
        return True

    async def put(self, key: bytes, value: bytes) -> None:
        await asyncio.sleep(0.001)

    async def batch_get(self, keys: Sequence[bytes]) -> int:
        await asyncio.sleep(0.001)
        return len(keys)

    async def batch_put(self, items: Sequence[tuple[bytes, bytes]]) -> None:
        await asyncio.sleep(0.001)

    async def close(self) -> None:
        pass


def test_run_cell_names_a_server_that_exited() -> None:
    """A watched process gone by the end of the cell is named in the row's exited list (it
    is otherwise silently missing from the CPU and RSS figures)."""
    crashed = subprocess.Popen(["sleep", "0.2"])
    alive = subprocess.Popen(["sleep", "30"])
    cell = Cell("get-only", in_flight=2, duration_s=0.6, warmup_s=0.05, keyspace=1000)
    try:
        result = asyncio.run(
            run_cell(
                _InstantDriver(),
                cell,
                system=SHARDD,
                pids={"n1": crashed.pid, "n2": alive.pid},
            )
        )
    finally:
        alive.kill()
        alive.wait()
        crashed.wait()
    assert result.exited == ["n1"]
    assert result.errors == 0 and result.misses == 0 and result.calls > 0
