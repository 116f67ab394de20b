"""Which items of a coalesced batch a retry may carry (client.coalesce): only those whose
callers still wait, and nothing when none does. The integration test with real processes
is tests/integration/test_client_abandoned_retry.py."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence

import pytest
from shardkv.client import DeadlineExceeded
from shardkv.client.coalesce import AsyncBatcher, Awaited, Waiting
from shardkv.client.coalesce_threads import ThreadBatcher


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
