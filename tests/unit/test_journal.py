"""The journal's files (shardd/journal.py) on real files: frames overwrite zeros written
ahead of them, so a sync after an append leaves the file's size alone; a replay reads
every frame and stops at the zeros after the last one (quietly) or at a torn frame
(saying so); a frame larger than a step of zeros grows the file by as many steps; a file
takes frames only once the journal emptied it."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from shardkv.shardd.journal import FILES, RESERVE_BYTES, Journal, JournalBroken, replay


def sizes(directory: Path) -> list[int]:
    return [(directory / name).stat().st_size for name in FILES]


def emptied(directory: Path) -> Journal:
    """A journal whose files were emptied, as the store's replay leaves them."""
    journal = Journal(directory)
    journal.clear_all()
    return journal


def test_appends_overwrite_zeros_written_ahead_so_the_size_stays_put(tmp_path: Path) -> None:
    """The size is what an fdatasync must commit besides the data: it changes once per
    RESERVE_BYTES of frames, not once per append."""
    journal = emptied(tmp_path)
    try:
        assert sizes(tmp_path) == [RESERVE_BYTES, RESERVE_BYTES]  # zeroed when emptied
        journal.append({b"first": b"v"})
        for i in range(500):
            journal.append({b"k%d" % i: b"x" * 100})
        assert sizes(tmp_path) == [RESERVE_BYTES, RESERVE_BYTES]
    finally:
        journal.close()
    entries = list(replay(tmp_path))
    assert entries[0] == (b"first", b"v") and len(entries) == 501
    assert entries[-1] == (b"k499", b"x" * 100)


def test_zeros_after_the_last_frame_end_a_replay_quietly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    journal = emptied(tmp_path)
    try:
        journal.append({b"a": b"1", b"b": b"2"})
        journal.append({b"c": b"3"})
    finally:
        journal.close()
    with caplog.at_level(logging.WARNING, logger="shardkv.shardd.journal"):
        assert list(replay(tmp_path)) == [(b"a", b"1"), (b"b", b"2"), (b"c", b"3")]
    assert not caplog.records  # zeros are no torn tail


