"""Coalescing and quorum counting, without nodes: the send function is a real coroutine."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import grpc
import pytest
from shardkv.router.requests.coalescer import Coalescer, NodeFailure
from shardkv.router.requests.quorum import QuorumGroup

Results = list[int | NodeFailure]


class Recorder:
    """A send function that records each batch and answers after a short await."""

    def __init__(self, *, fail: bool = False) -> None:
        self.batches: list[list[int]] = []
        self.in_flight = 0
        self.most_in_flight = 0
        self.fail = fail

    async def __call__(self, items: list[int], timeout: float) -> list[int]:
        assert 0 < timeout <= 1.01  # node_call_ms, and its few bytes' allowance
        self.batches.append(items)
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        await asyncio.sleep(0.01)
        self.in_flight -= 1
        if self.fail:
            raise grpc.aio.AioRpcError(
                grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), "gone"
            )
        return [item * 10 for item in items]


def coalescer(send: Recorder, failures: list[NodeFailure]) -> Coalescer[int, int]:
    return Coalescer(
        "n1",
        send,
        on_failure=lambda failure, timeout: failures.append(failure),
        max_items=100,
        max_bytes=1 << 20,
        max_in_flight=2,
        call_timeout_s=1.0,
        size_of=lambda item: 1,
    )


async def submit(
    c: Coalescer[int, int], items: list[int], deadline: float
) -> asyncio.Future[Results]:
    """Submits items; the future resolves once every item has been delivered."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[Results] = loop.create_future()
    got: dict[int, int | NodeFailure] = {}

    def deliver(index: int, result: int | NodeFailure) -> None:
        got[index] = result
        if len(got) == len(items) and not done.done():
            done.set_result([got[i] for i in range(len(items))])

    c.submit([(item, lambda r, i=i: deliver(i, r)) for i, item in enumerate(items)], deadline)
    return done


@pytest.mark.timeout(10)
def test_lone_item_goes_at_once_and_concurrent_items_share_calls() -> None:
    async def scenario() -> None:
        send, failures = Recorder(), []
        c = coalescer(send, failures)
        deadline = asyncio.get_running_loop().time() + 5
        first = await submit(c, [1], deadline)
        await asyncio.sleep(0)
        assert send.batches == [[1]]  # sent on the next loop turn: no timer, no waiting
        singles = [await submit(c, [i], deadline) for i in range(2, 302)]
        assert await first == [10]
        assert [(await s)[0] for s in singles] == [i * 10 for i in range(2, 302)]
        assert send.most_in_flight == 2
        assert len(send.batches) <= 6  # 301 items in a handful of calls, 100 at most each
        assert max(len(b) for b in send.batches) == 100
        assert not failures

    asyncio.run(scenario())


@pytest.mark.timeout(10)
def test_failed_call_fails_every_item_and_expired_items_never_leave() -> None:
    async def scenario() -> None:
        send, failures = Recorder(fail=True), []
        c = coalescer(send, failures)
        loop = asyncio.get_running_loop()
        results = await (await submit(c, [1, 2, 3], loop.time() + 5))
        assert all(
            isinstance(r, NodeFailure) and r.code == grpc.StatusCode.UNAVAILABLE for r in results
        )
        assert len(failures) == 1 and failures[0].node_id == "n1"
        expired = await (await submit(c, [4], loop.time() - 1))
        assert isinstance(expired[0], NodeFailure)
        assert expired[0].code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert [4] not in send.batches

    asyncio.run(scenario())


@pytest.mark.timeout(10)
def test_quorum_decides_at_needed_and_settles_when_all_replied() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        settled: list[dict[str, int]] = []
        group: QuorumGroup[int] = QuorumGroup(loop.time() + 5)
        quorum = group.quorum(2, lambda q: settled.append(dict(q.ok)))
        replies = {name: quorum.add(name) for name in ("n1", "n2", "n3")}
        waiter = asyncio.ensure_future(group.wait())
        await asyncio.sleep(0)
        replies["n1"](1)
        replies["n2"](NodeFailure("n2", grpc.StatusCode.UNAVAILABLE, "gone"))
        await asyncio.sleep(0)
        assert not waiter.done()
        replies["n3"](3)
        await waiter
        assert quorum.succeeded and settled == [{"n1": 1, "n3": 3}]

        group = QuorumGroup(loop.time() + 0.05)
        late = group.quorum(2)
        late.add("n1")(1)
        late.add("n2")
        await group.wait()  # decided by the deadline, not by n2
        assert not late.succeeded
        assert "1 of 2 required replicas answered" in late.describe("read", b"k", 3)
        assert "n2 (no answer before the deadline)" in late.describe("read", b"k", 3)

    asyncio.run(scenario())


