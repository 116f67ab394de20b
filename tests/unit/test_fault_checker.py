"""The history checker catches what it is meant to catch, and only that.

Each detection is proven by a small hand-made history that breaks the property on purpose
(a lost delete, a stale read, a relabelled value, a silent deletion, ...) and must be
reported with its kind and key; next to them, correct histories (concurrent writes,
retried puts, unknown outcomes properly ordered) must pass. Times are seconds, versions
small integers; a worker's first two letters name its client, whose router is its clock
(workload.writers).
"""

from __future__ import annotations

import pytest
from faults.checker import check
from faults.history import DELETE, FAILED, GET, OK, PUT, UNKNOWN, Op, reads_during
from faults.verdict import (
    DISCARDED,
    FUTURE,
    LOST,
    MISLABELLED,
    PHANTOM,
    REORDERED,
    SILENT_DELETE,
    STALE,
    UNVERSIONED,
    Final,
    Verdict,
)
from faults.workload import writers
from shardkv.common.hlc import writer_number

K = b"k"
# Client c0 talks to r1, c1 to r2; r2's writer number is the higher (LWW ties go to it).
ROUTERS = writers(["r1", "r2"])
R1, R2 = writer_number("r1"), writer_number("r2")


def put(
    value: bytes,
    start: float,
    end: float,
    version: int,
    outcome: str = OK,
    key: bytes = K,
    worker: str = "c0w1",
) -> Op:
    return Op(worker, PUT, key, value, start, end, outcome, version)


def delete(
    start: float,
    end: float,
    version: int,
    outcome: str = OK,
    key: bytes = K,
    worker: str = "c0w2",
) -> Op:
    return Op(worker, DELETE, key, None, start, end, outcome, version)


def get(value: bytes | None, start: float, end: float, version: int, key: bytes = K) -> Op:
    return Op("c0w3", GET, key, value, start, end, OK, version)


def final(
    value: bytes, version: int, tombstone: bool = False, writer: int = 1
) -> dict[bytes, Final]:
    return {K: Final(version, writer, tombstone, value)}


def tombstone(version: int) -> dict[bytes, Final]:
    return final(b"", version, tombstone=True)


def kinds(verdict: Verdict) -> set[str]:
    return {finding.kind for finding in verdict.findings}


def only(verdict: Verdict, kind: str) -> list[Op | None]:
    """The ops of verdict's findings, asserting they are all of kind."""
    assert kinds(verdict) == {kind}, verdict.problems()
    return [finding.op for finding in verdict.findings]


# Correct histories pass.


def test_a_clean_history_passes() -> None:
    ops = [
        put(b"a", 0, 1, 10),
        get(b"a", 2, 3, 10),
        put(b"b", 4, 5, 20),
        get(b"b", 6, 7, 20),
        delete(8, 9, 30),
        get(None, 10, 11, 0),
    ]
    verdict = check(ops, tombstone(30))
    assert verdict.problems() == []
    assert (verdict.acknowledged_writes, verdict.reads, verdict.reads_not_found) == (3, 3, 1)


def test_concurrent_writes_and_reads_may_see_either_value() -> None:
    ops = [put(b"a", 0, 3, 20), put(b"b", 1, 4, 10, worker="c0w9")]
    # Reads overlapping both writes may return either, or the key's absence.
    reads = [get(b"b", 2, 2.5, 10), get(b"a", 2, 2.5, 20), get(None, 0.5, 2, 0)]
    verdict = check([*ops, *reads], final(b"a", 20))
    assert verdict.problems() == []
    # After both ended, only the higher version is fresh.
    assert only(check([*ops, get(b"b", 5, 6, 10)], final(b"a", 20)), STALE) == [get(b"b", 5, 6, 10)]