def test_a_torn_frame_over_the_zeros_is_ignored_and_said(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A crash cut the frame written after the last acknowledged one: its header and part
    of its payload reached the file, the rest of it is still zeros."""
    journal = emptied(tmp_path)
    try:
        journal.append({b"kept": b"v"})
    finally:
        journal.close()
    path = tmp_path / FILES[0]
    data = path.read_bytes()
    end = 8 + int.from_bytes(data[:4], "little")
    with path.open("r+b") as file:
        file.seek(end)
        file.write((200).to_bytes(4, "little") + b"\x01\x02\x03\x04" + b"part of a payload")
    with caplog.at_level(logging.WARNING, logger="shardkv.shardd.journal"):
        assert list(replay(tmp_path)) == [(b"kept", b"v")]
    assert "journal tail ignored" in caplog.text and f"offset={end}" in caplog.text


def test_a_frame_larger_than_a_step_grows_the_file_by_as_many_steps(tmp_path: Path) -> None:
    journal = emptied(tmp_path)
    large = os.urandom(RESERVE_BYTES + RESERVE_BYTES // 2)
    try:
        journal.append({b"small": b"v"})
        journal.append({b"large": large})
        journal.append({b"after": b"w"})
        assert sizes(tmp_path)[0] == 2 * RESERVE_BYTES
    finally:
        journal.close()
    assert list(replay(tmp_path)) == [(b"small", b"v"), (b"large", large), (b"after", b"w")]


def test_frames_that_end_on_a_step_boundary_and_one_past_it(tmp_path: Path) -> None:
    """The first frame fills the first step to its last byte (8 bytes of header, 6 per
    entry, the key and the value); the next needs a step of its own."""
    journal = emptied(tmp_path)
    exact = b"e" * (RESERVE_BYTES - 8 - 6 - len(b"exact"))
    try:
        journal.append({b"exact": exact})
        assert sizes(tmp_path)[0] == RESERVE_BYTES
        journal.append({b"next": b"n"})
        assert sizes(tmp_path)[0] == 2 * RESERVE_BYTES
    finally:
        journal.close()
    assert list(replay(tmp_path)) == [(b"exact", exact), (b"next", b"n")]


def test_a_write_the_kernel_takes_in_pieces_is_written_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pwrite may take part of what it is given (a signal, a full disk): the rest follows
    at the right offset, for the zeros (the steps zeroed when emptied and the one a large
    frame adds) and the frames alike."""
    real = os.pwrite
    pieces = 0

    def a_third(fd: int, data: bytes | memoryview, offset: int) -> int:
        nonlocal pieces
        pieces += 1
        return real(fd, bytes(data[: max(1, len(data) // 3)]), offset)

    monkeypatch.setattr(os, "pwrite", a_third)
    large = os.urandom(RESERVE_BYTES)
    try:
        journal = emptied(tmp_path)
        journal.append({b"a": b"first value"})
        journal.append({b"large": large})
        journal.append({b"b": b"second value"})
        journal.close()
    finally:
        monkeypatch.setattr(os, "pwrite", real)
    assert sizes(tmp_path) == [2 * RESERVE_BYTES, RESERVE_BYTES] and pieces > 100
    entries = [(b"a", b"first value"), (b"large", large), (b"b", b"second value")]
    assert list(replay(tmp_path)) == entries


_NO_ROOM = """
import resource, signal, sys
from pathlib import Path
from shardkv.shardd.journal import Journal, JournalBroken
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))
journal = Journal(Path(sys.argv[1]))
journal.clear(0)
journal.clear(1)
print("emptied", flush=True)
try:
    journal.append({b"k": b"v"})
except JournalBroken as exc:
    print("refused", exc, flush=True)
"""


def test_a_disk_without_room_for_a_step_refuses_the_first_append(tmp_path: Path) -> None:
    """Emptying zeroes a step only as a courtesy: a file that cannot take it is still
    emptied (a warning says so), and the append that needs the room fails as broken,
    acknowledging nothing."""
    child = subprocess.run(
        [sys.executable, "-c", _NO_ROOM, str(tmp_path)], capture_output=True, timeout=60
    )
    out, err = child.stdout.decode(), child.stderr.decode()
    assert child.returncode == 0, err
    assert "emptied" in out and "refused" in out and "File too large" in out, out
    assert "journal step not zeroed" in err
    assert list(replay(tmp_path)) == []


def test_nothing_to_append_writes_no_frame_that_would_end_the_file(tmp_path: Path) -> None:
    """An empty frame reads as the zeros after the last frame: the frames after it would
    be lost to a replay."""
    journal = emptied(tmp_path)
    try:
        journal.append({b"before": b"1"})
        assert journal.append({}) == 0
        journal.append({b"after": b"2"})
    finally:
        journal.close()
    assert list(replay(tmp_path)) == [(b"before", b"1"), (b"after", b"2")]


def test_an_emptied_file_starts_again_from_nothing(tmp_path: Path) -> None:
    """clear() truncates before it zeroes a step again: no frame of an earlier round can
    follow the zeros of a later one, however far the earlier round reached."""
    journal = emptied(tmp_path)
    try:
        journal.append({b"old": b"1" * (2 * RESERVE_BYTES)})
        journal.switch()
        journal.clear(0)
        assert sizes(tmp_path) == [RESERVE_BYTES, RESERVE_BYTES]
        journal.append({b"other file": b"2"})
        journal.switch()
        journal.append({b"new": b"3"})
    finally:
        journal.close()
    assert list(replay(tmp_path)) == [(b"new", b"3"), (b"other file", b"2")]


def test_a_file_not_emptied_since_it_was_opened_takes_no_frame(tmp_path: Path) -> None:
    """Frames written from the start of a file that still holds a longer earlier round
    would be followed by its older frames in a replay (a purged key could come back)."""
    journal = emptied(tmp_path)
    try:
        journal.append({b"earlier": b"1" * (2 * RESERVE_BYTES)})
    finally:
        journal.close()
    reopened = Journal(tmp_path)
    try:
        with pytest.raises(JournalBroken, match="emptied"):
            reopened.append({b"new": b"2"})
    finally:
        reopened.close()
    assert [key for key, _ in replay(tmp_path)] == [b"earlier"]


def test_a_file_whose_emptying_failed_takes_no_frame(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A truncation whose sync failed leaves the file's state unknown: a frame written
    where the last round ended would follow a hole, and a replay would stop before it."""
    journal = emptied(tmp_path)
    try:
        journal.append({b"old": b"1" * 5000})
        real = os.fdatasync

        def failing(fd: int) -> None:
            raise OSError(5, "Input/output error")

        monkeypatch.setattr(os, "fdatasync", failing)
        with pytest.raises(OSError):
            journal.clear(0)
        monkeypatch.setattr(os, "fdatasync", real)
        with pytest.raises(JournalBroken, match="emptied"):
            journal.append({b"new": b"2"})
    finally:
        journal.close()