@pytest.mark.timeout(10)
def test_an_item_holding_many_entries_counts_them_against_the_call_and_queue_bounds() -> None:
    """A chunk of a batch's records is one item but many of the node's entries: a call
    carries at most max_items entries, however few items, and the queue bound counts
    entries too (here item n holds n entries)."""

    async def scenario() -> None:
        send, failures = Recorder(), []
        c: Coalescer[int, int] = Coalescer(
            "n1",
            send,
            on_failure=lambda failure, timeout: failures.append(failure),
            max_items=100,
            max_bytes=1 << 20,
            max_in_flight=1,
            call_timeout_s=1.0,
            size_of=lambda item: 1,
            max_pending=150,
            count_of=lambda item: item,
        )
        deadline = asyncio.get_running_loop().time() + 5
        first = await submit(c, [10], deadline)  # leaves at once, alone
        queued = [await submit(c, [n], deadline) for n in (60, 30, 20, 40)]
        refused = await submit(c, [1], deadline)  # 151 entries waiting: over 150
        [shed] = await refused
        assert isinstance(shed, NodeFailure) and shed.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert await first == [100]
        assert [(await q)[0] for q in queued] == [600, 300, 200, 400]
        assert send.batches == [[10], [60, 30], [20, 40]]
        assert not failures

    asyncio.run(scenario())


def timing(
    timeouts: list[float], *, call_timeout_s: float, size_of: Callable[[int], int]
) -> Coalescer[int, int]:
    """A coalescer, one call at a time, whose node answers at once and notes each call's
    timeout in timeouts."""

    async def send(items: list[int], timeout: float) -> list[int]:
        timeouts.append(timeout)
        return items

    return Coalescer(
        "n1",
        send,
        on_failure=lambda failure, timeout: None,
        max_items=100,
        max_bytes=64 << 20,
        max_in_flight=1,
        call_timeout_s=call_timeout_s,
        size_of=size_of,
    )


@pytest.mark.timeout(10)
def test_a_call_gets_a_second_more_per_8_mib_it_carries() -> None:
    """A call of large values is slow, not a node down: it was given node_call_ms alone,
    and a node applying three 8 MiB calls at once on a busy host was marked DOWN."""

    async def scenario() -> None:
        timeouts: list[float] = []
        c = timing(timeouts, call_timeout_s=1.0, size_of=lambda item: item)
        far = asyncio.get_running_loop().time() + 60
        await (await submit(c, [1], far))
        await (await submit(c, [8 << 20, 8 << 20], far))
        await (await submit(c, [8 << 20], asyncio.get_running_loop().time() + 1.5))
        assert timeouts[0] == pytest.approx(1.0, abs=0.01)
        assert timeouts[1] == pytest.approx(3.0, abs=0.01)
        assert timeouts[2] == pytest.approx(1.5, abs=0.05)  # never past the item's deadline

    asyncio.run(scenario())


def test_a_call_waits_no_longer_than_its_latest_deadline_from_when_it_starts() -> None:
    """A call's time is counted when its task starts, not when its items were queued: a
    loop held up in between (a long turn) does not let it outlast its callers."""

    async def scenario() -> list[float]:
        timeouts: list[float] = []
        c = timing(timeouts, call_timeout_s=5.0, size_of=lambda item: 1)
        loop = asyncio.get_running_loop()
        done = await submit(c, [1], loop.time() + 0.5)  # queued; its call's task not started
        time.sleep(0.2)  # this turn holds the loop before the task runs
        assert await done == [1]
        return timeouts

    timeouts = asyncio.run(scenario())
    assert len(timeouts) == 1 and timeouts[0] <= 0.31, timeouts