def test_unknown_outcomes_ordered_consistently_are_accepted() -> None:
    ops = [
        put(b"a", 0, 1, 10),
        put(b"b", 2, 3, 0, outcome=UNKNOWN),
        get(b"b", 2.5, 4, 15),  # b took effect under 15, between a (10) and c (20)
        put(b"c", 5, 6, 20),
        delete(6.5, 8, 0, outcome=UNKNOWN),  # may take effect after c
        get(None, 7, 9, 0),
    ]
    assert check(ops, tombstone(25)).problems() == []
    assert check(ops, final(b"c", 20)).problems() == []
    assert check(ops[:2], final(b"a", 10)).problems() == []  # b never happened
    assert check(ops[:2], final(b"b", 15)).problems() == []  # or happened


def test_a_retried_put_may_show_its_earlier_attempt_while_it_runs() -> None:
    # The SDK retried after UNAVAILABLE: the first attempt left version 12 on a replica.
    ops = [put(b"a", 0, 1, 10), put(b"b", 2, 5, 14), get(b"b", 3, 4, 12)]
    assert check(ops, final(b"b", 14)).problems() == []
    # Once the put was acknowledged, the earlier attempt is stale.
    assert only(check([*ops, get(b"b", 6, 7, 12)], final(b"b", 14)), STALE) == [get(b"b", 6, 7, 12)]


# Item 1: reads and the final record are linked to the write of that value and version.


def test_an_old_value_labelled_with_a_newer_version_is_mislabelled() -> None:
    ops = [put(b"a", 0, 1, 10), put(b"b", 2, 3, 20), get(b"a", 4, 5, 20)]
    assert only(check(ops, final(b"b", 20)), MISLABELLED) == [get(b"a", 4, 5, 20)]


def test_an_unknown_puts_value_under_a_later_writes_version_is_caught() -> None:
    # a's outcome is unknown, so its version is not known: but it ended before b began,
    # so its clock stamped it below b's 20.
    ops = [put(b"a", 0, 1, 0, outcome=UNKNOWN), put(b"b", 2, 3, 20)]
    verdict = check([*ops, get(b"a", 4, 5, 25)], final(b"a", 25))
    # Reported on the later write, naming the read that showed the impossible version.
    assert only(verdict, REORDERED) == [ops[1]]
    assert "get b'k' -> b'a' version=25" in verdict.problems()[0]
    # Under b's own version it is another put's value.
    assert only(check([*ops, get(b"a", 4, 5, 20)], final(b"b", 20)), MISLABELLED) == [ops[0]]


def test_a_read_of_a_value_whose_put_began_after_the_read_ended_is_from_the_future() -> None:
    ops = [put(b"a", 0, 1, 10), get(b"b", 2, 3, 20), put(b"b", 4, 5, 20)]
    assert only(check(ops, final(b"b", 20)), FUTURE) == [get(b"b", 2, 3, 20)]


def test_a_final_older_value_under_a_version_no_write_received_is_caught() -> None:
    ops = [put(b"a", 0, 1, 10), put(b"b", 2, 3, 20)]
    assert only(check(ops, final(b"a", 30)), MISLABELLED) == [None]
    # The same with a's outcome unknown: it ended before b began, so 30 cannot be a's.
    unknown = [put(b"a", 0, 1, 0, outcome=UNKNOWN), ops[1]]
    verdict = check(unknown, final(b"a", 30))
    assert only(verdict, REORDERED) == [unknown[1]]
    assert "final record value=b'a' version=30" in verdict.problems()[0]


def test_a_final_acknowledged_version_with_another_puts_value_is_caught() -> None:
    ops = [put(b"a", 0, 1, 10), put(b"b", 2, 3, 20)]
    assert only(check(ops, final(b"a", 20)), MISLABELLED) == [None]
    concurrent = [put(b"a", 0, 3, 0, outcome=UNKNOWN), put(b"b", 1, 2, 20)]
    assert only(check(concurrent, final(b"a", 20)), MISLABELLED) == [concurrent[0]]


