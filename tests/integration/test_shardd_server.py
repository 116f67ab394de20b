"""shardd as a real process: every RPC, health, reflection, shutdown, crash recovery, bad starts."""

from __future__ import annotations

import asyncio
import hashlib
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from harness import BIN, Proc, free_port, shardd_proc
from shardkv.common.hlc import LOGICAL_BITS
from shardkv.v1 import kv_pb2, kv_pb2_grpc, replica_pb2, replica_pb2_grpc

FUTURE = (int(time.time() * 1000) + 3_600_000) << LOGICAL_BITS  # an hour ahead
# A node that takes versions up to two hours ahead of its wall clock (default: 500 ms).
LENIENT = ["--max-clock-offset-ms", "7200000"]


@pytest.fixture
def channel(node: Proc) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(node.address) as chan:
        yield chan


def test_every_kv_rpc(channel: grpc.Channel) -> None:
    kv = kv_pb2_grpc.KVStub(channel)
    put = kv.Put(kv_pb2.PutRequest(key=b"a", value=b"1"))
    assert put.version > 0
    assert kv.Get(kv_pb2.GetRequest(key=b"a")) == kv_pb2.GetResponse(
        found=True, value=b"1", version=put.version
    )
    assert kv.Get(kv_pb2.GetRequest(key=b"never")) == kv_pb2.GetResponse(found=False)
    deleted = kv.Delete(kv_pb2.DeleteRequest(key=b"a"))
    assert deleted.version > put.version
    assert not kv.Get(kv_pb2.GetRequest(key=b"a")).found
    assert kv.Delete(kv_pb2.DeleteRequest(key=b"missing")).version > 0

    written = kv.BatchWrite(
        kv_pb2.BatchWriteRequest(
            mutations=[kv_pb2.Mutation(key=b"p/%d" % i, value=b"v%d" % i) for i in range(5)]
            + [kv_pb2.Mutation(key=b"p/1", delete=True), kv_pb2.Mutation(key=b"", value=b"bad")]
        )
    )
    assert [r.status.code for r in written.results] == [0] * 6 + [3]
    assert "empty" in written.results[-1].status.message
    got = kv.BatchGet(kv_pb2.BatchGetRequest(keys=[b"p/0", b"p/1", b"zz", b"x" * 512]))
    assert [(r.key, r.found, r.value) for r in got.results[:3]] == [
        (b"p/0", True, b"v0"),
        (b"p/1", False, b""),
        (b"zz", False, b""),
    ]
    assert [r.status.code for r in got.results] == [0, 0, 0, 3]

    pages, token = [], b""
    while True:
        page = kv.Scan(kv_pb2.ScanRequest(prefix=b"p/", limit=2, page_token=token))
        pages.append([r.key for r in page.records])
        token = page.next_page_token
        if not token:
            break
    # p/1 is a tombstone: it takes a slot of its page and is dropped from the answer.
    assert pages == [[b"p/0"], [b"p/2", b"p/3"], [b"p/4"]]
    assert [r.key for r in kv.Scan(kv_pb2.ScanRequest(start=b"p/2", end=b"p/4")).records] == [
        b"p/2",
        b"p/3",
    ]


