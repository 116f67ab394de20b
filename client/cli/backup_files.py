"""The files of a backup directory: written only inside it and for its user, read as verified.

A backup holds the whole database, and its directory may be under a path others can write
(``/tmp``). So ``PrivateDir``:

- creates the directory with mode 0700, or takes an existing one only when it is empty,
  not a symbolic link, owned by this user and writable by no one else (else another user
  could plant links in it, or swap its files);
- opens it once and works relative to that descriptor, so a directory renamed or replaced
  under its path afterwards is not followed;
- creates every file as ``NAME.partial`` with ``O_CREAT | O_EXCL | O_NOFOLLOW`` and mode
  0600: a name that already exists, a link above all, is refused rather than written
  through; then checks that ``NAME.partial`` is still the file it wrote before renaming it
  to ``NAME``.

``open_verified`` opens a file once (no link followed), checks its SHA-256 and hands back
that same open file, so restore reads exactly the bytes it verified.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from . import CommandError

DIR_MODE = 0o700
FILE_MODE = 0o600
_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class BackupError(CommandError):
    """The backup directory cannot be written or read; the message names the file."""


class PrivateDir:
    """An open directory of this user's that no one else may write; close() when done."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd = fd

    @classmethod
    def create(cls, path: Path) -> PrivateDir:
        """path as a new directory (mode 0700, missing parents made as mkdir -p does), or
        an existing empty one this user owns and only it may write."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            os.mkdir(path, DIR_MODE)
        except FileExistsError:
            pass  # checked below, as found
        except OSError as err:
            raise BackupError(f"cannot create {path}: {err.strerror or err}") from err
        try:
            fd = os.open(path, _DIR)
        except OSError as err:
            if err.errno == errno.ELOOP or os.path.islink(path):  # ENOTDIR, with O_DIRECTORY
                raise BackupError(f"{path} is a symbolic link: give the directory itself") from err
            if err.errno == errno.ENOTDIR:
                raise BackupError(f"{path} exists and is not an empty directory") from err
            raise BackupError(f"cannot open {path}: {err.strerror or err}") from err
        try:
            _check_private(path, os.fstat(fd))
            if os.listdir(fd):
                raise BackupError(f"{path} exists and is not an empty directory")
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd)

    def subdir(self, name: str) -> PrivateDir:
        """A new directory name inside this one (mode 0700)."""
        try:
            os.mkdir(name, DIR_MODE, dir_fd=self._fd)
            fd = os.open(name, _DIR, dir_fd=self._fd)
            os.fsync(self._fd)
        except OSError as err:
            raise BackupError(f"cannot create {self.path / name}: {err.strerror or err}") from err
        return PrivateDir(self.path / name, fd)

    @contextmanager
    def new_file(self, name: str) -> Iterator[BinaryIO]:
        """A new file to write, name.partial (mode 0600) until the block ends without an
        error, then renamed to name. Any file or link already at name.partial is refused."""
        partial = f"{name}.partial"
        try:
            fd = os.open(partial, _NEW, FILE_MODE, dir_fd=self._fd)
        except OSError as err:
            raise BackupError(
                f"cannot create {self.path / partial}: {err.strerror or err}"
            ) from err
        with os.fdopen(fd, "wb") as out:
            yield out
            try:
                out.flush()
                os.fsync(out.fileno())  # a backup reported done survives a power loss
                written = os.fstat(out.fileno())
                found = os.stat(partial, dir_fd=self._fd, follow_symlinks=False)
            except OSError as err:
                raise BackupError(
                    f"cannot write {self.path / partial}: {err.strerror or err}"
                ) from err
            if (found.st_dev, found.st_ino) != (written.st_dev, written.st_ino):
                raise BackupError(f"{self.path / partial} was replaced while it was written")
            try:
                os.replace(partial, name, src_dir_fd=self._fd, dst_dir_fd=self._fd)
                os.fsync(self._fd)  # the new name, durable
            except OSError as err:
                raise BackupError(f"cannot rename {self.path / partial}: {err}") from err

    def write_text(self, name: str, text: str) -> None:
        """name holding text (a newline added if it has none)."""
        with self.new_file(name) as out:
            try:
                out.write((text + ("" if text.endswith("\n") else "\n")).encode())
            except OSError as err:
                raise BackupError(
                    f"cannot write {self.path / name}: {err.strerror or err}"
                ) from err

    def close(self) -> None:
        os.close(self._fd)


def _check_private(path: Path, found: os.stat_result) -> None:
    if found.st_uid != os.getuid():
        raise BackupError(
            f"{path} is owned by uid {found.st_uid}, not by this user ({os.getuid()})"
        )
    if found.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise BackupError(
            f"{path} is writable by others (mode {stat.S_IMODE(found.st_mode):o}): use a new"
            " directory, or one only its owner may write (chmod go-w)"
        )


def open_verified(path: Path, shown: Path, sha256: str) -> BinaryIO:
    """path opened once (a link is refused), its SHA-256 checked, rewound: the caller reads
    the bytes that were verified. shown: the name used in messages."""
    try:  # O_NONBLOCK: a FIFO planted there is refused below instead of blocking the open
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as err:
        raise BackupError(f"cannot read {shown}: {err.strerror or err}") from err
    stream = os.fdopen(fd, "rb")
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise BackupError(f"{shown} is not a regular file")
        digest = hashlib.sha256()
        while block := stream.read(1 << 20):
            digest.update(block)
        if digest.hexdigest() != sha256:
            raise BackupError(f"{shown} is damaged: SHA-256 differs")
        stream.seek(0)
    except OSError as err:
        stream.close()
        raise BackupError(f"cannot read {shown}: {err.strerror or err}") from err
    except BaseException:
        stream.close()
        raise
    return stream
