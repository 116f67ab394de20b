"""Comparisons of two systems decided by alternating paired rounds (benchmarks/paired.py):
the median round decides, paired rounds take precedence over cells each system ran alone
minutes apart, and a bad row in any round spoils the comparison as a bad cell does."""

from __future__ import annotations

import pytest

pytest.importorskip("hdrh", reason="the bench extra is not installed (make bench-deps)")

from bench_rows import (
    GET_P50,
    READS_VS_ETCD3,
    ROUTER_BATCH,
    Row,
    clean_rows,
    row,
    verdicts_of,
)

from benchmarks import plan
from benchmarks.plan import BATCH_IN_FLIGHT, ETCD3, SHARDD, SHARDKV


def reads_vs_etcd3(ratios: list[float]) -> list[Row]:
    """Paired rounds of batches of 100 read, ours at ratio times etcd-3's keys/s."""
    rows = []
    for number, ratio in enumerate(ratios):
        for system, calls in ((SHARDKV, 300 * ratio), (ETCD3, 300.0)):
            paired = row(system, "get-only", BATCH_IN_FLIGHT, 100, calls_per_s=calls)
            rows.append({**paired, "section": "paired", "round": number})
    return rows


def get_p50_over_direct(extra_ms: list[float]) -> list[Row]:
    """Paired rounds of single Gets at 1 in flight, the router extra_ms over shardd."""
    rows = []
    for number, extra in enumerate(extra_ms):
        for system, p50 in ((SHARDKV, 900 + extra * 1000), (SHARDD, 900.0)):
            paired = row(system, "get-only", 1, calls_per_s=1000, p50_us=p50)
            rows.append({**paired, "section": "paired", "round": number})
    return rows


def test_the_median_round_decides_and_every_round_is_named() -> None:
    verdict = verdicts_of([*clean_rows(), *reads_vs_etcd3([0.5, 1.4, 1.2])])[READS_VS_ETCD3]
    assert verdict.verdict == "PASS" and verdict.ratio == 1.2
    assert "median of 3 paired rounds (0.50, 1.40, 1.20)" in verdict.measured


def test_paired_rounds_take_precedence_over_cells_run_alone() -> None:
    """The cells each system ran alone pass (clean_rows); the rounds, run side by side,
    do not: the rounds decide."""
    assert verdicts_of(clean_rows())[READS_VS_ETCD3].verdict == "PASS"
    verdict = verdicts_of([*clean_rows(), *reads_vs_etcd3([0.5, 0.9, 1.4])])[READS_VS_ETCD3]
    assert verdict.verdict == "MISS" and verdict.ratio == 0.9


def test_latency_over_direct_takes_the_median_extra() -> None:
    passed = verdicts_of([*clean_rows(), *get_p50_over_direct([0.5, 1.3, 0.8])])[GET_P50]
    assert passed.verdict == "PASS" and passed.ratio == 0.8
    missed = verdicts_of([*clean_rows(), *get_p50_over_direct([1.1, 1.3, 0.8])])[GET_P50]
    assert missed.verdict == "MISS" and missed.ratio == 1.1


def test_a_bad_row_in_any_round_spoils_the_comparison() -> None:
    ours_failed = reads_vs_etcd3([1.4, 1.5, 1.6])
    ours_failed[2]["errors"] = 3  # round 1, shardkv
    verdict = verdicts_of([*clean_rows(), *ours_failed])[READS_VS_ETCD3]
    assert verdict.verdict == "MISS" and "3 errors" in verdict.measured
    theirs_failed = reads_vs_etcd3([1.4, 1.5, 1.6])
    theirs_failed[5]["exited"] = ["e2"]  # round 2, etcd-3
    assert verdicts_of([*clean_rows(), *theirs_failed])[READS_VS_ETCD3].verdict == "n/a"


def test_a_round_ours_failed_is_a_miss_whatever_the_cells_run_alone_say() -> None:
    """A router that died, or did not start, in the paired rounds did not serve the cell:
    the target is a MISS naming the round, not the verdict of the cells run alone."""
    for failed in ([0], [0, 1, 2]):
        paired = reads_vs_etcd3([1.4, 1.5, 1.6])
        for number in failed:
            paired[2 * number] = {**paired[2 * number], "status": "failed", "reason": "r1 exited"}
        verdict = verdicts_of([*clean_rows(), *paired])[READS_VS_ETCD3]
        assert verdict.verdict == "MISS", verdict
        assert "shardkv in round 1: r1 exited" in verdict.measured


