"""Quorum counting (router.requests.quorum) and the coalescer's promise that every item gets
exactly one answer, driven in-process with plain callbacks."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from shardkv.router.requests.coalescer import Coalescer, NodeFailure
from shardkv.router.requests.quorum import Quorum, QuorumGroup, replicas_needed
from shardkv.v1 import kv_pb2

UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


def failure(node_id: str, code: grpc.StatusCode = UNAVAILABLE) -> NodeFailure:
    return NodeFailure(node_id, code, "test")


def test_replicas_needed_per_level() -> None:
    assert replicas_needed(kv_pb2.ONE, replication=3, default=2) == 1
    assert replicas_needed(kv_pb2.QUORUM, replication=5, default=2) == 3
    assert replicas_needed(kv_pb2.ALL, replication=3, default=2) == 3
    assert replicas_needed(kv_pb2.CONSISTENCY_DEFAULT, replication=3, default=2) == 2


@pytest.mark.timeout(10)
def test_decided_when_every_reply_is_in_and_settled_once() -> None:
    async def scenario() -> None:
        group: QuorumGroup[int] = QuorumGroup(asyncio.get_running_loop().time() + 5)
        settled: list[Quorum[int]] = []
        quorum = group.quorum(2, settled.append)
        replies = [quorum.add(name) for name in ("n1", "n2", "n3")]
        quorum.fail("n4", "DOWN")
        waiter = asyncio.ensure_future(group.wait())
        await asyncio.sleep(0)
        replies[0](failure("n1"))
        replies[1](failure("n2"))
        await asyncio.sleep(0)
        assert not waiter.done() and not settled
        replies[2](3)
        replies[2](4)  # a second answer for one replica is ignored
        await waiter  # every reply is in: decided (failed) and settled
        assert not quorum.succeeded
        assert settled == [quorum] and quorum.ok == {"n3": 3}
        assert set(quorum.failed) == {"n1", "n2", "n4"}
        assert quorum.failure_code() == UNAVAILABLE

    asyncio.run(scenario())


@pytest.mark.timeout(10)
def test_on_failed_may_replace_a_replica_only_while_undecided() -> None:
    async def scenario() -> None:
        group: QuorumGroup[int] = QuorumGroup(asyncio.get_running_loop().time() + 5)
        quorum = group.quorum(1)
        replaced: list[NodeFailure] = []

        def replace(failed: NodeFailure) -> None:
            replaced.append(failed)
            quorum.add("fallback")(1)

        first = quorum.add("n1", replace)
        late = quorum.add("n2", replace)
        waiter = asyncio.ensure_future(group.wait())
        await asyncio.sleep(0)
        first(failure("n1"))
        await waiter
        assert quorum.succeeded and quorum.ok == {"fallback": 1}
        late(failure("n2"))  # decided already: no replacement
        assert [f.node_id for f in replaced] == ["n1"]

    asyncio.run(scenario())


@pytest.mark.timeout(10)
def test_exhausted_replicas_make_the_failure_resource_exhausted() -> None:
    async def scenario() -> None:
        group: QuorumGroup[int] = QuorumGroup(asyncio.get_running_loop().time() + 5)
        quorum = group.quorum(2)
        quorum.add("n1")(failure("n1", grpc.StatusCode.RESOURCE_EXHAUSTED))
        quorum.add("n2")(2)
        await group.wait()
        assert quorum.failure_code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        message = quorum.describe("write", b"key", 3)
        assert "1 of 2 required replicas acknowledged (N=3)" in message
        assert "n1 (RESOURCE_EXHAUSTED: test)" in message

    asyncio.run(scenario())


@pytest.mark.timeout(10)
def test_the_deadline_settles_silent_replicas_and_late_answers_are_dropped() -> None:
    async def scenario() -> None:
        group: QuorumGroup[int] = QuorumGroup(asyncio.get_running_loop().time() + 0.05)
        settled: list[dict[str, str]] = []
        quorum = group.quorum(1, lambda q: settled.append(dict(q.failed)))
        quorum.add("n1")(1)
        silent = quorum.add("n2")
        await group.wait()
        assert quorum.succeeded and not settled
        await asyncio.sleep(0.1)
        assert settled == [{"n2": "no answer before the deadline"}]
        silent(2)
        assert quorum.ok == {"n1": 1}

    asyncio.run(scenario())


@pytest.mark.timeout(10)
def test_a_raising_callback_keeps_no_other_item_from_its_answer() -> None:
    """The other items of the batch are answered, and so are later batches."""

    async def scenario() -> None:
        async def send(items: list[int], timeout: float) -> list[int]:
            await asyncio.sleep(0)
            return [item * 10 for item in items]

        coalescer: Coalescer[int, int] = Coalescer(
            "n1",
            send,
            on_failure=lambda failed, timeout: None,
            max_items=100,
            max_bytes=1 << 20,
            max_in_flight=1,
            call_timeout_s=1.0,
            size_of=lambda item: 1,
        )
        got: dict[int, int | NodeFailure] = {}

        def deliver(index: int, result: int | NodeFailure) -> None:
            if index == 0:
                raise KeyError("a buggy callback")
            got[index] = result

        deadline = asyncio.get_running_loop().time() + 5
        coalescer.submit([(i, lambda r, i=i: deliver(i, r)) for i in range(5)], deadline)
        coalescer.submit([(9, lambda r: deliver(9, r))], deadline)
        await coalescer.close()
        await asyncio.sleep(0.05)
        await coalescer.close()
        assert got == {1: 10, 2: 20, 3: 30, 4: 40, 9: 90}

    asyncio.run(scenario())


@pytest.mark.timeout(10)
def test_an_unexpected_error_in_a_call_fails_every_item_of_it() -> None:
    async def scenario() -> None:
        async def send(items: list[int], timeout: float) -> list[int]:
            raise RuntimeError("a bug while building the request")

        coalescer: Coalescer[int, int] = Coalescer(
            "n1",
            send,
            on_failure=lambda failed, timeout: None,
            max_items=100,
            max_bytes=1 << 20,
            max_in_flight=1,
            call_timeout_s=1.0,
            size_of=lambda item: 1,
        )
        got: list[int | NodeFailure] = []
        deadline = asyncio.get_running_loop().time() + 5
        coalescer.submit([(i, got.append) for i in range(3)], deadline)
        await asyncio.sleep(0.05)
        await coalescer.close()
        assert len(got) == 3
        assert all(isinstance(r, NodeFailure) and r.code == grpc.StatusCode.INTERNAL for r in got)

    asyncio.run(scenario())
