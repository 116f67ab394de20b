"""The SDK's Admin calls against fake routers (in-process gRPC servers on loopback ports),
through both shells: reads are repeated after UNAVAILABLE, a node add is never sent twice
to one router but fails over to another, Admin calls go to the routers in the order given,
and the Backup stream is retried only until its first batch. Plus the pure parts: the retry
rule, the ordered pick, and the two shells exposing the same documented methods."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from shardkv.client import AsyncClient, Client, RetryPolicy, Unavailable
from shardkv.client.admin import AdminMethods, AsyncAdminMethods
from shardkv.client.transport import Targets
from shardkv.v1 import admin_pb2, admin_pb2_grpc, replica_pb2

FAST = RetryPolicy(initial_backoff=0.01, jitter=False)
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


class FakeRouter(admin_pb2_grpc.AdminServicer):
    """Counts calls per method; the first ``failures[method]`` of them answer UNAVAILABLE.
    Backup sends ``batches`` batches, then fails if ``fail_stream_after_first`` is set."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.calls: dict[str, int] = {}
        self.failures: dict[str, int] = {}
        self.batches = 3
        self.fail_stream_after_first = False

    def _count(self, method: str, context: grpc.ServicerContext) -> None:
        self.calls[method] = self.calls.get(method, 0) + 1
        if self.calls[method] <= self.failures.get(method, 0):
            context.abort(UNAVAILABLE, f"{self.name} is busy")

    def GetTopology(self, request: Any, context: grpc.ServicerContext) -> admin_pb2.Topology:
        self._count("GetTopology", context)
        return admin_pb2.Topology(router_id=self.name)

    def AddNode(self, request: Any, context: grpc.ServicerContext) -> admin_pb2.Move:
        self._count("AddNode", context)
        return admin_pb2.Move(id=f"add-{request.id}@{self.name}")

    def Backup(
        self, request: Any, context: grpc.ServicerContext
    ) -> Iterator[replica_pb2.SnapshotBatch]:
        self._count("Backup", context)
        for i in range(self.batches):
            if i == 1 and self.fail_stream_after_first:
                context.abort(UNAVAILABLE, "node went away")
            yield replica_pb2.SnapshotBatch(records=[replica_pb2.Record(key=b"k%d" % i)])


@pytest.fixture
def routers() -> Iterator[list[tuple[str, FakeRouter]]]:
    """Two fake routers: (address, servicer) each."""
    servers, running = [], []
    for name in ("r1", "r2"):
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        fake = FakeRouter(name)
        admin_pb2_grpc.add_AdminServicer_to_server(fake, server)  # type: ignore[no-untyped-call]
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append(server)
        running.append((f"127.0.0.1:{port}", fake))
    try:
        yield running
    finally:
        for server in servers:
            server.stop(None)


def sync_shell(targets: list[str], script: Callable[[Any], Any]) -> Any:
    with Client(targets, retry=FAST, timeout=5) as client:
        return script(client)


def async_shell(targets: list[str], script: Callable[[Any], Any]) -> Any:
    """Runs script with an AsyncClient, awaiting what it returns (a list: each item)."""

    async def main() -> Any:
        async with AsyncClient(targets, retry=FAST, timeout=5) as client:
            result = script(client)
            if inspect.isawaitable(result):
                return await result
            return [item async for item in result]  # an async iterator (backup)

    return asyncio.run(main())


SHELLS = pytest.mark.parametrize("shell", [sync_shell, async_shell], ids=["sync", "async"])


@SHELLS
def test_reads_are_repeated_and_node_changes_are_not(
    shell: Callable[..., Any], routers: list[tuple[str, FakeRouter]]
) -> None:
    address, fake = routers[0]
    fake.failures = {"GetTopology": 1, "AddNode": 1}
    assert shell([address], lambda c: c.topology()).router_id == "r1"
    assert fake.calls["GetTopology"] == 2, "a read is repeated after UNAVAILABLE"
    with pytest.raises(Unavailable, match="r1 is busy"):
        shell([address], lambda c: c.add_node("n4", "127.0.0.1:1"))
    assert fake.calls["AddNode"] == 1, "AddNode is never sent twice to one router"