def test_every_replica_rpc(channel: grpc.Channel) -> None:
    replica = replica_pb2_grpc.ReplicaStub(channel)
    records = [
        replica_pb2.Record(key=b"r%02d" % i, value=b"v", version=100 + i, writer=1)
        for i in range(30)
    ]
    tomb = replica_pb2.Record(key=b"r05", version=500, writer=1, tombstone=True)
    older = replica_pb2.Record(key=b"r06", value=b"old", version=1, writer=9)
    hint = replica_pb2.Hint(
        target="n2", record=replica_pb2.Record(key=b"h", value=b"x", version=7, writer=1)
    )
    applied = replica.Apply(replica_pb2.ApplyRequest(records=[*records, tomb, older], hints=[hint]))
    assert list(applied.applied) == [True] * 31 + [False]

    read = replica.Read(replica_pb2.ReadRequest(keys=[b"r05", b"r06", b"none"])).records
    assert read[0].tombstone and read[0].version == 500
    assert read[1] == records[6]
    assert read[2] == replica_pb2.Record(key=b"none")

    page = replica.ScanRecords(replica_pb2.ScanRecordsRequest(start=b"r03", end=b"r08", limit=3))
    assert [r.key for r in page.records] == [b"r03", b"r04", b"r05"]
    assert page.next_start == b"r05\x00"
    batches = list(replica.StreamRange(replica_pb2.StreamRangeRequest(batch_size=8)))
    assert [len(b.records) for b in batches] == [8, 8, 8, 6]
    streamed = [r for b in batches for r in b.records]
    assert [r.key for r in streamed] == [r.key for r in records]

    digest = replica.Digest(replica_pb2.DigestRequest(start=b"r10", end=b"r20"))
    assert digest.count == 10 and len(digest.digest) == hashlib.sha256().digest_size
    assert digest != replica.Digest(replica_pb2.DigestRequest(start=b"r10", end=b"r21"))

    summary = replica.HintSummary(replica_pb2.HintSummaryRequest())
    assert [(t.target, t.count) for t in summary.targets] == [("n2", 1)]
    parked = replica.ReadHints(replica_pb2.ReadHintsRequest(target="n2")).records
    assert list(parked) == [hint.record]
    stale = replica_pb2.Record(key=b"h", version=6, writer=1)
    assert (
        replica.DeleteHints(replica_pb2.DeleteHintsRequest(target="n2", records=[stale])).deleted
        == 0
    )
    assert (
        replica.DeleteHints(replica_pb2.DeleteHintsRequest(target="n2", records=parked)).deleted
        == 1
    )
    assert not replica.HintSummary(replica_pb2.HintSummaryRequest()).targets


def test_replica_versions_move_the_node_clock(channel: grpc.Channel) -> None:
    replica = replica_pb2_grpc.ReplicaStub(channel)
    kv = kv_pb2_grpc.KVStub(channel)
    ahead = (int(time.time() * 1000) + 400) << LOGICAL_BITS  # within the max clock offset
    replica.Apply(
        replica_pb2.ApplyRequest(
            records=[replica_pb2.Record(key=b"k", value=b"from-router", version=ahead, writer=1)]
        )
    )
    put = kv.Put(kv_pb2.PutRequest(key=b"other", value=b"local"))
    assert put.version > ahead
    put = kv.Put(kv_pb2.PutRequest(key=b"k", value=b"local"))
    assert kv.Get(kv_pb2.GetRequest(key=b"k")).value == b"local"


