"""In-process stand-ins for the router's node clients, to drive the real Coordinator.

A FakeNode implements what the coordinator uses of a node (router.requests.node_client's
NodeLink: ``apply`` and ``read`` with one callback per item) over plain dicts: records
with last-write-wins, hints parked for other nodes, and markers kept for other owners. It
answers on a later turn of the event loop, like a real call; a test can make it fail every
call with a status code, answer only after a delay, hold its answers until released, or
never answer. No gRPC, no mocks.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc
from shardkv.common.answers import get_result
from shardkv.common.hlc import HybridClock
from shardkv.common.limits import DEFAULT_LIMITS
from shardkv.router.placement.current import Layout, Placement
from shardkv.router.placement.ring import Ring
from shardkv.router.requests.coalescer import Deliver, NodeFailure
from shardkv.router.requests.coordinator import Coordinator
from shardkv.router.requests.framing import ColumnChunk, KeyChunk, apply_body
from shardkv.router.requests.health import NodeHealth
from shardkv.router.requests.node_link import ApplyItem, MarkedRecord
from shardkv.router.requests.outcomes import ReadFailure, ReadOutcome
from shardkv.router.requests.replica_answers import ReplicaAnswers, answers_of, split
from shardkv.serving import event_loop
from shardkv.shardd.convert import record_to_pb, records_from_columns
from shardkv.v1 import replica_pb2

Stamp = tuple[int, int]


def stamp(record: replica_pb2.Record) -> Stamp:
    return (record.version, record.writer)


class FakeNode:
    """One node: what it stores, and how it answers (``fail``, ``delay_s``, ``silent``)."""

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self.records: dict[bytes, replica_pb2.Record] = {}
        self.hints: defaultdict[str, dict[bytes, replica_pb2.Record]] = defaultdict(dict)
        self.markers: defaultdict[str, dict[bytes, Stamp]] = defaultdict(dict)
        # Every apply item and read key received, in order (whatever the node did with it).
        self.received: list[ApplyItem] = []
        self.keys_read: list[bytes] = []
        self.fail: grpc.StatusCode | None = None
        self.delay_s = 0.0
        self.silent = False
        # While not None, answers wait here until release().
        self.held: list[tuple[Any, list[Any]]] | None = None

    # -- NodeLink --------------------------------------------------------------------------

    def apply(
        self, items: Sequence[tuple[ApplyItem, Deliver[bool]]], deadline: float, epoch: int
    ) -> None:
        self.received.extend(item for item, _ in items)
        self._later(self._answer_apply, list(items))

    def read(
        self,
        keys: Sequence[tuple[bytes, Deliver[replica_pb2.Record]]],
        deadline: float,
        epoch: int,
    ) -> None:
        self.keys_read.extend(key for key, _ in keys)
        self._later(self._answer_read, list(keys))

    # -- chunks of a batch (batch_write.ChunkLink, batch_read.KeyChunkLink) ----------------

    def apply_chunk(
        self, chunk: ColumnChunk, deliver: Deliver[bool], deadline: float, epoch: int
    ) -> None:
        request = replica_pb2.ApplyRequest.FromString(apply_body([chunk]))
        columns = records_from_columns(request.columns, DEFAULT_LIMITS)  # as a node reads them
        records = [*request.records, *map(record_to_pb, columns)]
        self.received.extend(records)
        self._later(self._answer_chunk, [(records, deliver)])

    def read_chunk(
        self,
        keys: KeyChunk,
        deliver: Deliver[ReplicaAnswers],
        deadline: float,
        epoch: int,
    ) -> None:
        self.keys_read.extend(keys.keys)
        self._later(self._answer_key_chunk, [(keys.keys, deliver)])

    def _answer_chunk(self, items: list[tuple[list[replica_pb2.Record], Deliver[bool]]]) -> None:
        if self._failed(items):
            return
        for records, deliver in items:
            for record in records:
                self._store(record)
            deliver(True)

    def _answer_key_chunk(self, items: list[tuple[list[bytes], Deliver[ReplicaAnswers]]]) -> None:
        """Answers as a node does: each key's record as an entry of the client's answer."""
        if self._failed(items):
            return
        for keys, deliver in items:
            records = [self.records.get(key, replica_pb2.Record(key=key)) for key in keys]
            reply = replica_pb2.ReadResponse(records=records)
            [answers] = split([answers_of(keys, reply)], [len(keys)])
            deliver(answers)

    # -- behaviour -------------------------------------------------------------------------

    def hold(self) -> None:
        self.held = []

    def release(self) -> None:
        held, self.held = self.held or [], None
        for answer, items in held:
            self._later(answer, items)

    def _later(self, answer: Any, items: list[Any]) -> None:
        if self.silent:
            return
        if self.held is not None:
            self.held.append((answer, items))
            return
        loop = asyncio.get_running_loop()
        if self.delay_s:
            loop.call_later(self.delay_s, answer, items)
        else:
            loop.call_soon(answer, items)

    def _failed(self, items: list[tuple[Any, Deliver[Any]]]) -> bool:
        if self.fail is None:
            return False
        failure = NodeFailure(self.node_id, self.fail, "fake failure")
        for _, deliver in items:
            deliver(failure)
        return True

    def _answer_apply(self, items: list[tuple[ApplyItem, Deliver[bool]]]) -> None:
        if self._failed(items):
            return
        for item, deliver in items:
            if isinstance(item, replica_pb2.Hint):
                parked = self.hints[item.target].get(item.record.key)
                if parked is None or stamp(item.record) > stamp(parked):
                    self.hints[item.target][item.record.key] = item.record
                deliver(True)
            elif isinstance(item, MarkedRecord):
                applied = self._store(item.record)
                for target in item.targets:
                    kept = self.markers[target].get(item.record.key, (0, 0))
                    self.markers[target][item.record.key] = max(kept, stamp(item.record))
                deliver(applied)
            else:
                deliver(self._store(item))

    def _answer_read(self, keys: list[tuple[bytes, Deliver[replica_pb2.Record]]]) -> None:
        if self._failed(keys):
            return
        for key, deliver in keys:
            deliver(self.records.get(key, replica_pb2.Record(key=key)))

    def _store(self, record: replica_pb2.Record) -> bool:
        held = self.records.get(record.key)
        if held is not None and stamp(held) >= stamp(record):
            return False
        self.records[record.key] = record
        return True

    # -- views for assertions --------------------------------------------------------------

    def marked_for(self, target: str) -> set[bytes]:
        return set(self.markers.get(target, {}))

    def hinted_for(self, target: str) -> set[bytes]:
        return set(self.hints.get(target, {}))

    def value(self, key: bytes) -> bytes | None:
        record = self.records.get(key)
        return None if record is None else record.value


class FakeCluster:
    """A Coordinator over FakeNodes n1..nK (N=3 by default) and the health it consults."""

    def __init__(self, nodes: int = 3, *, replication: int = 3) -> None:
        self.ids = [f"n{i + 1}" for i in range(nodes)]
        self.nodes = {node_id: FakeNode(node_id) for node_id in self.ids}
        self.ring = Ring(dict.fromkeys(self.ids, 1))
        self.health = NodeHealth(self.ids)
        for node_id in self.ids:
            self.health.mark_up(node_id)
        self.clock = HybridClock()
        self.coordinator = Coordinator(
            ring=Placement(Layout(1, self.ring)),
            replication=replication,
            clients=self.nodes,
            health=self.health,
            clock=self.clock,
            writer=7,
            repair_timeout_s=1.0,
        )
        self.replication = replication

    def owners(self, key: bytes) -> tuple[str, ...]:
        return self.ring.preference_list(key, self.replication)

    def asked(self, key: bytes, first: int = 0) -> tuple[str, ...]:
        """key's owners in the order a batch read asks them when the batch's order starts at
        the node with the first-th smallest id (replica_latency.AskOrder; always the first
        under the first_node_first fixture), no node slow."""
        nodes = sorted(self.ids)

        def rank(node_id: str) -> int:
            return (nodes.index(node_id) - first) % len(nodes)

        return tuple(sorted(self.owners(key), key=rank))

    def key_owned(self, prefix: str, first: str) -> bytes:
        """A key whose preference list starts with node first."""
        for i in range(10_000):
            key = f"{prefix}/{i}".encode()
            if self.owners(key)[0] == first:
                return key
        raise AssertionError(f"no key with {first} first")

    def down(self, *node_ids: str) -> None:
        """Marks nodes DOWN, as the health checks would, and makes their calls fail."""
        for node_id in node_ids:
            self.health.mark_down(node_id, "killed by the test")
            self.nodes[node_id].fail = grpc.StatusCode.UNAVAILABLE

    def deadline(self, seconds: float = 2.0) -> float:
        return asyncio.get_running_loop().time() + seconds


def read_value(outcome: ReadOutcome) -> bytes | None:
    """The value a read answered (None: not found, or failed)."""
    result = get_result(outcome)
    return result.value if result.found else None


def read_error(outcome: ReadOutcome) -> str | None:
    """Why a key could not be read (None: it was)."""
    return outcome.error if isinstance(outcome, ReadFailure) else None


async def settle(seconds: float = 0.05) -> None:
    """Lets background replies, repairs and markers run."""
    await asyncio.sleep(seconds)


async def until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Waits until condition holds (background work done); fails after timeout_s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not condition():
        assert loop.time() < deadline, "the condition never held"
        await asyncio.sleep(0.01)


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    """On the router's own event loop (uvloop: its clock counts whole milliseconds)."""
    event_loop.run(scenario())  # type: ignore[arg-type]
