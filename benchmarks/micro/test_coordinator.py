"""The router's per-key work on a batch, without gRPC: the Coordinator over nodes that
answer at once, in one process. The general path (a Quorum per key, a callback per key
and replica) against the batch path (batch_write.py, batch_read.py), 1000 keys, N=3."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
from pytest_benchmark.fixture import BenchmarkFixture
from shardkv.common.answers import get_result
from shardkv.common.hlc import HybridClock
from shardkv.router.placement.current import Layout, Placement
from shardkv.router.placement.ring import Ring
from shardkv.router.requests.coalescer import Deliver
from shardkv.router.requests.coordinator import Coordinator
from shardkv.router.requests.framing import ColumnChunk
from shardkv.router.requests.health import NodeHealth
from shardkv.router.requests.node_link import ApplyItem
from shardkv.router.requests.replica_answers import ReplicaAnswers, answers_of, split
from shardkv.router.requests.writes import Mutations
from shardkv.v1 import replica_pb2

KEYS = [b"v100/%08d" % i for i in range(1000)]
VALUE = b"x" * 100
STORED = {key: replica_pb2.Record(key=key, value=VALUE, version=5, writer=1) for key in KEYS}


class InstantNode:
    """Answers every call on the next loop turn: acknowledges writes, returns STORED."""

    def __init__(self) -> None:
        self._answers: dict[tuple[bytes, ...], ReplicaAnswers] = {}

    def apply(
        self, items: Sequence[tuple[ApplyItem, Deliver[bool]]], deadline: float, epoch: int
    ) -> None:
        asyncio.get_running_loop().call_soon(_each, [d for _, d in items], True)

    def read(
        self,
        keys: Sequence[tuple[bytes, Deliver[replica_pb2.Record]]],
        deadline: float,
        epoch: int,
    ) -> None:
        loop = asyncio.get_running_loop()
        for key, deliver in keys:
            loop.call_soon(deliver, STORED[key])

    def apply_chunk(
        self, records: ColumnChunk, deliver: Deliver[bool], deadline: float, epoch: int
    ) -> None:
        asyncio.get_running_loop().call_soon(deliver, True)

    def read_chunk(
        self,
        keys: list[bytes],
        deliver: Deliver[ReplicaAnswers],
        deadline: float,
        epoch: int,
    ) -> None:
        """Each key's entry of the client's answer, as a node sends them (replica_answers),
        built once per list of keys: a node's own work is not the router's."""
        answers = self._answers.get(tuple(keys))
        if answers is None:
            reply = replica_pb2.ReadResponse(records=[STORED[key] for key in keys])
            [answers] = split([answers_of(keys, reply)], [len(keys)])
            self._answers[tuple(keys)] = answers
        asyncio.get_running_loop().call_soon(deliver, answers)


def _each(delivers: list[Deliver[bool]], result: bool) -> None:
    for deliver in delivers:
        deliver(result)


def _coordinator() -> Coordinator:
    ids = ["n1", "n2", "n3"]
    health = NodeHealth(ids)
    for node_id in ids:
        health.mark_up(node_id)
    return Coordinator(
        ring=Placement(Layout(1, Ring(dict.fromkeys(ids, 1)))),
        replication=3,
        clients=dict.fromkeys(ids, InstantNode()),
        health=health,
        clock=HybridClock(),
        writer=1,
        repair_timeout_s=1.0,
    )


@pytest.mark.parametrize("path", ["general", "batch"])
def test_write_1000(benchmark: BenchmarkFixture, path: str) -> None:
    coordinator = _coordinator()
    mutations = Mutations.of([(key, VALUE) for key in KEYS])
    records = [replica_pb2.Record(key=k, value=VALUE, version=9, writer=1) for k in KEYS]

    async def once() -> int:
        deadline = asyncio.get_running_loop().time() + 10
        if path == "batch":
            outcomes = await coordinator.write(mutations, 2, deadline)
        else:
            outcomes = await coordinator._place_at(records, 1, needed=2, deadline=deadline)
        return sum(o.error is None for o in outcomes)

    assert asyncio.run(once()) == len(KEYS)
    benchmark(lambda: asyncio.run(once()))


@pytest.mark.parametrize("path", ["general", "batch"])
def test_read_1000(benchmark: BenchmarkFixture, path: str) -> None:
    coordinator = _coordinator()

    async def once() -> int:
        deadline = asyncio.get_running_loop().time() + 10
        if path == "batch":
            outcomes = await coordinator.read(KEYS, 2, deadline)
        else:
            reader = coordinator._key_reader
            outcomes = await reader.read_at(KEYS, 1, needed=2, deadline=deadline, budget=None)
        return sum(get_result(o).found for o in outcomes)

    assert asyncio.run(once()) == len(KEYS)
    benchmark(lambda: asyncio.run(once()))
