"""Reads cannot amplify memory (security issue 14, item 3).

The attack: four BatchGets, each naming one 1 MiB key 1000 times (about 10 KB of request),
made the nodes allocate 1.5-3 GB and the router mark every node down. A node read every
value (copying each twice) before it checked its reply budget, and the router's per-call
byte cap counted key bytes only, so one coalesced Replica.Read asked a node for 512 MiB.

Now memory per request is bounded by the reply budget whatever the keys: a node reads a key
named several times once, checks each value's size before copying it, and answers what fits
(Replica.Read with a resume marker, KV.BatchGet with RESOURCE_EXHAUSTED items); the router
reads each distinct key once, caps every node call by value bytes (8 MiB) and asks again
for the rest, stops holding records once a request's budget is spent, and answers either
the complete result or RESOURCE_EXHAUSTED naming the message limit.

Every process is real; peak memory is the kernel's high-water mark (VmHWM), reset before
each attack.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from harness import Cluster, start_cluster
from shardkv.v1 import admin_pb2, admin_pb2_grpc, kv_pb2, kv_pb2_grpc, replica_pb2, replica_pb2_grpc

MIB = 1 << 20
# Peak RSS growth a user would accept for a handful of requests, whatever they name.
GROWTH_LIMIT_MB = 200
# A legitimate answer of up to 32 MiB: (N + 1) answers' worth of replica records held by the
# router, and about three times the answer to build and serialize it.
LARGE_ANSWER_LIMIT_MB = 320
BIG = b"big"
WIDE = [b"wide/%02d" % i for i in range(40)]  # 40 distinct 1 MiB values: 40 MiB
SMALL = {b"small/%03d" % i: b"s%d" % i for i in range(100)}
OPTIONS = [
    ("grpc.max_receive_message_length", 64 * MIB),
    ("grpc.max_send_message_length", 64 * MIB),
]


@pytest.fixture(scope="module")
def loaded(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Cluster, dict[bytes, bytes]]]:
    """Three nodes (N=3, R=W=2) and a router holding one 1 MiB value under BIG, 40 more under
    WIDE and 100 small ones; random values, so nothing compresses them."""
    cluster = start_cluster(tmp_path_factory.mktemp("amplification"))
    try:
        values = {key: os.urandom(MIB) for key in [BIG, *WIDE]}
        with grpc.insecure_channel(cluster.router.address, options=OPTIONS) as channel:
            kv = kv_pb2_grpc.KVStub(channel)
            for key, value in values.items():
                kv.Put(kv_pb2.PutRequest(key=key, value=value), timeout=30)
            mutations = [kv_pb2.Mutation(key=k, value=v) for k, v in SMALL.items()]
            reply = kv.BatchWrite(kv_pb2.BatchWriteRequest(mutations=mutations), timeout=30)
            assert all(r.status.code == 0 for r in reply.results)
        yield cluster, values
    except BaseException:
        print(cluster.logs())
        raise
    finally:
        cluster.stop()


def _status_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise ValueError(f"no {field} for pid {pid}")


def peak_growth(cluster: Cluster, action: Callable[[], None]) -> dict[str, float]:
    """How far each process's peak RSS rose above its RSS while action ran (VmHWM, reset
    first with clear_refs 5, so no short peak is missed)."""
    before = {}
    for proc in cluster.all():
        Path(f"/proc/{proc.pid}/clear_refs").write_text("5")
        before[proc.name] = _status_mb(proc.pid, "VmRSS")
    action()
    grown = {p.name: _status_mb(p.pid, "VmHWM") - before[p.name] for p in cluster.all()}
    print("peak RSS growth MB: " + ", ".join(f"{n}={mb:.0f}" for n, mb in grown.items()))
    return grown


def concurrently(calls: list[Callable[[], object]]) -> list[object]:
    """Runs the calls on threads at once; returns each one's result or exception."""
    results: list[object] = [None] * len(calls)

    def run(index: int) -> None:
        try:
            results[index] = calls[index]()
        except Exception as err:
            results[index] = err

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return results


def assert_refused_naming_the_limit(result: object) -> None:
    assert isinstance(result, grpc.RpcError), f"expected a refusal, got {result!r:.300}"
    assert result.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, result
    assert "message limit" in (result.details() or ""), result.details()


def assert_all_nodes_up(cluster: Cluster) -> None:
    with grpc.insecure_channel(cluster.router.address) as channel:
        health = admin_pb2_grpc.AdminStub(channel).GetHealth(
            admin_pb2.GetHealthRequest(), timeout=5
        )
    states = {n.id: admin_pb2.NodeState.Name(n.state) for n in health.nodes}
    assert health.nodes_down == 0 and health.healthy, f"nodes marked down: {states}"


def assert_reads_answer(kv: kv_pb2_grpc.KVStub, values: dict[bytes, bytes]) -> None:
    keys = [*SMALL, BIG, WIDE[0]]
    reply = kv.BatchGet(kv_pb2.BatchGetRequest(keys=keys), timeout=10)
    got = {r.key: r.value for r in reply.results if r.found}
    assert got == {**SMALL, BIG: values[BIG], WIDE[0]: values[WIDE[0]]}


