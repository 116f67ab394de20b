"""A batch read's answers compared and placed in C (router/requests/_spans.c) give what the
Python versions give, and bad positions raise instead of reading past a buffer."""

from __future__ import annotations

import ctypes
import os
from array import array
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st
from shardkv.router.requests import read_groups, replica_answers
from shardkv.router.requests.read_groups import python_place, python_same, python_top
from shardkv.router.requests.replica_answers import python_ascending

NATIVE = None if read_groups.place is python_place else read_groups.place
NATIVE_SAME = None if read_groups.same is python_same else read_groups.same
NATIVE_TOP = None if read_groups.top is python_top else read_groups.top
NATIVE_ASCENDING = (
    None if replica_answers.ascending is python_ascending else replica_answers.ascending
)


def native() -> read_groups.Place:
    if NATIVE is None:
        pytest.skip("the C spans are not built (test_the_c_spans_are_built says why)")
    return NATIVE


def native_same() -> read_groups.Same:
    if NATIVE_SAME is None:
        pytest.skip("the C spans are not built (test_the_c_spans_are_built says why)")
    return NATIVE_SAME


def native_ascending() -> Callable[[array[int]], bool]:
    if NATIVE_ASCENDING is None:
        pytest.skip("the C spans are not built (test_the_c_spans_are_built says why)")
    return NATIVE_ASCENDING


def test_the_c_spans_are_built() -> None:
    """make builds router/requests/_spans.c; the Python loop runs only where
    SHARDKV_NO_EXTENSIONS says so."""
    if os.environ.get("SHARDKV_NO_EXTENSIONS"):
        pytest.skip("SHARDKV_NO_EXTENSIONS is set")
    assert NATIVE is not None, "the install did not build shardkv.router.requests._spans"


def answered(entries: list[bytes]) -> tuple[bytes, array[int], array[int]]:
    """A reply's entries joined, with where each starts and ends."""
    bounds = array("I", [0])
    for entry in entries:
        bounds.append(bounds[-1] + len(entry))
    return b"".join(entries), bounds[:-1], bounds[1:]


@given(
    st.lists(st.binary(max_size=40), min_size=1, max_size=60).flatmap(
        lambda entries: st.tuples(
            st.just(entries),
            st.integers(0, len(entries)),
            st.randoms(use_true_random=False),
        )
    )
)
def test_c_and_python_place_every_entry_alike(case: tuple[list[bytes], int, object]) -> None:
    entries, first, rng = case
    members = list(range(len(entries) - first))
    rng.shuffle(members)  # type: ignore[attr-defined]
    joined, starts, ends = answered(entries)
    by_c: list[bytes | None] = [None] * (len(members) + 2)
    by_python: list[bytes | None] = [None] * (len(members) + 2)
    native()(by_c, members, joined, starts, ends, first)
    python_place(by_python, members, joined, starts, ends, first)
    assert by_c == by_python
    assert [by_c[index] for index in members] == entries[first:]


def test_the_c_place_refuses_positions_outside_what_was_answered() -> None:
    place = native()
    joined, starts, ends = answered([b"ab", b"cde"])
    outcomes: list[bytes | None] = [None, None, None]
    with pytest.raises(IndexError, match="2 positions from 1 are outside the 2 starts"):
        place(outcomes, [0, 1], joined, starts, ends, 1)
    with pytest.raises(IndexError, match="member 1 is 3, outside the 3 outcomes"):
        place(outcomes, [0, 3], joined, starts, ends, 0)
    assert outcomes[0] == b"ab"  # places before the bad one are filled
    with pytest.raises(IndexError, match="member 0 is -1"):
        place(outcomes, [-1], joined, starts, ends, 0)
    with pytest.raises(TypeError, match="member 0 is str, not int"):
        place(outcomes, ["0"], joined, starts, ends, 0)  # type: ignore[list-item]
    with pytest.raises(ValueError, match=r"spans \[0, 9\) of 5 bytes"):
        place(outcomes, [0], joined, starts, array("I", [9, 9]), 0)
    with pytest.raises(ValueError, match=r"spans \[3, 2\)"):
        place(outcomes, [0], joined, array("I", [3, 0]), ends, 0)
    with pytest.raises(TypeError, match="starts must be an array of uint32"):
        place(outcomes, [0], joined, array("Q", [0]), ends, 0)
    with pytest.raises(TypeError):
        place((None,), [0], joined, starts, ends, 0)  # type: ignore[arg-type]


