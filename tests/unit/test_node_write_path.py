"""Where a node's commits run (shardkv.shardd.commit), on real fsync'd LMDB stores: every
commit on the commit thread, never on the event loop's (an fsync there would stall reads
and health checks for as long as the disk stalls), answered only once durable, and after
a Fence queued before it on the same thread (test_group_commit.py: grouped under load)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest
from shardkv.shardd.commit import GroupCommitter
from shardkv.shardd.fence import Fence, StaleEpoch
from shardkv.shardd.records import Record
from shardkv.shardd.store import Store


def rec(key: bytes, version: int = 1) -> Record:
    return Record(key, b"v-" + key, version, 7)


class WatchedStore(Store):
    """A real store that notes the thread each commit ran on."""

    threads: set[int]

    def apply(self, *args: Any, **kwargs: Any) -> list[bool | None]:
        self.threads.add(threading.get_ident())
        return super().apply(*args, **kwargs)


@pytest.mark.timeout(60)
def test_an_idle_nodes_writes_commit_off_the_loop_and_are_durable_when_answered(
    tmp_path: Path,
) -> None:
    path = tmp_path / "db"
    store = WatchedStore(path)  # durable: every commit is fsync'd
    store.threads = set()
    keys = [b"idle-%02d" % i for i in range(5)]

    async def main() -> None:
        committer = GroupCommitter(store)
        for key in keys:
            assert await committer.apply([rec(key)]) == [True]
            # Answered means committed: visible at once, from the loop's thread.
            assert store.read([key])[0] == rec(key)
            await asyncio.sleep(0.01)  # idle again before the next write
        await committer.close()

    asyncio.run(main())
    store.close()
    assert len(store.threads) == 1 and threading.get_ident() not in store.threads
    reopened = Store(path)
    try:
        assert reopened.read(keys) == [rec(key) for key in keys]
    finally:
        reopened.close()


@pytest.mark.timeout(30)
def test_a_write_queued_while_a_fence_runs_on_the_commit_thread_commits_after_it(
    tmp_path: Path,
) -> None:
    """A write routed under epoch 3 that arrives while a Fence to 4 runs on the commit
    thread commits after it, so the fence refuses it: a Fence answered means no write of
    a lower epoch commits after it."""
    store = Store(tmp_path / "db", sync=False)
    fence = Fence(store, "n1")
    release = threading.Event()

    def slow_raise(epoch: int) -> int:
        release.wait(10)
        return fence.raise_to(epoch)

    async def main() -> None:
        committer = GroupCommitter(store, fence=fence)
        raised = asyncio.ensure_future(committer.run(slow_raise, 4))
        await asyncio.sleep(0.01)  # the job runs on the thread; the committer is idle
        write = asyncio.ensure_future(committer.apply([rec(b"late")], epoch=3))
        await asyncio.sleep(0.01)
        asyncio.get_running_loop().call_soon(release.set)
        assert await raised == 4
        with pytest.raises(StaleEpoch):
            await write
        await committer.close()

    try:
        asyncio.run(main())
        assert store.read([b"late"]) == [None]
    finally:
        store.close()
