"""The state file of a clock's reservation (HybridClock's Reservation, shardkv.common.hlc).

One file per writer id in a directory shared by the writers of a host: the bound the
clock may hand out versions up to, fsync'd before any version above the old bound is used,
so a restarted clock starts above every version it gave; and an exclusive lock (flock)
held while the clock runs, so two processes on one host never use the same writer id.
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

from shardkv.common.hlc import ClockStateError, writer_number

# Two slots, written in turn (as LMDB's two meta pages), so a torn write loses at most the
# newer bound: sequence u64, bound u64, CRC-32 of both u32. The holder line follows them.
_SLOT = struct.Struct(">QQI")
_SLOT_SPACE = 32
_HOLDER_AT = 2 * _SLOT_SPACE


class ClockState:
    """The state file of one writer id in a directory shared by the writers of a host,
    held under an exclusive lock from open() to close()."""

    def __init__(self, path: Path, fd: int, reserved: int, sequence: int) -> None:
        self.path = path
        self._fd = fd
        self._reserved = reserved
        self._sequence = sequence

    @classmethod
    def open(cls, directory: Path, writer_id: str, *, role: str = "router") -> ClockState:
        """Locks and reads the state file of writer_id; raises ClockStateError when another
        process holds it, naming that process, or when the file is damaged."""
        import fcntl  # POSIX only; the SDK, which imports this module, never needs it

        path = directory / f"writer-{writer_number(writer_id):08x}.clock"
        try:
            directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise ClockStateError(f"cannot open the clock state file {path}: {err}") from err
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 200, _HOLDER_AT).decode(errors="replace").strip()
                raise ClockStateError(
                    f"writer id {writer_id!r} (writer number {writer_number(writer_id):#010x})"
                    f" is already running on this host: {holder or 'another process'} holds"
                    f" {path}. Two writers with one id would hand out equal versions for"
                    " different values; give this one another --id"
                ) from None
            reserved, sequence = _read_slots(path, os.pread(fd, _HOLDER_AT, 0))
            os.ftruncate(fd, _HOLDER_AT)
            os.pwrite(fd, f"{role} {writer_id!r} pid {os.getpid()}\n".encode(), _HOLDER_AT)
            sync_directory(directory)
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd, reserved, sequence)

    @property
    def reserved(self) -> int:
        return self._reserved

    def save(self, bound: int) -> None:
        """Persists bound (fsync'd) in the older of the two slots."""
        sequence = self._sequence + 1
        crc = zlib.crc32(struct.pack(">QQ", sequence, bound))
        try:
            os.pwrite(self._fd, _SLOT.pack(sequence, bound, crc), (sequence % 2) * _SLOT_SPACE)
            os.fsync(self._fd)
        except OSError as err:
            raise ClockStateError(f"cannot write the clock state file {self.path}: {err}") from err
        self._sequence, self._reserved = sequence, bound

    def close(self) -> None:
        """Releases the lock (closing the file does)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _read_slots(path: Path, data: bytes) -> tuple[int, int]:
    """(bound, sequence) of the newest intact slot; (0, 0) for a new file."""
    if not data.strip(b"\0"):
        return 0, 0
    best: tuple[int, int] | None = None
    for at in (0, _SLOT_SPACE):
        chunk = data[at : at + _SLOT.size]
        if len(chunk) < _SLOT.size:
            continue
        sequence, bound, crc = _SLOT.unpack(chunk)
        if crc == zlib.crc32(chunk[:16]) and (best is None or sequence > best[1]):
            best = (bound, sequence)
    if best is None:
        raise ClockStateError(
            f"the clock state file {path} is damaged: no intact reservation in it, so the"
            " versions handed out before are unknown. Move it away only once the wall clock"
            " is surely past every version this writer handed out"
        )
    return best


def sync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
