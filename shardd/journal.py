"""The journal files: records appended in frames, each frame made durable by one fdatasync.

Two files in the data directory, ``journal-0.log`` and ``journal-1.log``, take turns: one
receives appends while the records of the other are committed into LMDB, after which it is
emptied (shardkv.shardd.write_ahead). Both exist from the moment the store opens, so an
append never creates a file whose directory entry would still need syncing.

A frame is ``u32 payload length, u32 CRC-32 of the payload`` (little-endian) and the
payload, a run of ``u16 key length, u32 value length, key, value`` (the value as LMDB stores
it, shardkv.shardd.records); no frame is empty. A frame is acknowledged only once its
fdatasync returned, so after a crash only the last frame of a file can be torn; replay
stops at the first frame that is short or fails its CRC, or at a zero length: the end.

Frames are written into space already zeroed rather than appended. An fdatasync after a
write that grew the file must also commit the file's new size through the filesystem's
own journal; one after a write inside the file's size flushes the data blocks alone (on
this project's VM, ext4: 133 against 195 µs a sync for one process, 212 against 261 with
three syncing at once, and ~29 µs less CPU a write). So a file grows by RESERVE_BYTES of
zeros at a time, each step written and synced once, and frames overwrite the zeros from
the start. Emptied, a file is truncated and its first step zeroed again (by the thread
that empties it, not the one appending), so no frame of an earlier round can follow the
zeros: what a replay reads after the last frame is zeros, or nothing. That holds only for
a file emptied by the journal itself, so a file takes appends only once clear() emptied
it since it was opened (the store replays it first).

After an append or sync fails, the journal is broken for good: what reached the file is
unknown (a failed fsync may have dropped pages the kernel no longer reports), so every
later append raises too, and the node writes again only after a restart replays the files.
"""

from __future__ import annotations

import logging
import os
import struct
import zlib
from collections.abc import Iterator, Mapping
from pathlib import Path

log = logging.getLogger(__name__)

FILES = ("journal-0.log", "journal-1.log")
# Zeros a file grows by when a frame would not fit in its size (module docstring): one
# step holds ~7,000 frames of a single 100-byte put.
RESERVE_BYTES = 1 << 20
_ZEROS = bytes(RESERVE_BYTES)
_FRAME = struct.Struct("<II")
_ENTRY = struct.Struct("<HI")


class JournalBroken(OSError):
    """An earlier append or sync of the journal failed; no write is taken until a restart."""


