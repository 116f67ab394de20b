"""What a result was measured on: machine, kernel, filesystem, versions, commit."""

from __future__ import annotations

import os
import platform
import subprocess
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

from shardkv.common import native

from benchmarks.procs import etcd_version

REPO = Path(__file__).resolve().parent.parent


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _memory_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return 0.0


def _filesystem(path: Path) -> str:
    """The filesystem type and device that holds path (longest matching mount point)."""
    best = ("", "unknown", "unknown")
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            device, mount, fstype, *_ = line.split()
            if str(path.resolve()).startswith(mount) and len(mount) > len(best[0]):
                best = (mount, fstype, device)
    except OSError:
        pass
    return f"{best[1]} ({best[2]})"


def _commit() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown commit"
    return f"commit {head}{' + local changes' if dirty.strip() else ''}" if head else "unknown"


def describe_machine(*, etcd: str | None, data_root: Path | None) -> dict[str, Any]:
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": _memory_gib(),
        "kernel": platform.release(),
        "data_fs": _filesystem(data_root or Path(tempfile.gettempdir())),
        "python": platform.python_version(),
        "grpcio": metadata.version("grpcio"),
        "etcd": etcd_version(etcd) if etcd else None,
        "commit": _commit(),
        # The hot loops the bench's processes load: in C (the ring hash, the batch read's
        # answer), or in Python under SHARDKV_NO_EXTENSIONS (common/native.py; they share
        # this process's install and environment).
        "extensions": "C" if all(map(native.extension, native.BUILT)) else "Python",
    }