def test_health_and_reflection(channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "shardkv.v1.KV", "shardkv.v1.Replica"):
        status = health.Check(health_pb2.HealthCheckRequest(service=service)).status
        assert status == health_pb2.HealthCheckResponse.SERVING, service
    with pytest.raises(grpc.RpcError) as err:
        health.Check(health_pb2.HealthCheckRequest(service="nope"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND

    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    [answer] = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    )
    names = {s.name for s in answer.list_services_response.service}
    assert {"shardkv.v1.KV", "shardkv.v1.Replica", "grpc.health.v1.Health"} <= names


@pytest.mark.timeout(60)
def test_sigterm_exits_zero_and_data_reopens(tmp_path: Path) -> None:
    proc = shardd_proc(tmp_path, "n1", extra=LENIENT).start()
    try:
        with grpc.insecure_channel(proc.address) as chan:
            kv_pb2_grpc.KVStub(chan).Put(kv_pb2.PutRequest(key=b"k", value=b"kept"))
            replica_pb2_grpc.ReplicaStub(chan).Apply(
                replica_pb2.ApplyRequest(
                    records=[
                        replica_pb2.Record(key=b"ahead", value=b"router", version=FUTURE, writer=1)
                    ]
                )
            )
        started = time.monotonic()
        proc.signal(signal.SIGTERM)
        assert proc.popen is not None and proc.popen.wait(10) == 0
        assert time.monotonic() - started < 5
        assert "event=stopped node_id=n1" in proc.log()
        proc.start()
        with grpc.insecure_channel(proc.address) as chan:
            kv = kv_pb2_grpc.KVStub(chan)
            assert kv.Get(kv_pb2.GetRequest(key=b"k")).value == b"kept"
            # The restarted clock never saw FUTURE: the write must still win over it.
            put = kv.Put(kv_pb2.PutRequest(key=b"ahead", value=b"local"))
            assert put.version > FUTURE
            assert kv.Get(kv_pb2.GetRequest(key=b"ahead")).value == b"local"
    finally:
        proc.stop()


@pytest.mark.timeout(90)
def test_kill_9_during_writes_loses_no_acknowledged_write(tmp_path: Path) -> None:
    proc = shardd_proc(tmp_path, "n1").start()
    try:
        acknowledged = asyncio.run(_write_until_killed(proc))
        assert len(acknowledged) >= 200
        proc.start()  # same argv: same port and data dir
        with grpc.insecure_channel(proc.address) as chan:
            kv = kv_pb2_grpc.KVStub(chan)
            keys = sorted(acknowledged)
            missing = []
            for chunk in range(0, len(keys), 500):
                reply = kv.BatchGet(kv_pb2.BatchGetRequest(keys=keys[chunk : chunk + 500]))
                missing += [
                    r.key for r in reply.results if not r.found or r.value != acknowledged[r.key]
                ]
        assert not missing, f"{len(missing)} acknowledged writes lost, e.g. {missing[:5]}"
    finally:
        proc.stop()


async def _write_until_killed(proc: Proc) -> dict[bytes, bytes]:
    """32 concurrent writers Put until the node is SIGKILLed under them; returns what was
    acknowledged before the kill."""
    acknowledged: dict[bytes, bytes] = {}
    killed = asyncio.Event()
    async with grpc.aio.insecure_channel(proc.address) as chan:
        kv = kv_pb2_grpc.KVStub(chan)

        async def writer(w: int) -> None:
            for i in range(100_000):
                key, value = b"w%02d-%05d" % (w, i), b"value-%d-%d" % (w, i)
                try:
                    await kv.Put(kv_pb2.PutRequest(key=key, value=value), timeout=5)
                except grpc.aio.AioRpcError:
                    assert killed.is_set(), "a write failed before the kill"
                    return
                acknowledged[key] = value

        async def killer() -> None:
            while len(acknowledged) < 400:
                await asyncio.sleep(0.01)
            proc.kill()
            killed.set()

        await asyncio.gather(killer(), *(writer(w) for w in range(32)))
    return acknowledged


def _run_shardd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "shardd"), *args], capture_output=True, text=True, timeout=30)


def test_bad_flag_exits_2_naming_the_flag(tmp_path: Path) -> None:
    result = _run_shardd("--id", "n1", "--data", str(tmp_path), "--listen", "no-port")
    assert result.returncode == 2 and "--listen" in result.stderr
    result = _run_shardd("--id", "n1", "--data", str(tmp_path), "--max-value-bytes", "-5")
    assert result.returncode == 2 and "--max-value-bytes" in result.stderr
    assert _run_shardd("--data", str(tmp_path)).returncode == 2  # --id is required


def test_unusable_data_dir_exits_1_with_one_clear_line(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    address = f"127.0.0.1:{free_port()}"
    result = _run_shardd("--id", "n1", "--listen", address, "--data", str(tmp_path / "file"))
    assert result.returncode == 1
    [line] = [ln for ln in result.stderr.splitlines() if "level=ERROR" in ln]
    assert "cannot start node_id=n1" in line and "not a directory" in line


def test_port_in_use_exits_1_naming_the_address(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        result = _run_shardd("--id", "n1", "--listen", address, "--data", str(tmp_path / "d"))
    assert result.returncode == 1
    [line] = [ln for ln in result.stderr.splitlines() if "level=ERROR" in ln]
    assert f"cannot listen on {address}" in line
