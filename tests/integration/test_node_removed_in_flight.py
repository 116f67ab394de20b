"""A node removed from the topology while requests to it are in flight: every caller still
gets an answer (issue 13, item 5).

In-process, over real gRPC: three small Replica servers on loopback ports, the router's
real NodeClients (coalescers and all) and its real Coordinator. A node's Read is held
until the test has removed the node from the router's clients (as a topology change does,
router.membership.live_topology), then released: its replies arrive for a node the router
no longer knows.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
import pytest
from shardkv.common.answers import get_result
from shardkv.common.hlc import HybridClock
from shardkv.common.limits import DEFAULT_LIMITS, Limits
from shardkv.router.membership.topology import NodeConfig
from shardkv.router.placement.current import Layout, Placement
from shardkv.router.placement.ring import Ring
from shardkv.router.requests.coordinator import Coordinator
from shardkv.router.requests.health import NodeHealth
from shardkv.router.requests.node_client import NodeClient
from shardkv.router.requests.outcomes import ReadFailure
from shardkv.router.requests.writes import Mutations
from shardkv.shardd.convert import record_to_pb, records_from_columns
from shardkv.v1 import replica_pb2, replica_pb2_grpc

NODES = ("n1", "n2", "n3")
KEYS = [b"inflight/%02d" % i for i in range(40)]


class HeldReplica(replica_pb2_grpc.ReplicaServicer):
    """Just enough of shardkv.v1.Replica: records in a dict (newest wins; sent as messages
    or as columns), and a gate that holds Read and Apply calls until opened."""

    def __init__(self) -> None:
        self.records: dict[bytes, replica_pb2.Record] = {}
        self.gate = asyncio.Event()
        self.gate.set()
        self.waiting = asyncio.Event()

    async def _pass_gate(self) -> None:
        if not self.gate.is_set():
            self.waiting.set()
            await self.gate.wait()

    async def Identity(
        self, request: replica_pb2.IdentityRequest, context: Any
    ) -> replica_pb2.DirectoryIdentity:
        return replica_pb2.DirectoryIdentity()  # no exchange port: the router sends calls

    async def Read(
        self, request: replica_pb2.ReadRequest, context: Any
    ) -> replica_pb2.ReadResponse:
        await self._pass_gate()
        return replica_pb2.ReadResponse(
            records=[self.records.get(key, replica_pb2.Record(key=key)) for key in request.keys]
        )

    async def Apply(
        self, request: replica_pb2.ApplyRequest, context: Any
    ) -> replica_pb2.ApplyResponse:
        await self._pass_gate()
        applied = []
        columns = records_from_columns(request.columns, DEFAULT_LIMITS)
        for record in [*request.records, *map(record_to_pb, columns)]:
            held = self.records.get(record.key)
            newer = held is None or (record.version, record.writer) > (held.version, held.writer)
            if newer:
                self.records[record.key] = record
            applied.append(newer)
        return replica_pb2.ApplyResponse(applied=applied)


@asynccontextmanager
async def cluster() -> AsyncIterator[
    tuple[dict[str, HeldReplica], dict[str, NodeClient], Coordinator]
]:
    servers, replicas, clients = [], {}, {}
    health = NodeHealth(NODES)
    try:
        for node_id in NODES:
            server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
            replicas[node_id] = HeldReplica()
            replica_pb2_grpc.add_ReplicaServicer_to_server(replicas[node_id], server)  # type: ignore[no-untyped-call]
            port = server.add_insecure_port("127.0.0.1:0")
            await server.start()
            servers.append(server)
            clients[node_id] = NodeClient(
                NodeConfig(node_id, f"127.0.0.1:{port}"),
                limits=Limits(),
                call_timeout_s=5.0,
                on_failure=lambda failure, timeout: None,
            )
        coordinator = Coordinator(
            ring=Placement(Layout(1, Ring(dict.fromkeys(NODES, 1)))),
            replication=3,
            clients=clients,
            health=health,
            clock=HybridClock(),
            writer=1,
            repair_timeout_s=5.0,
        )
        yield replicas, clients, coordinator
    finally:
        for client in list(clients.values()):
            await client.close()
        for server in servers:
            await server.stop(None)


@pytest.mark.timeout(60)
def test_replies_from_a_removed_node_leave_no_caller_without_an_answer() -> None:
    """A read at ALL whose stale replica (so read repair must follow) is removed while its
    batched Read is in flight: every key of the batch is answered with the newest record."""

    async def scenario() -> None:
        async with cluster() as (replicas, clients, coordinator):
            loop = asyncio.get_running_loop()
            written = await coordinator.write(
                Mutations.of([(key, b"new") for key in KEYS]), 3, loop.time() + 10
            )
            assert all(outcome.error is None for outcome in written)
            for key in KEYS:  # n3 is stale: every key read there needs a repair
                replicas["n3"].records[key] = replica_pb2.Record(
                    key=key, value=b"old", version=1, writer=1
                )
            replicas["n3"].gate.clear()
            read = asyncio.create_task(coordinator.read(KEYS, 3, loop.time() + 10))
            await asyncio.wait_for(replicas["n3"].waiting.wait(), 10)
            removed = clients.pop("n3")  # the topology dropped n3; its channel lives on
            replicas["n3"].gate.set()
            outcomes = await read
            await removed.close()
            errors = [o.error for o in outcomes if isinstance(o, ReadFailure)]
            assert not errors, f"{len(errors)} of {len(KEYS)} keys got no answer: {errors[:2]}"
            results = [get_result(o) for o in outcomes]
            assert [r.value for r in results if r.found] == [b"new"] * len(KEYS)

    asyncio.run(scenario())


@pytest.mark.timeout(60)
def test_writes_to_a_removed_node_are_answered() -> None:
    """Writes whose call to n3 is in flight when n3 is removed are answered, and so is a
    write that reaches the coordinator after the removal while the ring still names n3."""

    async def scenario() -> None:
        async with cluster() as (replicas, clients, coordinator):
            loop = asyncio.get_running_loop()
            replicas["n3"].gate.clear()
            write = asyncio.create_task(
                coordinator.write(Mutations.of([(key, b"w") for key in KEYS]), 3, loop.time() + 10)
            )
            await asyncio.wait_for(replicas["n3"].waiting.wait(), 10)
            removed = clients.pop("n3")
            replicas["n3"].gate.set()
            outcomes = await write
            await removed.close()
            assert [o.error for o in outcomes] == [None] * len(KEYS)
            # The ring still names n3, whose client is gone: W=2 of the other two.
            late = await coordinator.write(Mutations.of([(b"after", b"x")]), 2, loop.time() + 10)
            assert late[0].error is None, late[0].error

    asyncio.run(scenario())