def test_a_final_tombstone_no_delete_wrote_is_a_silent_deletion() -> None:
    ops = [put(b"a", 0, 1, 10), get(b"a", 2, 3, 10)]
    assert only(check(ops, tombstone(30)), SILENT_DELETE) == [None]
    # An acknowledged delete explains only its own version.
    assert only(check([*ops, delete(4, 5, 20)], tombstone(30)), SILENT_DELETE) == [None]
    # An unknown delete that ended before the put began cannot be stamped above it.
    early = [delete(-2, -1, 0, outcome=UNKNOWN), *ops]
    assert only(check(early, tombstone(30)), SILENT_DELETE) == [None]
    late = [*ops, delete(4, 5, 0, outcome=UNKNOWN)]
    assert check(late, tombstone(30)).problems() == []


def test_a_tombstone_carries_the_writer_of_the_delete_that_wrote_it() -> None:
    # A delete through r1 and a put through r2 acknowledged at one version: the put wins
    # the tie, so a final tombstone with r2's writer was written by no delete.
    ops = [delete(0, 1, 10, worker="c0w2"), put(b"a", 0, 1, 10, worker="c1w1")]
    assert SILENT_DELETE in kinds(check(ops, final(b"", 10, True, R2), writer_of=ROUTERS))
    assert check(ops[:1], final(b"", 10, True, R1), writer_of=ROUTERS).problems() == []
    # A delete through r1 of unknown outcome stamps r1's writer, never r2's.
    unknown = [
        put(b"a", 0, 1, 10, worker="c1w1"),
        delete(0.5, 1.5, 0, outcome=UNKNOWN, worker="c0w2"),
        get(None, 2, 3, 0),
    ]
    verdict = check(unknown, final(b"", 10, True, R2), writer_of=ROUTERS)
    assert SILENT_DELETE in kinds(verdict), verdict.problems()


def test_an_acknowledged_write_with_version_0_is_unversioned() -> None:
    # Without the check, version 0 would hide that the write is lost.
    ops = [put(b"a", 0, 1, 10), put(b"b", 2, 3, 0)]
    assert only(check(ops, final(b"a", 10)), UNVERSIONED) == [ops[1]]
    deleted = [put(b"a", 0, 1, 10), delete(2, 3, 0)]
    assert only(check(deleted, final(b"a", 10)), UNVERSIONED) == [deleted[1]]


# Item 10: lost writes, lost deletes, stale reads, failed puts' values, several keys.


def test_an_acknowledged_write_below_the_final_version_is_lost() -> None:
    ops = [put(b"a", 0, 1, 10), put(b"b", 2, 3, 20)]
    assert only(check(ops, final(b"a", 10)), LOST) == [ops[1]]
    assert only(check(ops, {}), LOST) == ops  # no record at all


def test_a_version_a_read_saw_must_survive_even_if_its_put_had_no_outcome() -> None:
    ops = [put(b"a", 0, 1, 10), put(b"b", 2, 3, 0, outcome=UNKNOWN), get(b"b", 2.5, 4, 15)]
    assert only(check(ops, final(b"a", 10)), LOST) == [ops[2]]
    deleted = [*ops, delete(2.2, 3.5, 12)]
    assert only(check(deleted, tombstone(12)), LOST) == [ops[2]]


def test_a_lost_delete_brings_the_value_back() -> None:
    ops = [put(b"a", 0, 1, 10), delete(2, 3, 20)]
    assert only(check(ops, final(b"a", 10)), LOST) == [ops[1]]
    # Resurrected under a fresh version, it is no longer the put's value.
    assert only(check(ops, final(b"a", 30)), MISLABELLED) == [None]


def test_a_read_of_the_value_after_an_acknowledged_delete_is_stale() -> None:
    ops = [put(b"a", 0, 1, 10), delete(2, 3, 20), get(b"a", 4, 5, 10)]
    assert only(check(ops, tombstone(20)), STALE) == [ops[2]]


