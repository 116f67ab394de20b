"""Group commit over a real, fsync'd LMDB store: batching, acknowledgement, error isolation."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from shardkv.common.limits import LimitExceeded
from shardkv.shardd.commit import CommitterClosed, GroupCommitter
from shardkv.shardd.records import Hint, Record
from shardkv.shardd.store import Store, StoreFull, TooManyTargets


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


@pytest.mark.timeout(30)
def test_a_failed_request_fails_alone_and_the_loop_goes_on(tmp_path: Path) -> None:
    """A request the store refuses (a key over the limit) shares its commit with others:
    it fails alone, the others are stored and acknowledged, and the loop goes on."""
    store = Store(tmp_path / "db", sync=False)

    async def main() -> GroupCommitter:
        committer = GroupCommitter(store)
        assert await committer.apply([rec(b"before")]) == [True]
        # Submitted in the same tick, these share one commit, which the bad key fails.
        bad = committer.apply([rec(b"x" * 600)])
        bystander = committer.apply([rec(b"bystander")])
        failed, stored = await asyncio.gather(bad, bystander, return_exceptions=True)
        assert isinstance(failed, LimitExceeded), failed
        assert stored == [True]
        assert await committer.apply([rec(b"after")]) == [True]
        await committer.close()
        return committer

    try:
        committer = asyncio.run(main())
        assert committer.commits == 3  # the failed attempts hold nothing and count not
        assert [r is not None for r in store.read([b"before", b"bystander", b"after"])] == [
            True,
            True,
            True,
        ]
    finally:
        store.close()


@pytest.mark.timeout(30)
def test_too_many_hint_targets_fail_only_the_request_that_adds_one_too_many(
    tmp_path: Path,
) -> None:
    """Two requests that each fit the target limit alone share a commit with a plain
    write: the first hint is parked, the second fails TooManyTargets, the plain write and
    the second request's neighbours are stored (before, all three failed)."""
    store = Store(tmp_path / "db", sync=False, max_targets=1)

    async def main() -> list[object]:
        committer = GroupCommitter(store)
        results = await asyncio.gather(
            committer.apply([rec(b"a")], [Hint("n1", rec(b"ha"))]),
            committer.apply([rec(b"b")], [Hint("n2", rec(b"hb"))]),
            committer.apply([rec(b"plain")]),
            return_exceptions=True,
        )
        await committer.close()
        return list(results)

    try:
        first, second, plain = asyncio.run(main())
        assert first == [True] and plain == [True], (first, plain)
        assert isinstance(second, TooManyTargets), second
        assert [r is not None for r in store.read([b"a", b"b", b"plain"])] == [True, False, True]
        assert store.hint_summary() == {"n1": 1}
    finally:
        store.close()


@pytest.mark.timeout(30)
def test_a_request_too_big_for_a_full_store_fails_alone(tmp_path: Path) -> None:
    """A 1-byte write sharing a commit with a write the full map cannot hold is stored."""
    store = Store(tmp_path / "db", sync=False, map_size=1 << 20, max_map_size=1 << 20)

    async def main() -> list[object]:
        committer = GroupCommitter(store)
        assert await committer.apply([rec(b"fill", b"x" * 300_000)]) == [True]
        results = await asyncio.gather(
            committer.apply([rec(b"small-1", b"s")]),
            committer.apply([rec(b"big", b"y" * 900_000)]),
            committer.apply([rec(b"small-2", b"s")]),
            return_exceptions=True,
        )
        await committer.close()
        return list(results)

    try:
        small_1, big, small_2 = asyncio.run(main())
        assert isinstance(big, StoreFull), big
        assert small_1 == [True] and small_2 == [True], (small_1, small_2)
        assert [r is not None for r in store.read([b"small-1", b"big", b"small-2"])] == [
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
