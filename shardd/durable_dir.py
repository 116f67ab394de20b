"""The data directory's own durability: its entry, and data.mdb's, survive a power loss.

LMDB fsyncs data.mdb at every commit, but a new file or directory lives in its parent
directory's entries, which only an fsync of that parent makes durable. A node started on a
directory that did not exist creates it (and its missing parents) and LMDB creates data.mdb
in it; until those entries are synced, a power loss can take the whole store away with
them: its identity, its fence and every acknowledged write.
"""

from __future__ import annotations

from pathlib import Path

from shardkv.common.clock_state import sync_directory


def make_directories(path: Path) -> list[Path]:
    """Creates path and its missing parents (mkdir -p); returns those it created."""
    missing = []
    current = path
    while not current.exists() and current != current.parent:
        missing.append(current)
        current = current.parent
    path.mkdir(parents=True, exist_ok=True)
    return missing


def sync_entries(path: Path, created: list[Path]) -> None:
    """fsyncs path (the entries of the files created in it) and the parent of each
    directory in created (that directory's own entry)."""
    for directory in dict.fromkeys([path, *(new.parent for new in created)]):
        sync_directory(directory)
