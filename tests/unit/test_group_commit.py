"""Group commit over a real, fsync'd LMDB store: batching, acknowledgement, error isolation."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from shardkv.common.limits import LimitExceeded
from shardkv.shardd.commit import CommitterClosed, GroupCommitter
from shardkv.shardd.records import Hint, Record
from shardkv.shardd.store import Store, StoreFull


def rec(key: bytes, value: bytes = b"v", version: int = 1) -> Record:
    return Record(key, value, version, 7)


@pytest.mark.timeout(60)
def test_64_concurrent_writers_share_commits_and_every_ack_is_readable(tmp_path: Path) -> None:
    store = Store(tmp_path / "db")  # durable: every commit is fsync'd
    writers, per_writer = 64, 10

    async def main() -> GroupCommitter:
        committer = GroupCommitter(store)

        async def writer(w: int) -> None:
            for i in range(per_writer):
                key = b"w%02d-%02d" % (w, i)
                assert await committer.apply([rec(key, key)]) == [True]
                # Acknowledged means committed: the write is visible at once.
                assert store.read([key])[0] == rec(key, key)

        await asyncio.gather(*(writer(w) for w in range(writers)))
        await committer.close()
        return committer

    try:
        committer = asyncio.run(main())
        total = writers * per_writer
        assert committer.items == total
        assert committer.commits <= total // 8, f"{committer.commits} commits for {total} writes"
        assert store.stats().entries == total
    finally:
        store.close()


def test_each_caller_gets_its_own_slice_of_results(tmp_path: Path) -> None:
    store = Store(tmp_path / "db", sync=False)

    async def main() -> list[list[bool]]:
        committer = GroupCommitter(store)
        store.apply([rec(b"b", version=5)])
        results = await asyncio.gather(
            committer.apply([rec(b"a", version=2), rec(b"b", version=2)]),
            committer.apply([], [Hint("n2", rec(b"h"))]),
            committer.apply([rec(b"b", version=9), rec(b"c"), rec(b"d")]),
        )
        assert committer.commits == 1
        await committer.close()
        return list(results)

    try:
        assert asyncio.run(main()) == [[True, False], [], [True, True, True]]
        assert store.hint_summary() == {"n2": 1}
    finally:
        store.close()


def test_a_failed_commit_fails_only_its_callers_and_the_loop_goes_on(tmp_path: Path) -> None:
    store = Store(tmp_path / "db", sync=False)

    async def main() -> GroupCommitter:
        committer = GroupCommitter(store)
        assert await committer.apply([rec(b"before")]) == [True]
        # Submitted in the same tick, these two share one commit, which the bad key fails.
        bad = committer.apply([rec(b"x" * 600)])
        bystander = committer.apply([rec(b"bystander")])
        failed = await asyncio.gather(bad, bystander, return_exceptions=True)
        assert all(isinstance(result, LimitExceeded) for result in failed), failed
        assert await committer.apply([rec(b"after")]) == [True]
        await committer.close()
        return committer

    try:
        committer = asyncio.run(main())
        assert committer.commits == 3
        assert [r is not None for r in store.read([b"before", b"bystander", b"after"])] == [
            True,
            False,
            True,
        ]
    finally:
        store.close()


def test_store_full_fails_writes_but_earlier_acks_stay_readable(tmp_path: Path) -> None:
    store = Store(tmp_path / "db", sync=False, map_size=64 << 10, max_map_size=256 << 10)

    async def main() -> list[bytes]:
        committer = GroupCommitter(store)
        acknowledged: list[bytes] = []
        with pytest.raises(StoreFull):
            for i in range(500):
                key = b"k%03d" % i
                await committer.apply([rec(key, b"x" * 2000)])
                acknowledged.append(key)
        await committer.close()
        return acknowledged

    try:
        acknowledged = asyncio.run(main())
        assert acknowledged and all(r is not None for r in store.read(acknowledged))
    finally:
        store.close()


def test_close_commits_pending_writes_then_refuses_new_ones(tmp_path: Path) -> None:
    path = tmp_path / "db"
    store = Store(path, sync=False)

    async def main() -> None:
        committer = GroupCommitter(store)
        pending = [asyncio.ensure_future(committer.apply([rec(b"k%d" % i)])) for i in range(20)]
        await asyncio.sleep(0)  # queued, not yet committed
        await committer.close()
        assert await asyncio.gather(*pending) == [[True]] * 20
        with pytest.raises(CommitterClosed):
            await committer.apply([rec(b"late")])

    try:
        asyncio.run(main())
    finally:
        store.close()
    reopened = Store(path)
    try:
        assert reopened.stats().entries == 20
    finally:
        reopened.close()


@pytest.mark.timeout(30)
def test_a_caller_that_gives_up_leaves_its_write_queued_and_the_loop_serving(
    tmp_path: Path,
) -> None:
    """A write whose caller timed out (cancelled while its commit runs) is still committed,
    and answering the cancelled caller breaks nothing for the callers after it."""
    store = Store(tmp_path / "db")

    async def main() -> None:
        committer = GroupCommitter(store)
        first = asyncio.create_task(committer.apply([rec(b"first")]))
        await asyncio.sleep(0)  # queued: the commit loop has it
        gave_up = asyncio.create_task(committer.apply([rec(b"gave-up")]))
        await asyncio.sleep(0)
        gave_up.cancel()
        assert await first == [True]
        with pytest.raises(asyncio.CancelledError):
            await gave_up
        assert await committer.apply([rec(b"after")]) == [True]
        await committer.close()

    try:
        asyncio.run(main())
        assert [r and r.key for r in store.read([b"first", b"gave-up", b"after"])] == [
            b"first",
            b"gave-up",
            b"after",
        ]
    finally:
        store.close()