def test_a_round_whose_peer_failed_is_left_out_and_an_even_count_takes_the_worse_middle() -> None:
    keys = reads_vs_etcd3([1.1, 1.4, 0.9])
    keys[1] = {**keys[1], "status": "failed", "reason": "e2 exited"}  # round 1, etcd-3
    verdict = verdicts_of([*clean_rows(), *keys])[READS_VS_ETCD3]
    assert verdict.ratio == 0.9 and verdict.verdict == "MISS"  # the lower of 1.4 and 0.9
    assert "median of 2 paired rounds (1.40, 0.90)" in verdict.measured
    latency = get_p50_over_direct([0.5, 0.7, 1.5])
    latency[1] = {**latency[1], "status": "failed", "reason": "shardd exited"}
    verdict = verdicts_of([*clean_rows(), *latency])[GET_P50]
    assert verdict.ratio == 1.5 and verdict.verdict == "MISS"  # the higher of 0.7 and 1.5


def test_a_flawed_row_of_ours_in_any_round_outweighs_a_flawed_peer() -> None:
    paired = reads_vs_etcd3([1.4, 1.5, 1.6])
    paired[1]["exited"] = ["e2"]  # round 1, etcd-3
    paired[4]["errors"] = 3  # round 3, shardkv
    verdict = verdicts_of([*clean_rows(), *paired])[READS_VS_ETCD3]
    assert verdict.verdict == "MISS" and "3 errors" in verdict.measured


def test_the_full_profile_pairs_every_cross_system_target_and_counts_their_time() -> None:
    full = plan.full(with_etcd=True)
    compared = {(p.ours, p.theirs, p.cell.mix, p.cell.batch, p.cell.in_flight) for p in full.pairs}
    assert compared == {
        (SHARDKV, ETCD3, "put-only", 100, BATCH_IN_FLIGHT),
        (SHARDKV, ETCD3, "get-only", 100, BATCH_IN_FLIGHT),
        (SHARDKV, SHARDD, "get-only", 1, 1),
        (SHARDKV, SHARDD, "put-only", 1, 1),
    }
    alone = plan.full(with_etcd=True).total_seconds() - sum(
        2 * plan.PAIRED_ROUNDS * (p.cell.warmup_s + p.cell.duration_s) for p in full.pairs
    )
    assert alone == sum(
        p.cell.warmup_s + p.cell.duration_s for cells in full.cells.values() for p in cells
    )
    without_etcd = plan.only(full, [SHARDKV, SHARDD])
    assert {p.theirs for p in without_etcd.pairs} == {SHARDD}
    assert {p.theirs for p in plan.full(with_etcd=False).pairs} == {SHARDD}


def test_targets_within_one_system_never_read_the_paired_rounds() -> None:
    """The router-vs-node ratio of batches of 100 read rests on the cell shardkv ran
    alone; with that cell failed it is n/a, whatever the paired rounds measured."""
    rows = [*clean_rows(), *reads_vs_etcd3([1.4, 1.5, 1.6])]
    alone = next(
        r
        for r in rows
        if r["system"] == SHARDKV
        and r["section"] == "batches"
        and r["cell"]["batch"] == 100
        and r["cell"]["mix"] == "get-only"
    )
    alone.update(status="failed", reason="server(s) exited: n2")
    verdict = verdicts_of(rows)[ROUTER_BATCH["get-only", 100]]
    assert verdict.verdict == "n/a" and "did not run" in verdict.measured


def test_a_peer_that_did_not_start_makes_the_comparison_na() -> None:
    """paired.py records ours as n/a (not run) when its peer failed: nothing to compare."""
    paired = reads_vs_etcd3([1.4, 1.5, 1.6])
    for number in range(3):
        paired[2 * number].update(status="n/a", reason="not run: etcd-3 failed")
        paired[2 * number + 1].update(status="failed", reason="etcd is not installed")
    verdict = verdicts_of([*clean_rows(), *paired])[READS_VS_ETCD3]
    assert verdict.verdict == "n/a", verdict
