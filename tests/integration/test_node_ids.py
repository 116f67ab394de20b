"""Node ids never become paths (issue 14 item 4), against real processes: a router refuses
an id that is not a plain name in AddNode and in cluster.toml, shardd refuses it as --id
and as a hint target, and shardctl backup/restore touch no file outside the backup
directory whatever ids or file names the router or the manifest give them."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from harness import BIN, Cluster, Proc, router_proc, shardd_proc, wait_serving, write_cluster_toml
from shardkv.client import Client
from shardkv.v1 import replica_pb2, replica_pb2_grpc

# Short settle delays keep a move quick (the path id below was accepted and moved before).
EXTRA_TOML = """
[rebalance]
settle_ms = 300

[repair]
interval_s = 0
"""
BAD_IDS = ["../../../escaped", "/tmp/abs", "a/b", "..", "n 1", "-n", "n\x1b[31m", "n" * 65]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """n1..n3 in the ring, n4 running but outside it, one router."""
    base = tmp_path_factory.mktemp("ids")
    nodes = [shardd_proc(base, f"n{i}") for i in range(1, 5)]
    config = write_cluster_toml(base / "cluster.toml", nodes[:3])
    text = config.read_text().replace("[timeouts]\n", "[timeouts]\nwatch_interval_ms = 100\n")
    config.write_text(text + EXTRA_TOML)
    running = Cluster(base, nodes, [router_proc(base, config)], config)
    try:
        for node in nodes:
            node.start(wait=False)
        for node in nodes:
            wait_serving(node.address)
        running.router.start()
        with Client(running.router.address) as client:
            client.put_many({f"k{i:03d}": b"v%d" % i for i in range(100)})
        yield running
    except BaseException:
        print(running.logs())
        raise
    finally:
        running.stop()


def shardctl(router: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "shardctl"), "--addr", router, *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def one_line_error(done: subprocess.CompletedProcess[str], *words: str) -> None:
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert done.stderr.startswith("shardctl: ") and done.stderr.count("\n") == 1, done.stderr
    assert "Traceback" not in done.stderr
    for word in words:
        assert word in done.stderr, done.stderr


def files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file() or p.is_symlink()}


@pytest.mark.timeout(120)
def test_add_node_refuses_an_id_that_is_a_path_and_backup_stays_inside(
    cluster: Cluster, tmp_path: Path
) -> None:
    root = tmp_path / "a"
    backup = root / "b" / "backup"
    backup.parent.mkdir(parents=True)
    n4 = cluster.node("n4").address
    added = shardctl(
        cluster.router.address, "node", "add", "--id", "../../../escaped", "--addr", n4
    )
    backed_up = shardctl(cluster.router.address, "backup", str(backup))
    outside = files_under(root) - files_under(backup)
    # Before the fix: AddNode took the id, the move ran, and backup wrote a/escaped.snapshot.
    assert not outside, f"backup wrote outside {backup}: {sorted(map(str, outside))}"
    one_line_error(added, "INVALID_ARGUMENT", "../../../escaped", "[A-Za-z0-9]")
    assert backed_up.returncode == 0, backed_up.stderr
    with Client(cluster.router.address) as client:
        assert sorted(n.id for n in client.topology().nodes) == ["n1", "n2", "n3"]
    for bad in BAD_IDS[1:]:
        refused = shardctl(cluster.router.address, "node", "add", f"--id={bad}", "--addr", n4)
        assert refused.returncode == 2 and "INVALID_ARGUMENT" in refused.stderr, (bad, refused)


@pytest.fixture(scope="module")
def good_backup(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Path:
    backup = tmp_path_factory.mktemp("good") / "backup"
    done = shardctl(cluster.router.address, "backup", str(backup))
    assert done.returncode == 0, done.stderr
    return backup


def tampered(good: Path, where: Path, **n1: str) -> Path:
    """A copy of the backup whose manifest entry for n1 has the fields given."""
    copy = where / "tampered"
    shutil.copytree(good, copy, symlinks=True)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["nodes"] = [
        {**entry, **n1} if entry["id"] == "n1" else entry for entry in manifest["nodes"]
    ]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


@pytest.mark.timeout(120)
def test_restore_never_opens_a_file_outside_the_backup(
    cluster: Cluster, good_backup: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside.snapshot"  # a valid snapshot, digest and all
    shutil.copyfile(good_backup / "nodes" / "n1.snapshot", outside)
    router = cluster.router.address
    cases = {
        "relative": tampered(good_backup, tmp_path / "rel", file="../../outside.snapshot"),
        "absolute": tampered(good_backup, tmp_path / "abs", file=str(outside)),
        "bad id": tampered(good_backup, tmp_path / "id", id="../x"),
    }
    linked = tmp_path / "link" / "tampered"
    shutil.copytree(good_backup, linked)
    (linked / "nodes" / "n1.snapshot").unlink()
    (linked / "nodes" / "n1.snapshot").symlink_to(outside)
    cases["symlink"] = linked
    results = {name: shardctl(router, "restore", str(path)) for name, path in cases.items()}
    # Before the fix every one of them restored (exit 0), reading the file outside.
    assert {name: done.returncode for name, done in results.items()} == dict.fromkeys(cases, 2)
    for name in ("relative", "absolute", "symlink"):
        one_line_error(results[name], "outside the backup directory")
    one_line_error(results["bad id"], "'../x'")
    assert shardctl(router, "restore", str(good_backup)).returncode == 0


@pytest.mark.timeout(60)
def test_shardd_refuses_an_id_that_is_not_a_plain_name(tmp_path: Path) -> None:
    for bad in ["../x", "n/1", "n" * 65]:
        proc = shardd_proc(tmp_path, "n1")
        proc.argv[proc.argv.index("--id") + 1] = bad
        started = subprocess.Popen(
            proc.argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        try:
            _, err = started.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            started.kill()
            started.wait()
            pytest.fail(f"shardd started with --id {bad!r}")  # before the fix: it did
        assert started.returncode == 2 and "--id" in err and "[A-Za-z0-9]" in err, err


@pytest.mark.timeout(60)
def test_node_refuses_hint_targets_that_are_not_node_ids(node: Proc) -> None:
    record = replica_pb2.Record(key=b"k", value=b"v", version=1, writer=1)
    with grpc.insecure_channel(node.address) as channel:
        replica = replica_pb2_grpc.ReplicaStub(channel)
        codes = {}
        for target in BAD_IDS:
            request = replica_pb2.ApplyRequest(
                hints=[replica_pb2.Hint(target=target, record=record)]
            )
            try:
                replica.Apply(request, timeout=5)
                codes[target] = grpc.StatusCode.OK  # before the fix: parked under that name
            except grpc.RpcError as err:
                codes[target] = err.code()
                assert "[A-Za-z0-9]" in (err.details() or ""), err.details()
        assert codes == dict.fromkeys(BAD_IDS, grpc.StatusCode.INVALID_ARGUMENT)
        for call in (
            lambda: replica.ReadHints(replica_pb2.ReadHintsRequest(target="../x"), timeout=5),
            lambda: replica.DeleteHints(replica_pb2.DeleteHintsRequest(target="a b"), timeout=5),
        ):
            with pytest.raises(grpc.RpcError) as err:
                call()
            assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        summary = replica.HintSummary(replica_pb2.HintSummaryRequest(), timeout=5)
        assert [c.target for c in summary.targets] == []


@pytest.mark.timeout(60)
def test_router_refuses_a_cluster_toml_whose_id_is_not_a_plain_name(tmp_path: Path) -> None:
    nodes = [shardd_proc(tmp_path, f"n{i}") for i in range(1, 4)]
    for bad in ["../x", "n" * 65]:
        config = write_cluster_toml(tmp_path / "cluster.toml", nodes)
        config.write_text(config.read_text().replace('id = "n2"', f"id = {json.dumps(bad)}"))
        router = router_proc(tmp_path, config)
        # Before the fix the router started (and the timeout killed it).
        done = subprocess.run(router.argv, capture_output=True, text=True, timeout=15)
        assert done.returncode == 2, done.stderr
        assert bad[:20] in done.stderr and "[A-Za-z0-9]" in done.stderr, done.stderr
