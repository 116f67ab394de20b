"""Anti-entropy and tombstone GC on real processes (3 nodes, N=3, R=W=2, one router).

Replicas are made to diverge on purpose (records written behind the router's back to one
node, and writes and deletes to two of three, so nobody keeps a hint for the third), then
``shardctl repair`` runs a pass: afterwards every node's full digest is equal, and deleted
keys stay deleted after their tombstones are purged. A pass with a node down covers
nothing of it, so no tombstone is purged there. A restore after a purge brings back no
key deleted after the backup, while repair and read repair still copy old live records.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import grpc
import pytest
from harness import (
    BIN,
    Cluster,
    Proc,
    shardd_proc,
    start_cluster,
    stopped_after,
)
from shardkv.client import Client, Consistency
from shardkv.v1 import admin_pb2, admin_pb2_grpc, replica_pb2, replica_pb2_grpc

GRACE_S = 1
EXTRA_TOML = f"""
[repair]
interval_s = 0
tombstone_grace_s = {GRACE_S}
"""


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    running = start_cluster(tmp_path, extra_toml=EXTRA_TOML)
    try:
        yield running
    except BaseException:
        print(running.logs())
        raise
    finally:
        running.stop()


def replica(node: Proc) -> replica_pb2_grpc.ReplicaStub:
    return replica_pb2_grpc.ReplicaStub(grpc.insecure_channel(node.address))


def digests(cluster: Cluster) -> dict[str, tuple[bytes, int]]:
    """Each node's digest of its whole store (with N = number of nodes, all hold all keys)."""
    found = {}
    for node in cluster.nodes:
        reply = replica(node).Digest(replica_pb2.DigestRequest(), timeout=10)
        found[node.name] = (reply.digest, reply.count)
    return found


def records(node: Proc, keys: list[bytes]) -> list[replica_pb2.Record]:
    return list(replica(node).Read(replica_pb2.ReadRequest(keys=keys), timeout=10).records)


