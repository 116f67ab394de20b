"""Where a node's commits run (shardkv.shardd.commit), on real fsync'd LMDB stores: an idle
node's commit on the event loop, commits under load on the commit thread (still grouped),
never on the loop while a job runs on the thread (the fence's rule), and none on the loop
for a while after a slow one."""

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


@pytest.mark.timeout(60)
def test_an_idle_nodes_writes_commit_on_the_loop_and_are_durable_when_answered(
    tmp_path: Path,
) -> None:
    path = tmp_path / "db"
    store = Store(path)  # durable: every commit is fsync'd
    keys = [b"idle-%02d" % i for i in range(5)]

    async def main() -> GroupCommitter:
        # However slow this machine's fsync, no commit counts as slow here.
        committer = GroupCommitter(store, inline_max_s=60.0)
        for key in keys:
            assert await committer.apply([rec(key)]) == [True]
            # Answered means committed: visible at once, from this thread.
            assert store.read([key])[0] == rec(key)
            await asyncio.sleep(0.01)  # idle again before the next write
        await committer.close()
        return committer

    committer = asyncio.run(main())
    store.close()
    assert committer.inline_commits == committer.commits == len(keys)
    reopened = Store(path)
    try:
        assert reopened.read(keys) == [rec(key) for key in keys]
    finally:
        reopened.close()


class WatchedStore(Store):
    """A real store that notes the thread each commit ran on."""

    threads: set[int]

    def apply(self, *args: Any, **kwargs: Any) -> list[bool | None]:
        self.threads.add(threading.get_ident())
        return super().apply(*args, **kwargs)


@pytest.mark.timeout(60)
def test_writes_under_load_share_commits_on_the_commit_thread(tmp_path: Path) -> None:
    store = WatchedStore(tmp_path / "db")
    store.threads = set()
    writers, per_writer = 32, 10

    async def main() -> GroupCommitter:
        # Idle means half a second here, so that a busy machine's scheduling gaps between
        # commits never count as idle: only the first commit may run on the loop.
        committer = GroupCommitter(store, inline_idle_s=0.5)

        async def writer(w: int) -> None:
            for i in range(per_writer):
                key = b"w%02d-%02d" % (w, i)
                assert await committer.apply([rec(key)]) == [True]

        await asyncio.gather(*(writer(w) for w in range(writers)))
        await committer.close()
        return committer

    try:
        committer = asyncio.run(main())
        total = writers * per_writer
        assert committer.items == total
        assert committer.commits <= total // 8, f"{committer.commits} commits for {total}"
        assert committer.inline_commits <= 1
        assert store.threads - {threading.get_ident()}, "no commit ran on the commit thread"
        assert store.stats().entries == total
    finally:
        store.close()


@pytest.mark.timeout(30)
def test_no_commit_runs_on_the_loop_while_a_job_runs_on_the_commit_thread(
    tmp_path: Path,
) -> None:
    """A write routed under epoch 3 that arrives while a Fence to 4 runs on the commit
    thread commits after it, so the fence refuses it: had it committed on the idle loop
    meanwhile, the Fence would be answered with an epoch-3 write committed after it."""
    store = Store(tmp_path / "db", sync=False)
    fence = Fence(store, "n1")
    release = threading.Event()

    def slow_raise(epoch: int) -> int:
        release.wait(10)
        return fence.raise_to(epoch)

    async def main() -> GroupCommitter:
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
        return committer

    try:
        committer = asyncio.run(main())
        assert committer.inline_commits == 0
        assert store.read([b"late"]) == [None]
    finally:
        store.close()


@pytest.mark.timeout(30)
def test_after_a_slow_commit_commits_stay_off_the_loop(tmp_path: Path) -> None:
    store = Store(tmp_path / "db", sync=False)

    async def main(committer: GroupCommitter, prefix: bytes) -> None:
        for i in range(4):
            assert await committer.apply([rec(prefix + b"%d" % i)]) == [True]
            await asyncio.sleep(0.01)
        await committer.close()

    try:
        # Every commit counts as slow: the first ran on the loop, the rest on the thread.
        slow = GroupCommitter(store, inline_max_s=0.0)
        asyncio.run(main(slow, b"slow-"))
        assert (slow.inline_commits, slow.commits) == (1, 4)
        never = GroupCommitter(store, inline_idle_s=None)
        asyncio.run(main(never, b"never-"))
        assert (never.inline_commits, never.commits) == (0, 4)
    finally:
        store.close()
