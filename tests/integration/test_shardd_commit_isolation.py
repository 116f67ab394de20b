"""A running shardd answers each write on its own, though concurrent writes share a group
commit: one request refused for hint targets or a full store fails alone, and every write
that shares its commit is stored and acknowledged."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import grpc
import grpc.aio
import pytest
from harness import Proc, failed, shardd_proc
from shardkv.common.hlc import HybridClock
from shardkv.v1 import kv_pb2, kv_pb2_grpc, replica_pb2, replica_pb2_grpc

CLOCK = HybridClock()
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED


def _record(key: bytes) -> replica_pb2.Record:
    return replica_pb2.Record(key=key, value=b"v", version=CLOCK.now(), writer=7)


def _hint(target: str, key: bytes) -> replica_pb2.Hint:
    return replica_pb2.Hint(target=target, record=_record(key))


@pytest.fixture
def node(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Proc]:
    proc = shardd_proc(tmp_path, "n1", extra=getattr(request, "param", [])).start()
    try:
        yield proc
    finally:
        proc.stop()
        if failed(request):
            print(proc.log())


@pytest.mark.timeout(60)
def test_one_hint_target_too_many_fails_only_its_own_apply(node: Proc) -> None:
    """63 of the 64 hint targets are in use; two Applies each bring a new one (each
    passes the handler's check alone) beside ten Applies without hints. Before, all ten
    plain Applies failed with "hint targets ... limit of 64" when they shared the commit."""

    async def main() -> list[object]:
        async with grpc.aio.insecure_channel(node.address) as channel:
            replica = replica_pb2_grpc.ReplicaStub(channel)
            used = [_hint(f"t{i:02d}", b"h%02d" % i) for i in range(63)]
            await replica.Apply(replica_pb2.ApplyRequest(hints=used), timeout=10)
            calls = [
                replica.Apply(
                    replica_pb2.ApplyRequest(hints=[_hint(f"new{j}", b"n%d" % j)]), timeout=10
                )
                for j in range(2)
            ]
            calls += [
                replica.Apply(
                    replica_pb2.ApplyRequest(records=[_record(b"plain-%d" % j)]), timeout=10
                )
                for j in range(10)
            ]
            return list(await asyncio.gather(*calls, return_exceptions=True))

    results = asyncio.run(main())
    hinted, plain = results[:2], results[2:]
    failed = [r for r in plain if isinstance(r, grpc.aio.AioRpcError)]
    assert not failed, f"{len(failed)}/10 plain Applies failed: {failed[0].details()[:200]}"
    assert all(r.applied == [True] for r in plain)  # type: ignore[union-attr]
    refused = [r for r in hinted if isinstance(r, grpc.aio.AioRpcError)]
    assert len(refused) == 1 and refused[0].code() == EXHAUSTED, hinted
    with grpc.insecure_channel(node.address) as channel:
        summary = replica_pb2_grpc.ReplicaStub(channel).HintSummary(
            replica_pb2.HintSummaryRequest(), timeout=10
        )
        assert len(summary.targets) == 64


@pytest.mark.timeout(90)
@pytest.mark.parametrize("node", [["--map-size", "3MiB", "--max-map-size", "3MiB"]], indirect=True)
def test_a_write_too_big_for_a_full_store_fails_only_itself(node: Proc) -> None:
    """A BatchWrite the full 3 MiB map cannot hold shares commits with 1-byte Puts: it
    fails RESOURCE_EXHAUSTED, every Put is acknowledged and readable. Before, Puts sharing
    its commit failed with StoreFull too."""

    async def main() -> list[bytes]:
        async with grpc.aio.insecure_channel(node.address) as channel:
            kv = kv_pb2_grpc.KVStub(channel)
            await kv.Put(kv_pb2.PutRequest(key=b"fill", value=b"x" * 750_000), timeout=10)
            acknowledged: list[bytes] = []
            for rnd in range(10):
                keys = [b"small-%d-%d" % (rnd, i) for i in range(10)]
                lead = [
                    kv.Put(kv_pb2.PutRequest(key=b"lead%d" % i, value=b"l"), timeout=10)
                    for i in range(3)
                ]
                big = kv.BatchWrite(
                    kv_pb2.BatchWriteRequest(
                        mutations=[
                            kv_pb2.Mutation(key=b"big%d" % i, value=b"y" * 1_000_000)
                            for i in range(3)
                        ]
                    ),
                    timeout=10,
                )
                smalls = [
                    kv.Put(kv_pb2.PutRequest(key=key, value=b"s"), timeout=10) for key in keys
                ]
                res = await asyncio.gather(*lead, big, *smalls, return_exceptions=True)
                assert isinstance(res[3], grpc.aio.AioRpcError) and res[3].code() == EXHAUSTED
                bad = [r for r in res[:3] + res[4:] if isinstance(r, grpc.aio.AioRpcError)]
                assert not bad, f"round {rnd}: {len(bad)} 1-byte Puts failed: {bad[0].details()}"
                acknowledged += keys
            return acknowledged

    acknowledged = asyncio.run(main())
    with grpc.insecure_channel(node.address) as channel:
        got = kv_pb2_grpc.KVStub(channel).BatchGet(
            kv_pb2.BatchGetRequest(keys=acknowledged), timeout=10
        )
    assert [r.found for r in got.results] == [True] * len(acknowledged)