def test_not_found_after_an_acknowledged_put_is_stale_without_a_delete() -> None:
    ops = [put(b"a", 0, 1, 10), get(None, 2, 3, 0)]
    assert only(check(ops, final(b"a", 10)), STALE) == [ops[1]]
    concurrent = [*ops, delete(1.5, 2.5, 20)]
    assert check(concurrent, tombstone(20)).problems() == []
    older = [*ops, delete(-2, 4, 5)]  # acknowledged, but with a lower version than the put
    assert only(check(older, final(b"a", 10)), STALE) == [ops[1]]


def test_an_unknown_delete_excuses_not_found_only_if_it_could_follow_the_acked_writes() -> None:
    # The delete timed out before the put began: its tombstone is older than the put.
    early = delete(0, 1, 0, outcome=UNKNOWN)
    ops = [early, put(b"a", 2, 3, 10), get(None, 4, 5, 0), get(None, 50, 51, 0)]
    assert only(check(ops, final(b"a", 10)), STALE) == [ops[2], ops[3]]
    # One that overlapped the put, or came after it, could be newer.
    for late in (delete(2.5, 3.5, 0, outcome=UNKNOWN), delete(3.5, 9, 0, outcome=UNKNOWN)):
        assert check([*ops[1:], late], final(b"a", 10)).problems() == []
    # But it must have begun before the read ended.
    after = [*ops[1:3], delete(6, 7, 0, outcome=UNKNOWN)]
    assert only(check(after, final(b"a", 10)), STALE) == [ops[2]]


def test_a_value_written_only_by_a_failed_put_is_a_phantom() -> None:
    ops = [put(b"a", 0, 1, 10), put(b"b", 2, 3, 0, outcome=FAILED), get(b"b", 4, 5, 15)]
    assert only(check(ops, final(b"a", 10)), PHANTOM) == [ops[2]]
    assert only(check(ops[:2], final(b"b", 15)), PHANTOM) == [None]


def test_values_nobody_wrote_are_phantoms() -> None:
    verdict = check([put(b"a", 0, 1, 10), get(b"zz", 2, 3, 15)], final(b"yy", 10))
    assert only(verdict, PHANTOM) == [get(b"zz", 2, 3, 15), None]


def test_violations_in_several_keys_are_each_reported_with_their_key() -> None:
    k1, k2, k3, clean = b"k1", b"k2", b"k3", b"k4"
    ops = [
        put(b"a", 0, 1, 10, key=k1),
        put(b"b", 2, 3, 20, key=k1),  # lost: k1 ends with a
        put(b"c", 0, 1, 10, key=k2),
        delete(2, 3, 20, key=k2),
        get(b"c", 4, 5, 10, key=k2),  # stale: k2 was deleted before
        put(b"d", 0, 1, 10, key=k3),  # k3 ends with a tombstone nobody wrote
        put(b"e", 0, 1, 10, key=clean),
        get(b"e", 2, 3, 10, key=clean),
    ]
    finals = {
        k1: Final(10, 1, False, b"a"),
        k2: Final(20, 1, True, b""),
        k3: Final(30, 1, True, b""),
        clean: Final(10, 1, False, b"e"),
    }
    verdict = check(ops, finals)
    found = {(finding.key, finding.kind) for finding in verdict.findings}
    assert found == {(k1, LOST), (k2, STALE), (k3, SILENT_DELETE)}
    assert all(repr(finding.key) in str(finding) for finding in verdict.findings)
    # A key with a record but no operation at all is reported too.
    assert only(check([], {b"k9": Final(5, 1, False, b"x")}), PHANTOM) == [None]


# LWW across clocks, and what one clock promises.


def test_an_earlier_write_on_another_clock_winning_is_a_discard() -> None:
    # b (clock c1) was acknowledged after a (clock c0, running ahead) ended; a's higher
    # version wins: LWW discarded b. Allowed only when the caller says clocks may disagree.
    ops = [put(b"a", 0, 1, 50, worker="c0w1"), put(b"b", 2, 3, 20, worker="c1w1")]
    verdict = check(ops, final(b"a", 50, writer=R1), writer_of=ROUTERS)
    assert only(verdict, DISCARDED) == [ops[1]]
    assert verdict.problems(allow_discards=True) == []
    # Overlapping writes may end in either order: no discard.
    overlapping = [ops[0], put(b"b", 0.5, 3, 20, worker="c1w1")]
    assert check(overlapping, final(b"a", 50, writer=R1), writer_of=ROUTERS).problems() == []