@SHELLS
def test_node_add_fails_over_to_a_router_not_tried(
    shell: Callable[..., Any], routers: list[tuple[str, FakeRouter]]
) -> None:
    (first, r1), (second, r2) = routers
    r1.failures = {"AddNode": 1}
    move = shell([first, second], lambda c: c.add_node("n4", "127.0.0.1:1", weight=2))
    assert move.id == "add-n4@r2"
    assert (r1.calls["AddNode"], r2.calls["AddNode"]) == (1, 1)


@SHELLS
def test_admin_calls_go_to_the_first_router_that_answers(
    shell: Callable[..., Any], routers: list[tuple[str, FakeRouter]]
) -> None:
    (first, r1), (second, r2) = routers

    def three(client: Any) -> Any:
        if isinstance(client, Client):
            return [client.topology().router_id for _ in range(3)]

        async def calls() -> list[str]:
            return [(await client.topology()).router_id for _ in range(3)]

        return calls()

    assert shell([first, second], three) == ["r1"] * 3
    assert r1.calls["GetTopology"] == 3 and "GetTopology" not in r2.calls


@SHELLS
def test_backup_is_retried_only_before_its_first_batch(
    shell: Callable[..., Any], routers: list[tuple[str, FakeRouter]]
) -> None:
    address, fake = routers[0]
    fake.failures = {"Backup": 1}
    batches = shell(
        [address], lambda c: list(c.backup("n1")) if isinstance(c, Client) else c.backup("n1")
    )
    assert [b.records[0].key for b in batches] == [b"k0", b"k1", b"k2"]
    assert fake.calls["Backup"] == 2

    fake.fail_stream_after_first = True
    received: list[replica_pb2.SnapshotBatch] = []

    def drain(client: Any) -> Any:
        if isinstance(client, Client):
            received.extend(client.backup("n1"))
            return None

        async def consume() -> None:
            async for batch in client.backup("n1"):
                received.append(batch)

        return consume()

    with pytest.raises(Unavailable, match="node went away"):
        shell([address], drain)
    assert len(received) == 1 and fake.calls["Backup"] == 3, "not retried after a batch"


def test_a_call_that_is_not_repeatable_only_fails_over() -> None:
    policy = RetryPolicy(jitter=False)
    args: dict[str, Any] = {"failed_attempts": 1, "elapsed": 0.0, "remaining": 5.0}
    assert policy.delay(UNAVAILABLE, untried_target=False, **args) == pytest.approx(0.05)
    assert policy.delay(UNAVAILABLE, untried_target=False, repeatable=False, **args) is None
    assert policy.delay(UNAVAILABLE, untried_target=True, repeatable=False, **args) == 0.0
    once = RetryPolicy(max_attempts=1)
    assert once.delay(UNAVAILABLE, untried_target=True, repeatable=False, **args) is None


def test_an_ordered_pick_prefers_the_first_router_and_leaves_the_round_robin() -> None:
    targets = Targets(["a:1", "b:2", "c:3"])
    assert [targets.pick(in_order=True) for _ in range(3)] == ["a:1"] * 3
    assert targets.pick() == "a:1", "the round robin did not move"
    targets.failed("a:1")
    assert targets.pick(in_order=True) == "b:2"
    assert targets.pick(["b:2"], in_order=True) == "c:3"


def test_both_shells_expose_the_same_documented_admin_methods() -> None:
    def public(cls: type) -> dict[str, Any]:
        return {name: getattr(cls, name) for name in vars(cls) if not name.startswith("_")}

    sync, aio = public(AdminMethods), public(AsyncAdminMethods)
    assert sync.keys() == aio.keys()
    assert set(sync) <= set(dir(Client)) and set(aio) <= set(dir(AsyncClient))
    for name, method in sync.items():
        assert method.__doc__ and "``" in method.__doc__, f"{name} says what it returns"
        assert aio[name].__doc__ == method.__doc__
        assert inspect.signature(aio[name]).parameters == inspect.signature(method).parameters