def version_now() -> int:
    """A version of the current wall clock (a record a router could have written now)."""
    return (time.time_ns() // 1_000_000) << 16


def repair(cluster: Cluster) -> str:
    return shardctl(cluster, "repair")


def shardctl(cluster: Cluster, *args: str) -> str:
    done = subprocess.run(
        [str(BIN / "shardctl"), "--addr", cluster.router.address, *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def wait_state(cluster: Cluster, node_id: str, state: int) -> None:
    stub = admin_pb2_grpc.AdminStub(grpc.insecure_channel(cluster.router.address))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        nodes = stub.GetHealth(admin_pb2.GetHealthRequest(), timeout=2).nodes
        if next(n.state for n in nodes if n.id == node_id) == state:
            return
        time.sleep(0.05)
    raise TimeoutError(f"{node_id} never reached {admin_pb2.NodeState.Name(state)}")


@pytest.mark.timeout(90)
def test_diverged_replicas_converge_and_deletes_stay_deleted(cluster: Cluster) -> None:
    keys = [b"ae/%04d" % i for i in range(2000)]
    with Client(cluster.router.address) as client:
        client.put_many({k: b"v1" for k in keys})
    # 1. Written to one node only, behind the router's back: new keys and newer versions.
    version = version_now()
    lone = [
        replica_pb2.Record(key=b"lone/%03d" % i, value=b"only-n1", version=version, writer=7)
        for i in range(50)
    ] + [
        replica_pb2.Record(key=keys[i], value=b"newer-on-n1", version=version, writer=7)
        for i in range(50)
    ]
    replica(cluster.node("n1")).Apply(replica_pb2.ApplyRequest(records=lone), timeout=10)
    # 2. Writes and deletes that reached two of three replicas, behind the router's back
    #    (through the router, the two would keep markers for n3 and hand the writes over).
    deleted = keys[300:400]
    version = version_now() + 1
    missed = [
        replica_pb2.Record(key=k, value=b"v2", version=version, writer=7) for k in keys[100:300]
    ] + [replica_pb2.Record(key=k, version=version, writer=7, tombstone=True) for k in deleted]
    for node_id in ("n1", "n2"):
        replica(cluster.node(node_id)).Apply(replica_pb2.ApplyRequest(records=missed), timeout=10)
    before = digests(cluster)
    assert len(set(before.values())) == 3, "the replicas should differ before repair"

    time.sleep(GRACE_S + 0.2)  # the tombstones are now older than the grace period
    summary = repair(cluster)
    assert "records repaired" in summary and "error" not in summary
    after = digests(cluster)
    assert len(set(after.values())) == 1, f"replicas still differ after repair: {after}"

    # The pass covered every segment, so the tombstones are gone everywhere...
    for node in cluster.nodes:
        assert not any(r.version for r in records(node, deleted)), f"{node.name} kept tombstones"
    # ...and nothing brings the deleted keys back: not another pass, not a read.
    repair(cluster)
    assert len(set(digests(cluster).values())) == 1
    with Client(cluster.router.address) as client:
        got = client.get_many(deleted + keys[:1] + keys[150:151] + [b"lone/007"])
    assert got == {keys[0]: b"newer-on-n1", keys[150]: b"v2", b"lone/007": b"only-n1"}


@pytest.mark.timeout(90)
def test_tombstones_survive_a_pass_that_missed_a_replica(cluster: Cluster) -> None:
    keys = [b"gc/%03d" % i for i in range(100)]
    with Client(cluster.router.address) as client:
        client.put_many({k: b"old" for k in keys})
        cluster.node("n3").stop()
        wait_state(cluster, "n3", admin_pb2.DOWN)
        for key in keys:
            client.delete(key)
    time.sleep(GRACE_S + 0.2)
    summary = repair(cluster)  # n3 is down: its segments are skipped, no GC there
    assert "0 tombstones purged" in summary
    for node_id in ("n1", "n2"):
        assert all(r.tombstone for r in records(cluster.node(node_id), keys))

    cluster.node("n3").start()
    wait_state(cluster, "n3", admin_pb2.UP)
    # The deletes reach n3 from the markers n1 and n2 kept for it (hint hand-off): had the
    # tombstones been purged, nothing could tell n3 that its old values were deleted.
    deadline = time.monotonic() + 30
    while not all(r.tombstone for r in records(cluster.node("n3"), keys)):
        assert time.monotonic() < deadline, "the deletes never reached n3"
        time.sleep(0.1)
    repair(cluster)
    for node in cluster.nodes:
        assert not any(r.version for r in records(node, keys)), f"{node.name} kept a record"
    with Client(cluster.router.address) as client:
        assert client.get_many(keys) == {}


def back_up_then_delete(
    cluster: Cluster,
    backup: Path,
    keys: list[bytes],
    deleted: list[bytes],
    rewritten: Sequence[bytes] = (),
) -> None:
    """Writes keys "backed-up", backs them up, deletes some and rewrites others
    "after-backup", then has a repair pass purge the deletes' tombstones."""
    with Client(cluster.router.address) as client:
        client.put_many({k: b"backed-up" for k in keys})
    shardctl(cluster, "backup", str(backup))
    with Client(cluster.router.address) as client:
        for key in deleted:
            client.delete(key)
        if rewritten:
            client.put_many({k: b"after-backup" for k in rewritten})
    time.sleep(GRACE_S + 0.2)
    assert f"{len(deleted) * 3} tombstones purged" in repair(cluster)


@pytest.mark.timeout(120)
def test_restore_after_tombstone_gc_keeps_later_deletes_deleted(
    cluster: Cluster, tmp_path: Path
) -> None:
    keys = [b"rs/%03d" % i for i in range(100)]
    deleted, rewritten = keys[:50], keys[50:60]
    back_up_then_delete(cluster, tmp_path / "backup", keys, deleted, rewritten)
    for node in cluster.nodes:
        assert not any(r.version for r in records(node, deleted)), f"{node.name} kept tombstones"

    summary = json.loads(shardctl(cluster, "--json", "restore", str(tmp_path / "backup")))
    with Client(cluster.router.address) as client:
        # Deleted after the backup, purged since: none comes back; later writes stay.
        assert client.get_many(deleted) == {}
        assert client.get_many(rewritten) == {k: b"after-backup" for k in rewritten}
        assert client.get_many(keys[60:]) == {k: b"backed-up" for k in keys[60:]}
    for node in cluster.nodes:
        assert not any(r.version for r in records(node, deleted)), f"{node.name} restored one"
    # Every copy (3 per key) of a deleted key is skipped, and says so.
    assert summary == {"sent": 300, "restored": 150, "skipped": 150, "failures": []}
    assert len(set(digests(cluster).values())) == 1

    # Repair and read repair still copy a live record older than the purge watermark.
    old = version_now() - (60_000 << 16)
    lone = [
        replica_pb2.Record(key=b"old/" + name, value=name, version=old, writer=7)
        for name in (b"repair", b"read")
    ]
    replica(cluster.node("n1")).Apply(replica_pb2.ApplyRequest(records=lone), timeout=10)
    with Client(cluster.router.address) as client:
        # At ALL: only n1 holds it, and two not-found replies would decide an R=2 read.
        assert client.get(b"old/read", consistency=Consistency.ALL) == b"read"
    deadline = time.monotonic() + 10
    while not all(records(node, [b"old/read"])[0].version for node in cluster.nodes):
        assert time.monotonic() < deadline, "read repair never copied old/read"
        time.sleep(0.05)
    repair(cluster)
    for node in cluster.nodes:
        assert records(node, [b"old/repair"])[0].value == b"repair", node.name


def rebuilt(cluster: Cluster, node: Proc, timeout_s: float = 60.0) -> None:
    """Waits until the router rebuilt node's directory and counts it again."""
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(cluster.router.address) as channel:
        admin = admin_pb2_grpc.AdminStub(channel)
        while True:
            rebuilds = admin.GetRebuilds(admin_pb2.GetRebuildsRequest(), timeout=5).rebuilds
            nodes = admin.GetTopology(admin_pb2.GetTopologyRequest(), timeout=5).nodes
            done = any(
                r.node_id == node.name and r.state == admin_pb2.REBUILD_DONE for r in rebuilds
            )
            if done and all(n.directory == "ok" for n in nodes):
                return
            assert time.monotonic() < deadline, f"{node.name} not rebuilt: {list(rebuilds)}"
            time.sleep(0.05)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("how", ["added", "rebuilt"])
def test_a_node_given_ranges_after_tombstone_gc_restores_no_purged_delete(
    cluster: Cluster, tmp_path: Path, how: str
) -> None:
    keys = [b"ra/%03d" % i for i in range(100)]
    deleted = keys[:50]
    back_up_then_delete(cluster, tmp_path / "backup", keys, deleted)
    # A node receives ranges after the purge, and no tombstone of these keys.
    if how == "added":
        (tmp_path / "n4home").mkdir()
        given = shardd_proc(tmp_path / "n4home", "n4")
        cluster.nodes.append(given)
        given.start()
        shardctl(cluster, "node", "add", "--id", "n4", "--addr", given.address)
    else:
        given = cluster.node("n3")
        given.stop()
        shutil.rmtree(cluster.base / "n3")
        given.start()
        rebuilt(cluster, given)
    summary = json.loads(shardctl(cluster, "--json", "restore", str(tmp_path / "backup")))
    back = [r.key for r in records(given, deleted) if r.version]
    assert not back, f"{given.name} ({how}) stored {len(back)} restored records of purged keys"
    with Client(cluster.router.address) as client:
        assert client.get_many(deleted, consistency=Consistency.ALL) == {}
        assert client.get_many(keys[50:]) == {k: b"backed-up" for k in keys[50:]}
    assert summary["skipped"] == len(deleted) * 3, summary


@pytest.mark.timeout(120)
def test_a_pass_does_not_wait_on_a_node_that_hangs(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    # Four nodes, N=3: every node holds segments it does not replicate, which the pass's
    # sweep asks it to drop, and a store walk gets an hour.
    with stopped_after(start_cluster(tmp_path, nodes=4, extra_toml=EXTRA_TOML), request) as c:
        with Client(c.router.address) as client:
            client.put_many({b"hung/%03d" % i: b"v" for i in range(50)})
        hung = c.node("n3")
        hung.signal(signal.SIGSTOP)
        try:
            wait_state(c, "n3", admin_pb2.DOWN)
            started = time.monotonic()
            summary = repair(c)
            took = time.monotonic() - started
        finally:
            hung.signal(signal.SIGCONT)
        assert took < 15, f"a pass with n3 stopped took {took:.1f} s: {summary}"
        assert "0 tombstones purged" in summary, summary
        print(f"pass with n3 stopped: {took:.1f} s: {summary.strip()}")
