"""CPU time and resident memory of a process, read from /proc (Linux only)."""

from __future__ import annotations

import os
from dataclasses import dataclass

_TICKS_PER_S = os.sysconf("SC_CLK_TCK")
_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class Usage:
    """One reading: CPU seconds used so far (user + system, all threads), RSS now, and the
    part of RSS not backed by files (heap and other anonymous memory: where a leak shows;
    LMDB's mapped data file counts in RSS but not here)."""

    cpu_s: float
    rss_bytes: int
    anon_bytes: int


def usage(pid: int) -> Usage:
    """Reads /proc/<pid>/stat and statm; raises ProcessLookupError when pid is gone. A
    zombie (exited, not yet reaped by its parent, as a server is until the Fleet polls it)
    counts as gone: its /proc entry lingers with an RSS of 0, which would read as a process
    whose memory stayed flat."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat_file:
            stat = stat_file.read()
        with open(f"/proc/{pid}/statm", encoding="ascii") as statm_file:
            statm = statm_file.read()
    except FileNotFoundError:
        raise ProcessLookupError(f"process {pid} is gone") from None
    # The command name (field 2) may hold spaces; the fields after it are fixed: after the
    # closing parenthesis come state (3), ..., utime (14) and stime (15).
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        raise ProcessLookupError(f"process {pid} has exited")
    utime, stime = int(fields[11]), int(fields[12])
    # statm: size resident shared(file-backed) text lib data dt, in pages.
    resident, shared = (int(f) for f in statm.split()[1:3])
    return Usage(
        cpu_s=(utime + stime) / _TICKS_PER_S,
        rss_bytes=resident * _PAGE_BYTES,
        anon_bytes=(resident - shared) * _PAGE_BYTES,
    )


def usages(pids: dict[str, int]) -> dict[str, Usage]:
    """A reading of every named process; a process that is gone is left out."""
    readings: dict[str, Usage] = {}
    for name, pid in pids.items():
        try:
            readings[name] = usage(pid)
        except ProcessLookupError:
            continue
    return readings


def machine_busy_s() -> float:
    """CPU seconds all cores of the machine have spent busy since boot (/proc/stat), to tell
    how much CPU processes other than the measured ones took during a window."""
    with open("/proc/stat", encoding="ascii") as stat_file:
        fields = stat_file.readline().split()
    # cpu user nice system idle iowait irq softirq steal guest guest_nice
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[1:9])
    return (user + nice + system + irq + softirq + steal) / _TICKS_PER_S


def other_cores(
    pids: dict[str, int], busy_before: float, before: dict[str, Usage], seconds: float
) -> float:
    """Cores' worth of CPU used since (busy_before, before) by processes not in pids."""
    ours = sum(u.cpu_s - before[n].cpu_s for n, u in usages(pids).items() if n in before)
    return max(0.0, machine_busy_s() - busy_before - ours) / seconds
