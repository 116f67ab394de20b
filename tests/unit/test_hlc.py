"""The hybrid logical clock driven by an injected wall clock: monotonic whatever the wall
clock does, the logical counter, the max offset, the reservation across restarts, the
writer-id lock and the tie-break on contents."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from shardkv.common.clock_state import ClockState
from shardkv.common.hlc import (
    LOGICAL_BITS,
    MAX_VERSION,
    ClockStateError,
    HybridClock,
    VersionAhead,
    newest,
    precedes,
    version_millis,
)
from shardkv.common.limits import LimitExceeded
from shardkv.shardd.records import Record

T = 1_800_000_000.0  # seconds since the epoch: the tests' "now"
T_MS = int(T * 1000)


@dataclass
class Wall:
    """A wall clock a test moves by hand, backwards too."""

    now: float = T

    def __call__(self) -> float:
        return self.now


@dataclass
class FakeReservation:
    """Records every bound saved and the thread that saved it."""

    reserved: int = 0
    saves: list[tuple[int, str]] = field(default_factory=list)
    closed: bool = False

    def save(self, bound: int) -> None:
        self.saves.append((bound, threading.current_thread().name))
        self.reserved = bound

    def close(self) -> None:
        self.closed = True


def at(millis: int, logical: int = 0) -> int:
    return millis << LOGICAL_BITS | logical


def test_versions_increase_while_the_wall_clock_goes_backwards() -> None:
    wall = Wall()
    clock = HybridClock(wall=wall, max_offset_ms=None)
    versions = [clock.now()]
    for step in (-5.0, -0.001, -60.0, 0.0, 30.0, 31.0):
        wall.now = T + step
        versions.append(clock.now())
    assert versions == sorted(set(versions))
    assert version_millis(versions[0]) == T_MS
    # Back at the wall clock once it passes the versions handed out.
    assert version_millis(versions[-1]) == T_MS + 31_000


def test_a_wall_clock_stepped_back_beyond_the_max_offset_refuses_versions_for_a_while() -> None:
    wall = Wall()
    clock = HybridClock(wall=wall, max_offset_ms=500)
    first = clock.now()
    wall.now = T - 0.4  # within the max offset: versions go on from the clock
    second = clock.now()
    assert second == first + 1
    wall.now = T - 5.0  # beyond it: refused rather than handed out lower or far ahead
    with pytest.raises(VersionAhead, match="5000 ms ahead"):
        clock.now()
    wall.now = T - 0.5
    assert clock.now() == second + 1


def test_the_logical_counter_overflows_into_the_next_millisecond() -> None:
    clock = HybridClock(wall=Wall())
    assert clock.observe(at(T_MS, (1 << LOGICAL_BITS) - 1))
    assert clock.now() == at(T_MS + 1)
    versions = [clock.now() for _ in range(1 << LOGICAL_BITS)]
    assert versions == sorted(set(versions))
    assert versions[-1] == at(T_MS + 2)


def test_observe_adopts_versions_within_the_max_offset_and_ignores_the_rest() -> None:
    clock = HybridClock(wall=Wall(), max_offset_ms=500)
    assert clock.observe(at(T_MS + 400, 7))
    assert clock.now() == at(T_MS + 400, 8)
    for wild in (at(T_MS + 501), MAX_VERSION, MAX_VERSION + 1):
        assert not clock.observe(wild)
    assert clock.ignored == 3
    # A wild version read once does not break later writes (it made them INTERNAL).
    assert clock.now() == at(T_MS + 400, 9)


def test_check_refuses_a_version_beyond_the_max_offset_naming_it() -> None:
    clock = HybridClock(wall=Wall(), max_offset_ms=500)
    clock.check(at(T_MS + 500, 9), "record of key b'k'")
    with pytest.raises(VersionAhead) as refused:
        clock.check(at(T_MS + 501), "record of key b'k'")
    message = str(refused.value)
    assert isinstance(refused.value, LimitExceeded)  # INVALID_ARGUMENT on every service
    for part in (str(at(T_MS + 501)), str(T_MS), "501 ms ahead", "max clock offset of 500 ms"):
        assert part in message, message
    with pytest.raises(VersionAhead, match="2\\^64-1"):
        clock.check(MAX_VERSION + 1, "record")
    HybridClock(wall=Wall(), max_offset_ms=None).check(MAX_VERSION, "record")


def test_a_clock_without_a_max_offset_stops_at_the_largest_version() -> None:
    clock = HybridClock(wall=Wall(), max_offset_ms=None)
    assert clock.observe(MAX_VERSION)
    with pytest.raises(VersionAhead):
        clock.now()


def test_versions_never_exceed_the_reservation_and_no_version_costs_an_fsync() -> None:
    wall = Wall()
    reservation = FakeReservation()
    clock = HybridClock(wall=wall, state=reservation, reserve_ms=250)
    try:
        assert reservation.saves[0] == (at(T_MS + 251) - 1, threading.current_thread().name)
        versions = []
        for i in range(20_000):
            if i % 1000 == 0:
                wall.now += 0.2  # past half of the lead: a renewal is due
            version = clock.now()
            assert version <= reservation.reserved
            versions.append(version)
        assert versions == sorted(set(versions))
        # Renewals, not one per version; and all but the first off the caller's thread.
        assert len(reservation.saves) < 200
        assert {name for _, name in reservation.saves[1:]} == {"hlc-reserve"}
    finally:
        clock.close()
    assert reservation.closed


def test_an_observed_jump_is_reserved_before_a_version_uses_it() -> None:
    reservation = FakeReservation()
    clock = HybridClock(wall=Wall(), state=reservation, max_offset_ms=5000)
    try:
        assert clock.observe(at(T_MS + 4000))
        version = clock.now()  # waits for the renewal the jump asked for
        assert version == at(T_MS + 4000, 1)
        assert version <= reservation.reserved
    finally:
        clock.close()


def test_a_restarted_clock_starts_above_its_reservation(tmp_path: Path) -> None:
    wall = Wall()
    clock = HybridClock(wall=wall, state=ClockState.open(tmp_path, "r1"), max_offset_ms=None)
    clock.observe(at(T_MS + 3000))  # it moved ahead: a peer's fast clock
    before = clock.now()
    clock.close()
    # Restarted in the same millisecond, and again after NTP stepped the clock back 60 s.
    for step in (0.0, -60.0):
        wall.now = T + step
        clock = HybridClock(wall=wall, state=ClockState.open(tmp_path, "r1"), max_offset_ms=None)
        after = clock.now()
        clock.close()
        assert after > before
        before = after


def test_a_reservation_beyond_the_max_offset_refuses_versions_until_the_wall_catches_up() -> None:
    wall = Wall()
    reservation = FakeReservation(reserved=at(T_MS + 10_000))
    clock = HybridClock(wall=wall, state=reservation, max_offset_ms=500)
    try:
        with pytest.raises(VersionAhead, match="this clock's next version"):
            clock.now()
        wall.now = T + 9.6
        assert clock.now() == at(T_MS + 10_000) + 1
    finally:
        clock.close()


def test_two_writers_with_one_id_are_refused(tmp_path: Path) -> None:
    first = ClockState.open(tmp_path, "r1")
    try:
        with pytest.raises(ClockStateError) as refused:
            ClockState.open(tmp_path, "r1")
        message = str(refused.value)
        assert "'r1'" in message and "already running" in message and "pid" in message
        ClockState.open(tmp_path, "r2").close()
    finally:
        first.close()
    ClockState.open(tmp_path, "r1").close()


def test_a_damaged_state_file_is_refused(tmp_path: Path) -> None:
    state = ClockState.open(tmp_path, "r1")
    state.save(at(T_MS))
    state.close()
    state.path.write_bytes(b"\xff" * 64)
    with pytest.raises(ClockStateError, match="damaged"):
        ClockState.open(tmp_path, "r1")


def test_a_torn_write_keeps_the_older_bound(tmp_path: Path) -> None:
    state = ClockState.open(tmp_path, "r1")
    state.save(at(T_MS))
    state.save(at(T_MS + 1))
    path = state.path
    state.close()
    data = bytearray(path.read_bytes())
    data[0:8] = b"\x00" * 8  # the newer slot (sequence 2) torn
    path.write_bytes(bytes(data))
    reopened = ClockState.open(tmp_path, "r1")
    assert reopened.reserved == at(T_MS)
    reopened.close()


def test_equal_stamps_with_different_contents_are_ordered_the_same_everywhere() -> None:
    apple = Record(b"k", b"apple", 5, 1)
    banana = Record(b"k", b"banana", 5, 1)
    gone = Record(b"k", b"", 5, 1, tombstone=True)
    newer = Record(b"k", b"a", 6, 0)
    assert precedes(apple, banana) and not precedes(banana, apple)
    assert precedes(banana, gone) and not precedes(gone, banana)
    assert not precedes(apple, apple)
    assert precedes(gone, newer)
    orders = ([apple, banana, gone], [gone, banana, apple], [banana, gone, apple])
    assert {newest(order) for order in orders} == {gone}
    assert newest([apple, banana]) == newest([banana, apple]) == banana


def test_the_default_wall_clock_is_the_system_clock() -> None:
    clock = HybridClock()
    assert abs(version_millis(clock.now()) - time.time() * 1000) < 1000


def test_a_batch_gets_consecutive_versions_above_everything_before() -> None:
    wall = Wall()
    clock = HybridClock(wall=wall, max_offset_ms=500)
    before = clock.now()
    first = clock.now_many(1000)
    assert first == before + 1
    assert clock.now() == first + 1000  # the batch's last version was first + 999
    assert clock.observe(at(T_MS + 300, (1 << LOGICAL_BITS) - 2))
    first = clock.now_many(5)  # over the logical counter's end, as five now() calls go
    assert first == at(T_MS + 300, (1 << LOGICAL_BITS) - 1)
    assert clock.now() == first + 5 == at(T_MS + 301, 4)
    with pytest.raises(ValueError, match="at least 1"):
        clock.now_many(0)


def test_a_batch_is_refused_when_its_last_version_is_beyond_the_max_offset() -> None:
    clock = HybridClock(wall=Wall(), max_offset_ms=500)
    assert clock.observe(at(T_MS + 500, (1 << LOGICAL_BITS) - 3))
    with pytest.raises(VersionAhead, match="501 ms"):
        clock.now_many(10)
    assert clock.now_many(2) == at(T_MS + 500, (1 << LOGICAL_BITS) - 2)
