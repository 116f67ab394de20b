"""The history checker catches what it is meant to catch: small hand-written histories with
a lost write, a stale read, a phantom value and an LWW discard, next to clean ones."""

from __future__ import annotations

from faults.checker import Final, check
from faults.history import DELETE, GET, OK, PUT, UNKNOWN, Op

K = b"k"


def put(value: bytes, start: float, end: float, version: int, outcome: str = OK) -> Op:
    return Op("w", PUT, K, value, start, end, outcome, version if outcome == OK else 0)


def get(value: bytes | None, start: float, end: float, version: int) -> Op:
    return Op("r", GET, K, value, start, end, OK, version)


def final(value: bytes, version: int, tombstone: bool = False) -> dict[bytes, Final]:
    return {K: Final(version, 1, tombstone, value)}


def test_a_clean_history_passes() -> None:
    ops = [put(b"a", 0, 1, 10), get(b"a", 2, 3, 10), put(b"b", 4, 5, 20), get(b"b", 6, 7, 20)]
    verdict = check(ops, final(b"b", 20))
    assert verdict.problems() == []
    assert (verdict.acknowledged_writes, verdict.reads) == (2, 2)


def test_an_acknowledged_write_below_the_final_version_is_lost() -> None:
    verdict = check([put(b"a", 0, 1, 10), put(b"b", 2, 3, 20)], final(b"a", 10))
    assert [op.value for op, _ in verdict.lost] == [b"b"]


def test_a_read_older_than_an_earlier_acknowledged_write_is_stale() -> None:
    ops = [put(b"a", 0, 1, 10), put(b"b", 2, 3, 20), get(b"a", 4, 5, 10)]
    verdict = check(ops, final(b"b", 20))
    assert [(read.value, newer.value) for read, newer in verdict.stale] == [(b"a", b"b")]
    # A read that overlaps the newer write may return either value.
    assert check([*ops[:2], get(b"a", 2.5, 5, 10)], final(b"b", 20)).stale == []


def test_not_found_after_a_put_is_stale_unless_a_delete_explains_it() -> None:
    ops = [put(b"a", 0, 1, 10), get(None, 2, 3, 0)]
    assert len(check(ops, final(b"a", 10)).stale) == 1
    deleted = [*ops, Op("d", DELETE, K, None, 1.5, 9, UNKNOWN)]
    assert check(deleted, final(b"", 30, tombstone=True)).stale == []


def test_values_nobody_wrote_are_phantoms() -> None:
    verdict = check([put(b"a", 0, 1, 10), get(b"zz", 2, 3, 5)], final(b"yy", 10))
    assert sorted(op.value or b"" for op in verdict.phantoms) == [b"yy", b"zz"]


def test_an_earlier_write_winning_over_a_later_acknowledged_one_is_a_discard() -> None:
    # b was acknowledged after a finished, yet a (a skewed clock's higher version) stays.
    ops = [put(b"a", 0, 1, 50), put(b"b", 2, 3, 20)]
    verdict = check(ops, final(b"a", 50))
    assert verdict.lost == []
    assert [(op.value, by.value) for op, by in verdict.discarded] == [(b"b", b"a")]
    assert verdict.problems(allow_discards=True) == []
    # Overlapping writes may end in either order: no discard.
    assert check([put(b"a", 0, 2.5, 50), put(b"b", 2, 3, 20)], final(b"a", 50)).discarded == []


def test_unknown_writes_may_or_may_not_have_happened() -> None:
    ops = [put(b"a", 0, 1, 10), put(b"b", 2, 3, 0, outcome=UNKNOWN)]
    assert check(ops, final(b"a", 10)).problems() == []
    assert check(ops, final(b"b", 15)).problems() == []