def test_an_entry_replaced_may_run_code_that_empties_the_answer() -> None:
    """Freeing what a place held may run Python code; one that empties the outcomes list
    mid-call gets an IndexError, not a write past the list."""
    place = native()

    class Emptier:
        def __del__(self) -> None:
            outcomes.clear()

    joined, starts, ends = answered([b"ab", b"cde"])
    outcomes: list[object] = [Emptier(), None]
    with pytest.raises(IndexError, match="member 1 is 1, outside the 0 outcomes"):
        place(outcomes, [0, 1], joined, starts, ends, 0)  # type: ignore[arg-type]


_columns = st.sampled_from(["I", "Q", "bytes"]).flatmap(
    lambda kind: st.tuples(
        st.just(kind),
        st.lists(st.integers(0, 3), max_size=12),
        st.lists(st.integers(0, 3), max_size=12),
    )
)


@given(_columns, st.integers(0, 13), st.integers(0, 13), st.integers(0, 13))
def test_c_and_python_compare_spans_alike(
    columns: tuple[str, list[int], list[int]], a_start: int, b_start: int, count: int
) -> None:
    """Few distinct values, so that spans are often equal; spans that do not fit raise."""
    kind, a_values, b_values = columns
    a: bytes | array[int] = bytes(a_values) if kind == "bytes" else array(kind, a_values)
    b: bytes | array[int] = bytes(b_values) if kind == "bytes" else array(kind, b_values)
    fits = a_start + count <= len(a_values) and b_start + count <= len(b_values)
    if fits:
        expected = python_same(a, a_start, b, b_start, count)
        assert native_same()(a, a_start, b, b_start, count) is expected
    else:
        with pytest.raises(IndexError, match=f"{count} items from {a_start} and from"):
            native_same()(a, a_start, b, b_start, count)


def test_the_c_comparison_refuses_columns_of_different_item_sizes() -> None:
    same = native_same()
    with pytest.raises(TypeError, match="items of 8 and 4 bytes cannot be compared"):
        same(array("Q", [1]), 0, array("I", [1]), 0, 1)
    with pytest.raises(IndexError):
        same(b"ab", -1, b"ab", 0, 1)
    with pytest.raises(IndexError):
        same(b"ab", 0, b"ab", 0, -1)
    assert same(array("Q", [1, 2, 3]), 1, array("Q", [9, 2, 3]), 1, 2)
    assert not same(array("Q", [1, 2, 3]), 0, array("Q", [9, 2, 3]), 0, 2)
    assert same(b"", 0, b"", 0, 0)


def test_the_c_comparison_refuses_buffers_of_items_without_bytes() -> None:
    """A buffer whose items have no size (an empty ctypes structure) is refused, not
    divided by."""
    same = native_same()

    class Empty(ctypes.Structure):
        _fields_ = []

    with pytest.raises(TypeError, match="items of 0 and 0 bytes"):
        same(Empty(), 0, Empty(), 0, 0)


@given(st.lists(st.integers(0, 2**32 - 1), max_size=30))
def test_c_and_python_tell_ascending_bounds_alike(values: list[int]) -> None:
    """Sorted bounds (the usual reply) and any others: both say whether they never go
    down."""
    ascending = native_ascending()
    for bounds in (array("I", sorted(values)), array("I", values)):
        assert ascending(bounds) is python_ascending(bounds) is (list(bounds) == sorted(bounds))


def test_the_c_ascending_check_refuses_other_arrays() -> None:
    ascending = native_ascending()
    with pytest.raises(TypeError, match="bounds must be an array of uint32"):
        ascending(array("Q", [1, 2]))
    assert ascending(array("I")) and ascending(array("I", [7]))
    assert not ascending(array("I", [0, 5, 4]))


@given(st.lists(st.integers(0, 2**64 - 1), max_size=30), st.integers(0, 31), st.integers(0, 31))
def test_c_and_python_find_the_highest_version_alike(
    values: list[int], start: int, count: int
) -> None:
    if NATIVE_TOP is None:
        pytest.skip("the C spans are not built (test_the_c_spans_are_built says why)")
    versions = array("Q", values)
    if start + count <= len(values):
        assert NATIVE_TOP(versions, start, count) == python_top(versions, start, count)
    else:
        with pytest.raises(IndexError, match=f"{count} versions from {start}"):
            NATIVE_TOP(versions, start, count)


def test_the_c_highest_version_refuses_other_arrays() -> None:
    if NATIVE_TOP is None:
        pytest.skip("the C spans are not built (test_the_c_spans_are_built says why)")
    with pytest.raises(TypeError, match="versions must be an array of uint64"):
        NATIVE_TOP(array("I", [1, 2]), 0, 2)
    assert NATIVE_TOP(array("Q"), 0, 0) == 0
    assert NATIVE_TOP(array("Q", [2**64 - 1, 3]), 0, 2) == 2**64 - 1
