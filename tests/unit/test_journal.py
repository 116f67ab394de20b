"""The journal's files (shardd/journal.py) on real files: frames overwrite zeros written
ahead of them, so a sync after an append leaves the file's size alone; a replay reads
every frame and stops at the zeros after the last one (quietly) or at a torn frame
(saying so); a frame larger than a step of zeros grows the file by as many steps."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from shardkv.shardd.journal import FILES, RESERVE_BYTES, Journal, clear_files, replay


def sizes(directory: Path) -> list[int]:
    return [(directory / name).stat().st_size for name in FILES]


def test_appends_overwrite_zeros_written_ahead_so_the_size_stays_put(tmp_path: Path) -> None:
    """The size is what an fdatasync must commit besides the data: it changes once per
    RESERVE_BYTES of frames, not once per append."""
    journal = Journal(tmp_path)
    try:
        journal.append({b"first": b"v"})
        assert sizes(tmp_path) == [RESERVE_BYTES, 0]
        for i in range(500):
            journal.append({b"k%d" % i: b"x" * 100})
        assert sizes(tmp_path) == [RESERVE_BYTES, 0]
    finally:
        journal.close()
    entries = list(replay(tmp_path))
    assert entries[0] == (b"first", b"v") and len(entries) == 501
    assert entries[-1] == (b"k499", b"x" * 100)


def test_zeros_after_the_last_frame_end_a_replay_quietly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    journal = Journal(tmp_path)
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
    journal = Journal(tmp_path)
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
    journal = Journal(tmp_path)
    large = os.urandom(RESERVE_BYTES + RESERVE_BYTES // 2)
    try:
        journal.append({b"small": b"v"})
        journal.append({b"large": large})
        journal.append({b"after": b"w"})
        assert sizes(tmp_path)[0] == 2 * RESERVE_BYTES
    finally:
        journal.close()
    assert list(replay(tmp_path)) == [(b"small", b"v"), (b"large", large), (b"after", b"w")]


def test_nothing_to_append_writes_no_frame_that_would_end_the_file(tmp_path: Path) -> None:
    """An empty frame reads as the zeros after the last frame: the frames after it would
    be lost to a replay."""
    journal = Journal(tmp_path)
    try:
        journal.append({b"before": b"1"})
        assert journal.append({}) == 0
        journal.append({b"after": b"2"})
    finally:
        journal.close()
    assert list(replay(tmp_path)) == [(b"before", b"1"), (b"after", b"2")]


def test_an_emptied_file_starts_again_from_nothing(tmp_path: Path) -> None:
    """clear() truncates, as clear_files() does after a replay: no frame of an earlier
    round can follow the zeros of a later one."""
    journal = Journal(tmp_path)
    try:
        journal.append({b"old": b"1" * 1000})
        journal.switch()
        journal.clear(0)
        assert sizes(tmp_path) == [0, 0]
        journal.append({b"other file": b"2"})
        journal.switch()
        journal.append({b"new": b"3"})
        assert sizes(tmp_path) == [RESERVE_BYTES, RESERVE_BYTES]
    finally:
        journal.close()
    assert list(replay(tmp_path)) == [(b"new", b"3"), (b"other file", b"2")]
    clear_files(tmp_path)
    assert sizes(tmp_path) == [0, 0]
