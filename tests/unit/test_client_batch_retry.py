"""Which items of a coalesced batch a retry may carry (client.coalesce): only those whose
callers still wait, and nothing when none does; and when a write's error says it may
have been stored (base.Attempts). The integration tests with real processes are
tests/integration/test_client_abandoned_retry.py and test_client_router_faults.py."""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Sequence

import grpc
import pytest
from shardkv.client import DeadlineExceeded
from shardkv.client.base import Attempts
from shardkv.client.coalesce import AsyncBatcher, Awaited, Waiting
from shardkv.client.coalesce_threads import ThreadBatcher
from shardkv.client.errors import from_rpc_error


def test_a_retry_carries_only_the_items_still_awaited() -> None:
    flags = [True, False, True]
    batch = Awaited([b"a", b"b", b"c"], lambda: flags, key_of=bytes)
    again = batch.retry_with(list)
    assert again() == [b"a", b"c"]
    outcomes = batch.outcomes(["A", "C"])
    assert outcomes[0] == "A" and outcomes[2] == "C"
    assert isinstance(outcomes[1], DeadlineExceeded) and outcomes[1].keys == (b"b",)
    flags[0] = flags[2] = False
    assert again() is None, "nobody waits: no retry"


def test_without_callers_to_ask_every_item_is_retried() -> None:
    batch = Awaited([b"a", b"b"], None, key_of=bytes)
    assert batch.retry_with(list)() == [b"a", b"b"]
    assert batch.outcomes([1, 2]) == [1, 2]


def test_thread_batch_sees_a_follower_give_up() -> None:
    seen: list[Sequence[bool]] = []
    started = threading.Event()

    def send(items: list[bytes], deadline: float, waiting: Waiting) -> list[bytes]:
        started.set()
        seen.append(waiting())  # both callers wait
        time.sleep(0.5)  # meanwhile the follower's time runs out
        seen.append(waiting())
        return items

    batcher: ThreadBatcher[bytes, bytes] = ThreadBatcher(
        send, key_of=bytes, max_batch=10, max_in_flight=1
    )
    blocker = threading.Thread(target=batcher.submit, args=(b"first", time.monotonic() + 5))
    blocker.start()
    started.wait(5)
    # Queued behind the first batch, then led by "patient" with "hasty" as a follower.
    patient = threading.Thread(target=batcher.submit, args=(b"patient", time.monotonic() + 5))
    patient.start()
    time.sleep(0.05)
    with pytest.raises(DeadlineExceeded):
        batcher.submit(b"hasty", time.monotonic() + 0.8)
    blocker.join(5)
    patient.join(5)
    assert seen[2:] == [[True, True], [True, False]]


def test_async_batch_sees_a_caller_give_up() -> None:
    seen: list[Sequence[bool]] = []

    async def send(items: list[bytes], deadline: float, waiting: Waiting) -> list[bytes]:
        seen.append(waiting())
        await asyncio.sleep(0.3)
        seen.append(waiting())
        return items

    async def scenario() -> None:
        batcher: AsyncBatcher[bytes, bytes] = AsyncBatcher(
            send, key_of=bytes, max_batch=10, max_in_flight=1
        )
        patient = asyncio.ensure_future(batcher.submit(b"patient", time.monotonic() + 5))
        with pytest.raises(DeadlineExceeded):
            await batcher.submit(b"hasty", time.monotonic() + 0.1)
        assert await patient == b"patient"

    asyncio.run(scenario())
    # "hasty" was queued first ("patient" starts only at the await), so it is item 0.
    assert seen == [[True, True], [False, True]]


class _Failed(grpc.RpcError):
    """A failed attempt's error, as gRPC (or a frame) raises it."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


def test_a_write_says_it_may_be_stored_after_an_attempt_that_was_sent() -> None:
    unavailable, refused = grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses"
    never_sent = [
        _Failed(unavailable, f"{refused}; last error: Connection refused"),
        _Failed(unavailable, "router r1: server stopping; the frame was not read"),
        _Failed(grpc.StatusCode.UNAUTHENTICATED, "bad token"),
    ]
    for err in never_sent:  # and reads never say so
        for attempts in (Attempts(math.inf, write=True), Attempts(math.inf)):
            attempts.failed("r1", err)
            assert attempts.final(from_rpc_error(err)).details == err.details()
    lost = _Failed(unavailable, "Stream removed (Socket closed)")
    last = _Failed(unavailable, f"{refused}; last error: Connection refused")
    attempts = Attempts(math.inf, write=True)
    for err in (lost, last):
        attempts.failed("r1", err)
    error = attempts.final(from_rpc_error(last, target="r1"))
    assert error.details.startswith(refused) and error.__cause__ is lost
    assert "the outcome is unknown" in error.details and "Socket closed" in error.details
    timed_out = Attempts(math.inf, write=True)
    timed_out.failed("r1", _Failed(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"))
    assert timed_out.sent is not None
