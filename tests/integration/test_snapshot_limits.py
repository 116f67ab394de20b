"""Snapshots cannot fill a node's disk (security issue 14, item 6).

Every Replica.Snapshot writes a compacted copy of the store beside it. Ten stalled or
cancelled streams left ten copies (a 50 MB store grew to 542 MB). Now at most MAX_COPIES
exist at once (one more waits a few seconds for a place, then is refused with
RESOURCE_EXHAUSTED naming the bound); a copy is removed when its stream ends however it
ends (completion, cancel, deadline, cancel while LMDB is still writing the copy, a Backup
cancelled at the router); copies a crash left are removed at start. Nodes and router run
for real.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from harness import Cluster, Proc, shardd_proc
from shardkv.shardd.snapshot import MAX_COPIES
from shardkv.v1 import admin_pb2, admin_pb2_grpc, kv_pb2, kv_pb2_grpc, replica_pb2, replica_pb2_grpc

VALUES = 50  # 1 MiB each: a 50 MB store, as in the report


def _du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _copies(node: Proc, base: Path) -> list[Path]:
    return sorted((base / node.name).glob(".snapshot-*"))


def _wait_for(what: str, check: Callable[[], bool], timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s} s: {what}")
        time.sleep(0.1)


@pytest.fixture
def filled_node(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Proc]:
    """One shardd holding VALUES values of 1 MiB (random, so compaction cannot shrink them)."""
    proc = shardd_proc(tmp_path, "n1").start()
    try:
        with grpc.insecure_channel(proc.address) as channel:
            kv = kv_pb2_grpc.KVStub(channel)
            for index in range(VALUES):
                key = f"big-{index:03d}".encode()
                kv.Put(kv_pb2.PutRequest(key=key, value=os.urandom(1 << 20)), timeout=10)
        yield proc
    finally:
        proc.stop()
        report = getattr(request.node, "rep_call", None)
        if report is None or report.failed:
            print(f"===== {proc.name} log =====\n{proc.log()[-8000:]}")


def _snapshot(replica: replica_pb2_grpc.ReplicaStub, timeout_s: float = 60) -> Iterator[object]:
    return replica.Snapshot(replica_pb2.SnapshotRequest(batch_size=1), timeout=timeout_s)  # type: ignore[no-any-return]


@pytest.mark.timeout(120)
def test_snapshots_are_bounded_and_removed_however_they_end(
    filled_node: Proc, tmp_path: Path
) -> None:
    node, data = filled_node, tmp_path / filled_node.name
    store_bytes = _du(data)
    with grpc.insecure_channel(node.address) as channel:
        replica = replica_pb2_grpc.ReplicaStub(channel)

        # Stalled readers: each holds a copy; one more than the bound is refused.
        held = []
        for _ in range(MAX_COPIES):
            stream = _snapshot(replica)
            next(stream)
            held.append(stream)
        refused = _snapshot(replica)
        with pytest.raises(grpc.RpcError) as err:
            next(refused)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.value
        assert f"at most {MAX_COPIES}" in (err.value.details() or "")
        assert len(_copies(node, tmp_path)) == MAX_COPIES
        print(
            f"store {store_bytes / 1e6:.0f} MB; {MAX_COPIES} stalled snapshots hold "
            f"{_du(data) / 1e6:.0f} MB; the next is refused: {err.value.details()}"
        )

        # Cancelled mid-stream: the copies go.
        for stream in held:
            stream.cancel()  # type: ignore[attr-defined]
        _wait_for("copies of cancelled streams removed", lambda: not _copies(node, tmp_path))

        # Deadline passed while the reader stalls: the copy goes.
        stalled = _snapshot(replica, timeout_s=1.5)
        next(stalled)
        _wait_for("copy of a stream past its deadline removed", lambda: not _copies(node, tmp_path))

        # Read to the end: the copy goes, and every record came through.
        records = sum(len(batch.records) for batch in _snapshot(replica))  # type: ignore[attr-defined]
        assert records == VALUES
        _wait_for("copy of a finished stream removed", lambda: not _copies(node, tmp_path))

        # Cancelled while LMDB is still writing the copy, ten times over: refused or
        # cancelled, no copy outlives its stream.
        for _ in range(10):
            stream = _snapshot(replica)
            time.sleep(0.02)
            stream.cancel()  # type: ignore[attr-defined]
            time.sleep(0.05)
        _wait_for(
            "copies of streams cancelled during the copy removed",
            lambda: not _copies(node, tmp_path),
        )
    assert _du(data) <= store_bytes * 1.1, f"{_du(data)} bytes left of {store_bytes}"
    assert node.alive()


@pytest.mark.timeout(120)
def test_copies_left_by_a_crash_are_removed_at_start(filled_node: Proc, tmp_path: Path) -> None:
    node = filled_node
    with grpc.insecure_channel(node.address) as channel:
        stream = _snapshot(replica_pb2_grpc.ReplicaStub(channel))
        next(stream)
        left = _copies(node, tmp_path)
        assert len(left) == 1
        node.kill()  # SIGKILL: nothing runs on the way out
        stream.cancel()  # type: ignore[attr-defined]
    assert _copies(node, tmp_path) == left
    node.start()
    assert not _copies(node, tmp_path), "a leftover copy survived the restart"
    assert re.search(rf"snapshot_leftover_removed path=\S*{left[0].name} bytes=\d+", node.log())


@pytest.mark.timeout(120)
def test_a_cancelled_backup_through_the_router_removes_the_copy(cluster: Cluster) -> None:
    """Ctrl-C in `shardctl backup`: the router's relayed Snapshot ends at once, and so does
    the node's copy (before, the node's stream stayed open until the router's deadline, or
    for good without one)."""
    node = cluster.node("n1")
    with grpc.insecure_channel(cluster.router.address) as channel:
        kv = kv_pb2_grpc.KVStub(channel)
        for index in range(20):
            kv.Put(kv_pb2.PutRequest(key=b"k%02d" % index, value=os.urandom(1 << 20)), timeout=10)
        admin = admin_pb2_grpc.AdminStub(channel)
        request = admin_pb2.BackupRequest(node_id=node.name, batch_size=1)
        for _ in range(3 * MAX_COPIES):
            stream = admin.Backup(request, timeout=60)
            next(stream)
            stream.cancel()  # type: ignore[attr-defined]
            _wait_for(
                "the copy of a cancelled backup removed",
                lambda: not _copies(node, cluster.base),
                timeout_s=5,
            )
        records = sum(len(batch.records) for batch in admin.Backup(request, timeout=60))
        assert records == 20
