"""shardctl backup writes only where it means to and only for its user; restore sends the
bytes it verified (security review: links planted in the backup directory were followed,
its files were 0644, and restore opened each file again after checking it)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from faults.strace_log import parse_trace
from harness import BIN, Cluster, start_cluster
from shardkv.client import Client
from shardkv.client.cli import backup
from shardkv.v1 import replica_pb2

SHARDCTL = str(BIN / "shardctl")
VICTIM = b"IMPORTANT VICTIM DATA\n"
# What an attacker plants as soon as nodes/ appears: every name backup writes, or its
# temporary name, as a link to a file of the victim's.
PLANTED = [
    "topology.json",
    "topology.json.partial",
    "cluster.toml",
    "cluster.toml.partial",
    "manifest.json",
    "manifest.json.partial",
    "nodes/n1.snapshot.partial",
    "nodes/n2.snapshot.partial",
]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Two nodes, N=1, so that a backup has two node files; a few keys written."""
    running = start_cluster(
        tmp_path_factory.mktemp("backup-files"),
        nodes=2,
        replication=1,
        read_quorum=1,
        write_quorum=1,
    )
    try:
        with Client(running.router.address) as kv:
            kv.put_many({f"key-{i:03d}": b"value" for i in range(50)})
        yield running
    finally:
        running.stop()


def shardctl(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SHARDCTL, "--addr", cluster.router.address, *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.timeout(90)
def test_links_planted_during_a_backup_are_not_followed(cluster: Cluster, tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_bytes(VICTIM)
    target = tmp_path / "bk"
    planted: list[str] = []

    def attacker() -> None:
        while not (target / "nodes").is_dir():
            pass
        for name in PLANTED:
            try:
                os.symlink(victim, target / name)
                planted.append(name)
            except FileExistsError:
                pass

    thread = threading.Thread(target=attacker, daemon=True)
    thread.start()
    done = shardctl(cluster, "backup", str(target))
    thread.join(10)
    assert planted, "the attacker planted nothing"
    # Before: exit 0, and victim.txt held the manifest (each file was written through its
    # link, manifest.json last); nodes/ held the links renamed into place.
    assert victim.read_bytes() == VICTIM and not victim.is_symlink()
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "exists" in done.stderr and "Traceback" not in done.stderr, done.stderr


@pytest.mark.timeout(90)
def test_the_backup_is_readable_by_its_user_only(cluster: Cluster, tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        done = shardctl(cluster, "backup", str(tmp_path / "new" / "bk"))
    finally:
        os.umask(old)
    assert done.returncode == 0, done.stderr
    made = tmp_path / "new" / "bk"
    modes = {str(p.relative_to(made)): stat.S_IMODE(p.lstat().st_mode) for p in made.rglob("*")}
    # Before: the directories 0755 and every file 0644.
    assert stat.S_IMODE(made.stat().st_mode) == 0o700
    assert modes == {
        "nodes": 0o700,
        "nodes/n1.snapshot": 0o600,
        "nodes/n2.snapshot": 0o600,
        "topology.json": 0o600,
        "cluster.toml": 0o600,
        "manifest.json": 0o600,
    }
    assert done.stdout and json.loads((made / "manifest.json").read_text())["nodes"]


@pytest.mark.timeout(90)
def test_an_existing_directory_others_could_write_is_refused(
    cluster: Cluster, tmp_path: Path
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    foreign = tmp_path / "foreign"
    foreign.mkdir(mode=0o700)
    os.chown(foreign, 12345, 12345)  # the tests run as root
    linked = tmp_path / "linked"
    (tmp_path / "real").mkdir(mode=0o700)
    linked.symlink_to(tmp_path / "real")
    full = tmp_path / "full"
    full.mkdir(mode=0o700)
    (full / "x").write_text("x")
    for directory, reason in [
        (shared, "writable by others"),
        (foreign, "owned by uid 12345"),
        (linked, "symbolic link"),
        (full, "not an empty directory"),
    ]:
        done = shardctl(cluster, "backup", str(directory))
        # Before: the backup was written into shared/, foreign/ and real/ (exit 0).
        assert done.returncode == 2, (directory, done.stderr)
        assert reason in done.stderr and done.stderr.count("\n") == 1, done.stderr
    assert [p.name for p in tmp_path.rglob("*.snapshot")] == []

    mine = tmp_path / "mine"
    mine.mkdir(mode=0o755)  # empty, this user's, writable by it alone: used
    done = shardctl(cluster, "backup", str(mine))
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE((mine / "nodes" / "n1.snapshot").stat().st_mode) == 0o600


@pytest.mark.timeout(90)
def test_restore_sends_the_file_it_verified(cluster: Cluster, tmp_path: Path) -> None:
    made = tmp_path / "bk"
    assert shardctl(cluster, "backup", str(made)).returncode == 0
    with Client(cluster.router.address) as kv:
        version = kv.put("key-000", b"value")
        record = replica_pb2.Record(key=b"planted", value=b"evil", version=version + 1)
        data = replica_pb2.SnapshotBatch(records=[record]).SerializeToString()
        forged = tmp_path / "forged"
        forged.write_bytes(len(data).to_bytes(4, "big") + data)
        swapped: list[str] = []

        def swap_after_the_first_file(line: str) -> None:
            """Once n1 is sent (the manifest's files were all verified), n2's file changes."""
            if line.startswith("n1:"):
                os.replace(forged, made / "nodes" / "n2.snapshot")
                swapped.append(line)

        summary = backup.restore(kv, made, progress=swap_after_the_first_file)
        assert swapped
        assert not summary.failures
        # Before: the forged record was sent and stored (kv.get gave b"evil").
        assert kv.get("planted") is None
        assert summary.sent == 50  # the 50 records backed up, not the forged one


@pytest.mark.timeout(90)
def test_a_backup_reported_done_is_durable(cluster: Cluster, tmp_path: Path) -> None:
    """Every file is fsync'd before it takes its name, and its directory after: before,
    nothing was, and a power loss after "backed up" could leave empty or missing files."""
    log = tmp_path / "strace.log"
    strace = ["strace", "-f", "-tt", "-xx", "-e", "trace=openat,fsync,renameat,renameat2"]
    command = [SHARDCTL, "--addr", cluster.router.address, "backup", str(tmp_path / "bk")]
    done = subprocess.run(
        [*strace, "-o", str(log), *command],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    synced: set[int] = set()
    partial: dict[bytes, int] = {}
    renamed: list[bytes] = []
    for call in sorted(parse_trace(log.read_text()), key=lambda c: c.exit):
        if call.ret is None or call.ret < 0:
            continue
        names = [name for name in call.strings() if name.endswith(b".partial")]
        if call.name == "openat" and names:
            partial[names[0]] = call.ret
            synced.discard(call.ret)
        elif call.name == "fsync":
            synced.add(call.fd())
            renamed.clear()  # a directory's fsync makes the renames before it durable
        elif call.name.startswith("renameat") and names:
            assert partial.get(names[0]) in synced, f"{names[0]!r} renamed before its fsync"
            renamed.append(names[0])
    assert len(partial) == 5, sorted(partial)  # two node files, topology, toml, manifest
    assert not renamed, f"no directory fsync after the rename of {renamed}"
