"""The journal files: records appended in frames, each frame made durable by one fdatasync.

Two files in the data directory, ``journal-0.log`` and ``journal-1.log``, take turns: one
receives appends while the records of the other are committed into LMDB, after which it is
emptied (shardkv.shardd.write_ahead). Both exist from the moment the store opens, so an
append never creates a file whose directory entry would still need syncing.

A frame is ``u32 payload length, u32 CRC-32 of the payload`` (little-endian) and the
payload, a run of ``u16 key length, u32 value length, key, value`` (the value as LMDB stores
it, shardkv.shardd.records). A frame is acknowledged only once its fdatasync returned, so
after a crash only the last frame of a file can be torn; replay stops at the first frame
that is short or fails its CRC.

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
_FRAME = struct.Struct("<II")
_ENTRY = struct.Struct("<HI")


class JournalBroken(OSError):
    """An earlier append or sync of the journal failed; no write is taken until a restart."""


class Journal:
    """The two journal files of one store directory, opened for appending."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._paths = [directory / name for name in FILES]
        self._fds = [
            os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
            for path in self._paths
        ]
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
        parts = []
        for key, value in entries.items():
            parts.append(_ENTRY.pack(len(key), len(value)))
            parts.append(key)
            parts.append(value)
        payload = b"".join(parts)
        fd = self._fds[self._current]
        frame = memoryview(_FRAME.pack(len(payload), zlib.crc32(payload)) + payload)
        try:
            while frame:  # a write may take part of the frame (a full disk, a size limit)
                frame = frame[os.write(fd, frame) :]
            os.fdatasync(fd)
        except OSError as exc:
            self._broken = exc
            raise JournalBroken(f"appending to {self._paths[self._current]} failed: {exc}") from exc
        return len(payload)

    def switch(self) -> None:
        """Sends appends to the other file (empty: cleared after its last checkpoint)."""
        self._current = 1 - self._current

    def clear(self, index: int) -> None:
        """Empties file index once LMDB durably holds its records."""
        _empty(self._fds[index])

    def close(self) -> None:
        """Closes both files (idempotent)."""
        fds, self._fds = self._fds, []
        for fd in fds:
            os.close(fd)


def clear_files(directory: Path) -> None:
    """Empties the journal files in directory that hold anything, durably, once LMDB holds
    the replayed records (also for a store opened without sync, which keeps no journal)."""
    for name in FILES:
        path = directory / name
        if path.exists() and path.stat().st_size:
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
            try:
                _empty(fd)
            finally:
                os.close(fd)


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
    if offset != len(data):
        # Only an unacknowledged append (cut short by a crash) can end a file this way.
        tail = len(data) - offset
        log.warning("journal tail ignored path=%s offset=%d bytes=%d", path, offset, tail)
