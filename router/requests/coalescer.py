"""Coalescing: many concurrent items bound for one node travel in one batched call.

A gRPC call costs hundreds of microseconds of CPU while an item inside a batch costs a few
(README, Performance), so the router never pays a call per key per hop. Items queue
here; whenever fewer than ``max_in_flight`` calls are outstanding, everything pending (up
to ``max_items``) leaves in one call, and each item's callback gets its slice of the reply
(a plain call, not a future: no event-loop round trip per item).
A lone item with nothing in flight leaves at once: there are no timers and no waiting for
a batch to fill, so coalescing adds no latency when the router is idle.

The queue is bounded (``max_pending`` items, ``max_pending_bytes``): when a node falls
behind, items beyond the bound fail at once with RESOURCE_EXHAUSTED instead of piling up
in the router's memory until their deadlines pass.

Every item's callback is called exactly once, whatever happens: a call that fails in any
way (an unexpected error included) fails each of its items, and a callback that raises is
logged without keeping the rest of its batch from their answers.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import grpc
from shardkv.common import requestid
from shardkv.serving.tally import SizeHistogram

Item = TypeVar("Item")
Result = TypeVar("Result")

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class NodeFailure:
    """Why an internal call to a node failed; carried as a value so nobody must await it."""

    node_id: str
    code: grpc.StatusCode
    message: str

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"


def node_left(node_id: str) -> NodeFailure:
    """The failure of an item meant for a node that left the topology while its request
    ran (its client is gone)."""
    return NodeFailure(node_id, grpc.StatusCode.UNAVAILABLE, f"node {node_id} left the topology")


# A call may take its timeout and a second more per this many bytes it carries: a node
# writing a call of 1 MiB values (8 MiB a call) beside two others on a busy host takes
# more than a second to apply and fsync it without being down.
CALL_BYTES_PER_S = 8 << 20

# Sends a batch with a timeout in seconds; returns one result per item, in order.
SendBatch = Callable[[list[Item], float], Awaitable[Sequence[Result]]]
# Told of every failed call, with the timeout it had (the health tracker listens).
OnFailure = Callable[[NodeFailure, float], None]
# Receives one item's result, or the NodeFailure of its call; must not raise.
Deliver = Callable[[Result | NodeFailure], None]
# A queued item: (item, deadline, deliver, request id, size of the item, entries it holds).
_Pending = tuple[Item, float, Deliver[Result], str | None, int, int]


class Coalescer(Generic[Item, Result]):
    """Queues items for one node and one kind of call, and sends them in batches."""

    def __init__(
        self,
        node_id: str,
        send: SendBatch[Item, Result],
        *,
        on_failure: OnFailure,
        max_items: int,
        max_bytes: int,
        max_in_flight: int,
        call_timeout_s: float,
        size_of: Callable[[Item], int],
        max_pending: int = 20_000,
        max_pending_bytes: int = 128 << 20,
        resumable: bool = False,
        count_of: Callable[[Item], int] | None = None,
    ) -> None:
        """resumable: send may answer a prefix of a batch (a node that stopped at its byte
        budget); the items answered get their results and the rest go back to the front
        of the queue, to leave in the next call. Otherwise a short answer fails the batch.
        count_of: how many of the node's batch entries an item holds (a chunk of a batch's
        records holds many; None: one each); max_items and max_pending count entries."""
        self._node_id = node_id
        self._resumable = resumable
        self._send = send
        self._on_failure = on_failure
        self._max_items = max_items
        self._max_bytes = max_bytes
        self._max_in_flight = max_in_flight
        self._call_timeout_s = call_timeout_s
        self._size_of = size_of
        self._count_of = count_of
        self._max_pending = max_pending
        self._pending_count = 0
        self._max_pending_bytes = max_pending_bytes
        self._pending_bytes = 0
        # (item, deadline, deliver, request id of the request the item belongs to, its size:
        # measured once, on submit)
        self._pending: deque[_Pending[Item, Result]] = deque()
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()
        # Items per call, read by the metrics endpoint.
        self.batch_sizes = SizeHistogram()

    def submit(self, items: Sequence[tuple[Item, Deliver[Result]]], deadline: float) -> None:
        """Queues items due by deadline (loop time); each one's callback is called exactly
        once, with its result or a NodeFailure. Items submitted together travel together;
        when the queue is full they fail together with RESOURCE_EXHAUSTED."""
        sizes = [self._size_of(item) for item, _ in items]
        size = sum(sizes)
        count_of = self._count_of
        counts = [1] * len(items) if count_of is None else [count_of(item) for item, _ in items]
        count = sum(counts)
        if self._pending and (
            self._pending_count + count > self._max_pending
            or self._pending_bytes + size > self._max_pending_bytes
        ):
            failure = self._failure(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"router overloaded: {self._pending_count} items ({self._pending_bytes} bytes)"
                f" already queued for node {self._node_id} (limits {self._max_pending} items,"
                f" {self._max_pending_bytes} bytes)",
            )
            for _, deliver in items:
                _deliver(deliver, failure)
            return
        self._pending_bytes += size
        self._pending_count += count
        rid = requestid.current.get()
        self._pending.extend(
            (item, deadline, deliver, rid, item_size, item_count)
            for (item, deliver), item_size, item_count in zip(items, sizes, counts, strict=True)
        )
        self._pump()

    async def close(self) -> None:
        """Waits for the calls in flight (their own deadlines bound the wait)."""
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _pump(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending and self._in_flight < self._max_in_flight:
            now = loop.time()
            # What the call needs of its items, gathered in this one pass over them.
            batch: list[_Pending[Item, Result]] = []
            items: list[Item] = []
            rids: list[str | None] = []
            size = count = 0
            latest = now
            while self._pending:
                entry = self._pending[0]
                item_size, item_count = entry[4], entry[5]
                if batch and (
                    size + item_size > self._max_bytes or count + item_count > self._max_items
                ):
                    break
                self._pending.popleft()
                self._pending_bytes -= item_size
                self._pending_count -= item_count
                if entry[1] <= now:
                    expired = self._failure(grpc.StatusCode.DEADLINE_EXCEEDED, "expired in queue")
                    _deliver(entry[2], expired)
                    continue
                batch.append(entry)
                items.append(entry[0])
                rids.append(entry[3])
                size += item_size
                count += item_count
                latest = max(latest, entry[1])
            if not batch:
                continue
            self._in_flight += 1
            self.batch_sizes.observe(count)
            # One call serves items of several requests: it may run until the latest of
            # their deadlines (each request stops waiting at its own), never beyond the
            # call timeout (node_call_ms for reads; writes have none: node_client.py) plus
            # the time its bytes may take (a call of large values is slow, not a node that
            # hangs).
            limit = self._call_timeout_s + size / CALL_BYTES_PER_S
            call = self._call(batch, items, limit, latest, requestid.join(rids))
            self._tasks.add(loop.create_task(call))

    async def _call(
        self,
        batch: list[_Pending[Item, Result]],
        items: list[Item],
        limit: float,
        latest: float,
        rid: str | None,
    ) -> None:
        """Sends items (batch's) for at most limit seconds and never past latest (loop
        time, counted from when the task starts), under rid: the ids of the requests the
        call serves, in this task's own context."""
        timeout = min(limit, latest - asyncio.get_running_loop().time())
        results: Sequence[Result | NodeFailure]
        try:
            requestid.current.set(rid)
            results = await self._send(items, timeout)
            partial = self._resumable and 0 < len(results) < len(batch)
            if len(results) != len(batch) and not partial:
                raise _ShortReply(len(results), len(batch))
        except asyncio.CancelledError:
            cancelled = self._failure(grpc.StatusCode.CANCELLED, "router stopping")
            for entry in batch:
                _deliver(entry[2], cancelled)
            raise
        except Exception as err:
            failure = self._failure_of(err)
            if isinstance(err, (grpc.RpcError, _ShortReply)):
                self._on_failure(failure, timeout)
            else:
                log.error("batch to %s failed: %r", self._node_id, err, exc_info=err)
            results = [failure] * len(batch)
        finally:
            self._in_flight -= 1
            # Its last step (nothing below waits): no done callback, a loop handle a call.
            self._tasks.discard(asyncio.current_task())
        rest = batch[len(results) :]  # a resumable answer's unanswered items leave next
        if rest:
            self._pending.extendleft(reversed(rest))
            self._pending_bytes += sum(entry[4] for entry in rest)
            self._pending_count += sum(entry[5] for entry in rest)
        for entry, result in zip(batch, results, strict=False):
            try:  # inline rather than _deliver: this runs for every item
                entry[2](result)
            except Exception:
                log.exception("a reply callback raised; the other items still get theirs")
        self._pump()

    def _failure_of(self, err: Exception) -> NodeFailure:
        if isinstance(err, grpc.aio.AioRpcError):
            return self._failure(err.code(), err.details() or "")
        if isinstance(err, _ShortReply):
            return self._failure(grpc.StatusCode.INTERNAL, str(err))
        return self._failure(grpc.StatusCode.INTERNAL, f"router error: {type(err).__name__}")

    def _failure(self, code: grpc.StatusCode, message: str) -> NodeFailure:
        return NodeFailure(self._node_id, code, message)


def _deliver(deliver: Deliver[Result], result: Result | NodeFailure) -> None:
    """Calls one item's callback; a callback that raises is a bug, logged, and must not
    keep the other items of its batch from their answers."""
    try:
        deliver(result)
    except Exception:
        log.exception("a reply callback raised; the other items still get theirs")


class _ShortReply(Exception):
    """A node answered a batch with the wrong number of results."""

    def __init__(self, got: int, sent: int) -> None:
        super().__init__(f"node answered {got} results for {sent} items")