def test_one_large_key_named_a_thousand_times_keeps_memory_bounded(
    loaded: tuple[Cluster, dict[bytes, bytes]],
) -> None:
    """The reported attack through the router: each request is refused as too large for
    one answer, no process grows by more than GROWTH_LIMIT_MB, every node stays UP, and
    reads answer as before."""
    cluster, values = loaded
    attack = kv_pb2.BatchGetRequest(keys=[BIG] * 1000)
    assert attack.ByteSize() < 12_000
    with grpc.insecure_channel(cluster.router.address, options=OPTIONS) as channel:
        kv = kv_pb2_grpc.KVStub(channel)
        results: list[object] = []

        def attack_four_times() -> None:
            calls = [lambda: kv.BatchGet(attack, timeout=60) for _ in range(4)]
            results.extend(concurrently(calls))

        grown = peak_growth(cluster, attack_four_times)
        for result in results:
            assert_refused_naming_the_limit(result)
        for name, growth in grown.items():
            assert growth < GROWTH_LIMIT_MB, f"{name} peak RSS grew {growth:.0f} MB"
        assert_all_nodes_up(cluster)
        assert_reads_answer(kv, values)
        # What fits in one answer is answered in full, duplicates included.
        reply = kv.BatchGet(kv_pb2.BatchGetRequest(keys=[BIG] * 20), timeout=30)
        assert [r.value == values[BIG] for r in reply.results] == [True] * 20


def test_node_apis_answer_what_fits_with_bounded_memory(
    loaded: tuple[Cluster, dict[bytes, bytes]],
) -> None:
    """The same attack sent to a node directly: Replica.Read answers the records that fit
    with a resume marker, the node's KV.BatchGet answers what fits and refuses the rest
    per item naming the limit; neither grows the node by more than GROWTH_LIMIT_MB."""
    cluster, values = loaded
    node = cluster.nodes[0]
    keys = [BIG] * 1000
    with grpc.insecure_channel(node.address, options=OPTIONS) as channel:
        replica = replica_pb2_grpc.ReplicaStub(channel)
        kv = kv_pb2_grpc.KVStub(channel)
        replies: list[replica_pb2.ReadResponse] = []
        batches: list[kv_pb2.BatchGetResponse] = []

        def attack() -> None:
            for _ in range(2):
                replies.append(replica.Read(replica_pb2.ReadRequest(keys=keys), timeout=60))
                batches.append(kv.BatchGet(kv_pb2.BatchGetRequest(keys=keys), timeout=60))

        grown = peak_growth(cluster, attack)
        assert grown[node.name] < GROWTH_LIMIT_MB, f"{node.name} grew {grown[node.name]:.0f} MB"
        for reply in replies:
            answered = len(reply.records)
            assert 0 < answered < len(keys) and reply.resume_at == answered
            assert all(r.value == values[BIG] for r in reply.records)
            assert reply.ByteSize() < 32 * MIB
        for batch in batches:
            found = [r for r in batch.results if r.found]
            assert found and all(r.value == values[BIG] for r in found)
            refused = batch.results[len(found) :]
            assert refused and all(
                r.status.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
                and "message limit" in r.status.message
                for r in refused
            )
        # A small budget asked for by the caller pages a few records at a time.
        small = replica.Read(replica_pb2.ReadRequest(keys=WIDE, max_bytes=3 * MIB), timeout=30)
        assert 1 <= len(small.records) <= 3 and small.resume_at == len(small.records)


def test_large_values_are_paged_into_a_complete_answer(
    loaded: tuple[Cluster, dict[bytes, bytes]],
) -> None:
    """30 distinct 1 MiB values fit one answer: the router pages its node reads (8 MiB per
    call) and answers every one correctly. 40 do not: RESOURCE_EXHAUSTED naming the limit.
    Either way the router holds at most one answer's worth of records per replica asked
    plus the answer it builds (Python's protobuf needs about three times an answer's size
    to build and serialize it): LARGE_ANSWER_LIMIT_MB."""
    cluster, values = loaded
    with grpc.insecure_channel(cluster.router.address, options=OPTIONS) as channel:
        kv = kv_pb2_grpc.KVStub(channel)
        fits = [*WIDE[:30], WIDE[0]]
        answers: list[object] = []

        def read(keys: list[bytes]) -> Callable[[], None]:
            return lambda: answers.extend(
                concurrently([lambda: kv.BatchGet(kv_pb2.BatchGetRequest(keys=keys), timeout=60)])
            )

        grown = [peak_growth(cluster, read(fits)), peak_growth(cluster, read(WIDE))]
        complete, too_large = answers
        assert isinstance(complete, kv_pb2.BatchGetResponse), complete
        assert [r.key for r in complete.results] == fits
        assert all(r.found and r.value == values[r.key] for r in complete.results)
        assert_refused_naming_the_limit(too_large)
        for growths in grown:
            for name, growth in growths.items():
                assert growth < LARGE_ANSWER_LIMIT_MB, f"{name} peak RSS grew {growth:.0f} MB"
        assert_all_nodes_up(cluster)