def test_one_clock_going_backwards_is_never_excused() -> None:
    ops = [put(b"a", 0, 1, 50), put(b"b", 2, 3, 20)]
    verdict = check(ops, final(b"a", 50))
    assert only(verdict, REORDERED) == [ops[1]]
    assert verdict.problems(allow_discards=True) != []


def test_an_unknown_delete_on_another_clock_may_carry_any_version() -> None:
    # What skewed clocks cost: a delete through the other router, ended before the put
    # began, may still have a higher version; so it explains the not-found read.
    ops = [
        delete(0, 1, 0, outcome=UNKNOWN, worker="c1w2"),
        put(b"a", 2, 3, 10, worker="c0w1"),
        get(None, 4, 5, 0),
    ]
    assert check(ops, final(b"a", 10, writer=R1), writer_of=ROUTERS).problems() == []
    assert only(check(ops, final(b"a", 10)), STALE) == [ops[2]]


def test_equal_versions_of_two_routers_order_by_writer_as_replicas_do() -> None:
    # Routers sharing a wall clock stamp writes of one millisecond alike; every replica
    # keeps the higher writer's (hlc.precedes). A delete through r2 at the version of an
    # overlapping put through r1 wins: a read after the put, overlapping the delete's
    # acknowledgement, finds nothing (multi-host scenario (d), d/005: both stamped in one
    # millisecond, logical 0).
    assert R2 > R1
    ops = [
        put(b"a", 0, 2, 10, worker="c0w1"),
        delete(1, 4.5, 10, worker="c1w2"),
        get(None, 4, 5, 0),
    ]
    assert check(ops, final(b"", 10, True, R2), writer_of=ROUTERS).problems() == []
    # The other way round the put wins the tie, so not-found is stale, and so is a read of
    # the value the tie threw away.
    swapped = [
        put(b"a", 0, 2, 10, worker="c1w1"),
        delete(1, 4.5, 10, worker="c0w2"),
        get(None, 4, 5, 0),
    ]
    verdict = check(swapped, final(b"a", 10, writer=R2), writer_of=ROUTERS)
    assert only(verdict, STALE) == [swapped[2]]
    lost_tie = [
        put(b"a", 0, 2, 10, worker="c0w1"),
        put(b"b", 1, 3, 10, worker="c1w1"),
        get(b"a", 4, 5, 10),
    ]
    verdict = check(lost_tie, final(b"b", 10, writer=R2), writer_of=ROUTERS)
    assert only(verdict, STALE) == [lost_tie[2]]
    # A final record holding the tie's loser loses the winner.
    assert only(check(lost_tie[:2], final(b"a", 10, writer=R1), writer_of=ROUTERS), LOST) == [
        lost_tie[1]
    ]


# Bookkeeping.


def test_failed_reads_are_counted_and_reads_are_counted_per_fault_window() -> None:
    failed = Op("c0w3", GET, K, None, 1, 2, FAILED, error="UNAVAILABLE")
    ops = [put(b"a", 0, 1, 10), failed, get(b"a", 2, 3, 10), get(None, 5, 6, 0)]
    verdict = check(ops[:3], final(b"a", 10))
    assert (verdict.reads, verdict.failed_reads) == (1, 1)
    windows = [("first", 0.5, 4.0), ("second", 4.5, 7.0), ("third", 8.0, 9.0)]
    assert reads_during(ops, windows) == {"first": 1, "second": 1, "third": 0}


def test_a_value_written_twice_breaks_the_premise() -> None:
    with pytest.raises(ValueError, match="written twice"):
        check([put(b"a", 0, 1, 10), put(b"a", 2, 3, 20)], final(b"a", 20))