class Journal:
    """The two journal files of one store directory, taking frames once emptied."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._paths = [directory / name for name in FILES]
        self._fds = [
            os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600) for path in self._paths
        ]
        # Where each file's next frame goes, its size (zeros from the end on), and whether
        # clear() emptied it since it was opened (its frames replayed: Store._replay).
        self._ends = [0, 0]
        self._sizes = [0, 0]
        self._emptied = [False, False]
        self._current = 0
        self._broken: OSError | None = None

    @property
    def current(self) -> int:
        """Which file appends go to."""
        return self._current

    def append(self, entries: Mapping[bytes, bytes]) -> int:
        """Appends entries (key -> LMDB value) as one frame and fdatasyncs the file; returns
        once the frame is durable, with the bytes of its entries."""
        if self._broken is not None:
            raise JournalBroken(f"the journal failed earlier ({self._broken}); restart the node")
        if not entries:
            return 0  # an empty frame would read as the file's end
        current = self._current
        if not self._emptied[current]:
            raise JournalBroken(
                f"{self._paths[current]} takes no frame before it was emptied: its frames"
                " must be replayed first, and new ones written from its start could be"
                " followed by older ones in a replay"
            )
        parts = []
        for key, value in entries.items():
            parts.append(_ENTRY.pack(len(key), len(value)))
            parts.append(key)
            parts.append(value)
        payload = b"".join(parts)
        frame = _FRAME.pack(len(payload), zlib.crc32(payload)) + payload
        fd, end = self._fds[current], self._ends[current]
        try:
            if end + len(frame) > self._sizes[current]:
                self._grow(current, end + len(frame))
            _write_at(fd, frame, end)
            os.fdatasync(fd)
        except OSError as exc:
            self._broken = exc
            raise JournalBroken(f"appending to {self._paths[current]} failed: {exc}") from exc
        self._ends[current] = end + len(frame)
        return len(payload)

    def _grow(self, index: int, needed: int) -> None:
        """Zeroes file index from its size on, in RESERVE_BYTES steps, to hold needed bytes;
        synced at once, so the frame's own fdatasync finds the size committed. (A step
        that failed part way leaves zeros beyond the size, which the next one rewrites.)"""
        size, fd = self._sizes[index], self._fds[index]
        grown = size
        while grown < needed:
            _write_at(fd, _ZEROS, grown)
            grown += RESERVE_BYTES
        os.fdatasync(fd)
        self._sizes[index] = grown

    def switch(self) -> None:
        """Sends appends to the other file (empty: cleared after its last checkpoint)."""
        self._current = 1 - self._current

    def clear(self, index: int) -> None:
        """Empties file index once LMDB durably holds its records (or its frames were
        replayed), then zeroes its first step for the appends to come."""
        self._emptied[index] = False  # until the truncation is durable
        _empty(self._fds[index])
        self._ends[index] = self._sizes[index] = 0
        self._emptied[index] = True
        try:
            self._grow(index, 1)
        except OSError as exc:  # the first append grows it, or fails if the disk is full
            log.warning("journal step not zeroed path=%s error=%r", self._paths[index], exc)

    def clear_all(self) -> None:
        """Empties both files, once their frames were replayed (Store._replay)."""
        for index in range(len(self._fds)):
            self.clear(index)

    def close(self) -> None:
        """Closes both files (idempotent)."""
        fds, self._fds = self._fds, []
        for fd in fds:
            os.close(fd)


def clear_files(directory: Path) -> None:
    """Empties the journal files in directory that hold anything, durably, once LMDB holds
    the replayed records, for a store opened without sync (which keeps no journal)."""
    for name in FILES:
        path = directory / name
        if path.exists() and path.stat().st_size:
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
            try:
                _empty(fd)
            finally:
                os.close(fd)


def _write_at(fd: int, data: bytes, offset: int) -> None:
    """Writes all of data at offset (a write may take part of it: a full disk, a limit)."""
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def _empty(fd: int) -> None:
    """Truncates the file to nothing, durably (the size is metadata fdatasync writes)."""
    os.ftruncate(fd, 0)
    os.fdatasync(fd)


def replay(directory: Path) -> Iterator[tuple[bytes, bytes]]:
    """(key, LMDB value) of every intact frame of both journal files in directory, in file
    order; a file that does not exist holds nothing."""
    for name in FILES:
        path = directory / name
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            continue
        yield from _entries(path, data)


def _entries(path: Path, data: bytes) -> Iterator[tuple[bytes, bytes]]:
    """The entries of the intact frames of one file's data, in order."""
    offset = 0
    while offset + _FRAME.size <= len(data):
        length, crc = _FRAME.unpack_from(data, offset)
        if not length:
            break  # the zeros after the last frame
        start = offset + _FRAME.size
        payload = data[start : start + length]
        if len(payload) < length or zlib.crc32(payload) != crc:
            break
        at = 0
        while at < length:
            key_len, value_len = _ENTRY.unpack_from(payload, at)
            at += _ENTRY.size
            key = payload[at : at + key_len]
            at += key_len
            yield key, payload[at : at + value_len]
            at += value_len
        offset = start + length
    tail = data[offset:].rstrip(b"\0")
    if tail:
        # Only an unacknowledged append (cut short by a crash) can end a file this way.
        log.warning("journal tail ignored path=%s offset=%d bytes=%d", path, offset, len(tail))
