"""A disk that stops taking writes for a while, for chosen processes only.

The processes are put in a blkio cgroup (cgroup v1) whose write limit on the disk is one
byte a second, then the limit is lifted: every write they submit meanwhile waits in the
kernel's block layer, so each fsync stalls, and returns once the limit is gone, while the
processes themselves run on and answer what needs no disk (a health check, a read from
memory). SIGSTOP, which stops the whole process, is no model of a slow or saturated disk.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path

BLKIO = Path("/sys/fs/cgroup/blkio")
LIMIT_FILE = "blkio.throttle.write_bps_device"


def unavailable(path: Path) -> str | None:
    """Why writes to the disk of path cannot be stalled here (None when they can)."""
    if os.geteuid() != 0:
        return "stalling a disk needs root (a blkio cgroup)"
    if not (BLKIO / LIMIT_FILE).exists():
        return f"no cgroup v1 blkio controller with write limits at {BLKIO}"
    if disk_of(path) is None:
        return f"{path} is on no block device (tmpfs?): nothing to stall"
    return None


def disk_of(path: Path) -> str | None:
    """MAJOR:MINOR of the whole disk holding path (limits apply to disks, not partitions);
    None when path is on no block device."""
    dev = os.stat(path).st_dev
    block = Path(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}")
    if not block.exists():
        return None
    if (block / "partition").exists():
        block = block.resolve().parent
    return (block / "dev").read_text().strip()


def _blkio_cgroup(pid: int) -> Path:
    """The blkio cgroup pid is in now (from /proc/PID/cgroup)."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "blkio" in controllers.split(","):
            return BLKIO / path.lstrip("/")
    raise RuntimeError(f"process {pid} is in no blkio cgroup")


@contextmanager
def stalled_writes(pids: Sequence[int], path: Path) -> Iterator[None]:
    """While the block runs, the writes pids submit to the disk of path wait; when it
    ends they go through, and every process is back in the cgroup it came from. Each step
    of the way back is tried whatever the others did: a process left throttled would hang
    on its next fsync."""
    disk = disk_of(path)
    assert disk is not None, f"{path} is on no block device"
    homes = {pid: _blkio_cgroup(pid) for pid in pids}
    group = BLKIO / f"shardkv-stall-{os.getpid()}-{time.monotonic_ns()}"
    group.mkdir()
    try:
        (group / LIMIT_FILE).write_text(f"{disk} 1")
        for pid in pids:
            (group / "cgroup.procs").write_text(str(pid))
        yield
    finally:
        with suppress(OSError):
            (group / LIMIT_FILE).write_text(f"{disk} 0")  # what waits goes through at once
        for pid, home in homes.items():
            with suppress(OSError):  # ProcessLookupError: it exited meanwhile
                (home / "cgroup.procs").write_text(str(pid))
        group.rmdir()
