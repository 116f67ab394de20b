"""Drives shardkv (a router or a lone shardd) through the SDK's `AsyncClient`.

Single-key calls go through `get`/`put`, so concurrent calls are coalesced by the SDK
exactly as users get them; batches go through `get_many`/`put_many` (one BatchGet or
BatchWrite of up to 1000 keys). The same driver asks a router or a shardd directly: both
serve the public KV service.
"""

from __future__ import annotations

from collections.abc import Sequence

from shardkv.client import AsyncClient
from shardkv.common.limits import DEFAULT_LIMITS

# Generous: a benchmark cell that overloads the system should measure slow answers, not
# count client-side timeouts.
CALL_TIMEOUT_S = 30.0


class ShardkvDriver:
    """The load generator's interface (see load.Driver) over `AsyncClient`.

    Create it inside the event loop that drives it (AsyncClient's rule).
    """

    def __init__(self, address: str) -> None:
        self.max_batch = DEFAULT_LIMITS.max_batch_items
        self._client = AsyncClient(address, timeout=CALL_TIMEOUT_S)

    async def get(self, key: bytes) -> bool:
        return await self._client.get(key) is not None

    async def put(self, key: bytes, value: bytes) -> None:
        await self._client.put(key, value)

    async def batch_get(self, keys: Sequence[bytes]) -> int:
        return len(await self._client.get_many(keys))

    async def batch_put(self, items: Sequence[tuple[bytes, bytes]]) -> None:
        await self._client.put_many(dict(items))

    async def close(self) -> None:
        await self._client.close()
