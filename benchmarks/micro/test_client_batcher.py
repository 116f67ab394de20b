"""The SDK's cost per coalesced call: 256 tasks calling AsyncBatcher.submit against a send
that answers on the next loop turn (no gRPC), 10,000 calls per round."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from pytest_benchmark.fixture import BenchmarkFixture
from shardkv.client.coalesce import AsyncBatcher, Waiting

CALLS = 10_000
TASKS = 256


async def _send(items: list[int], deadline: float, waiting: Waiting) -> Sequence[int]:
    await asyncio.sleep(0)
    return items


async def _calls() -> int:
    batcher: AsyncBatcher[int, int] = AsyncBatcher(
        _send, key_of=lambda item: b"k", max_batch=1000, max_in_flight=2
    )
    left = CALLS
    answered = 0

    async def caller() -> None:
        nonlocal left, answered
        while left > 0:
            left -= 1
            got = await batcher.submit(1, time.monotonic() + 30)
            answered += got

    await asyncio.gather(*(caller() for _ in range(TASKS)))
    return answered


def test_coalesced_calls(benchmark: BenchmarkFixture) -> None:
    assert benchmark(lambda: asyncio.run(_calls())) >= CALLS
