"""The node's fence on a real LMDB store, in process: durable, raised only by raise_to,
checked per write inside the group commit, purges only at the fenced epoch."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from shardkv.common.limits import LimitExceeded
from shardkv.router.requests import node_calls
from shardkv.shardd import fence as node_fence
from shardkv.shardd.commit import GroupCommitter
from shardkv.shardd.fence import Fence, FenceLowered, StaleEpoch, epoch_of
from shardkv.shardd.records import Record
from shardkv.shardd.store import Store


def _record(key: bytes) -> Record:
    return Record(key, b"v", 1 << 40, 1, False)


@pytest.mark.timeout(30)
def test_the_fence_is_durable_and_rises_only(tmp_path: Path) -> None:
    store = Store(tmp_path)
    fence = Fence(store, "n1")
    assert fence.epoch == 0
    assert fence.raise_to(7) == 7
    assert fence.raise_to(7) == 7  # the same epoch again: a no-op
    with pytest.raises(FenceLowered, match=r"epoch 6 refused.*fenced at epoch 7"):
        fence.raise_to(6)
    with pytest.raises(LimitExceeded):
        fence.raise_to(node_fence.MAX_EPOCH + 1)
    store.close()
    assert Fence(Store(tmp_path), "n1").epoch == 7


@pytest.mark.timeout(30)
def test_a_commit_refuses_only_the_writes_routed_under_an_older_epoch(tmp_path: Path) -> None:
    async def main() -> None:
        store = Store(tmp_path, sync=False)
        fence = Fence(store, "n1")
        committer = GroupCommitter(store, fence=fence)
        await committer.run(fence.raise_to, 4)
        results = await asyncio.gather(
            committer.apply([_record(b"old")], epoch=3),
            committer.apply([_record(b"new")], epoch=5),
            committer.apply([_record(b"tool")]),  # no epoch: not router traffic
            return_exceptions=True,
        )
        stale, new, tool = results
        assert isinstance(stale, StaleEpoch) and stale.fence == 4, stale
        assert "epoch 3" in str(stale) and "epoch 4" in str(stale)
        assert new == [True] and tool == [True]
        assert store.read([b"old", b"new"])[0] is None
        await committer.close()
        store.close()

    asyncio.run(main())


@pytest.mark.timeout(30)
def test_purges_run_only_at_the_fenced_epoch(tmp_path: Path) -> None:
    store = Store(tmp_path, sync=False)
    fence = Fence(store, "n1")
    fence.raise_to(5)
    fence.admit_purge(5)
    fence.admit_purge(None)
    for epoch in (4, 6, 1 << 61):
        with pytest.raises(StaleEpoch):
            fence.admit_purge(epoch)
    fence.admit(1 << 61, "a forged huge epoch")  # admitted, and the fence stays
    assert fence.epoch == 5
    store.close()


@pytest.mark.timeout(30)
def test_the_epoch_metadata() -> None:
    assert epoch_of([("authorization", "x"), ("shardkv-epoch", "12")]) == 12
    assert epoch_of([("authorization", "x")]) is None
    for bad in ("-1", "1e3", str(node_fence.MAX_EPOCH + 1), "x"):
        with pytest.raises(LimitExceeded):
            epoch_of([("shardkv-epoch", bad)])
    # The router sends and reads the keys the node defines.
    assert (node_calls.EPOCH_KEY, node_calls.FENCE_KEY) == (
        node_fence.EPOCH_KEY,
        node_fence.FENCE_KEY,
    )
