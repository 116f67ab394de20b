"""RouterEpoch.catch_up (router/membership/fencing.py), on the servers' loop: a request a
node refused for an old epoch waits for this router to serve a newer one, reloading the
topology meanwhile, and leaves no reload running that nobody waits for."""

from __future__ import annotations

import asyncio

from fake_nodes import run
from shardkv.router.membership.fencing import RouterEpoch


class Store:
    """A topology store whose reloads take `takes` seconds and adopt `epoch` (None: the
    store holds nothing newer)."""

    def __init__(self, epochs: RouterEpoch, epoch: int | None, takes: float = 0.01) -> None:
        self._epochs, self._epoch, self._takes = epochs, epoch, takes
        self.started = self.finished = 0

    async def reload(self) -> None:
        self.started += 1
        await asyncio.sleep(self._takes)
        if self._epoch is not None:
            self._epochs.epoch = self._epoch
        self.finished += 1


def test_a_newer_epoch_in_the_store_is_caught_up_with_one_reload() -> None:
    async def scenario() -> None:
        epochs = RouterEpoch(3)
        store = Store(epochs, 4)
        epochs.bind(store.reload)
        epochs.refused("n1", 4)
        assert await epochs.catch_up(3, 1.0)
        assert epochs.epoch == 4 and (store.started, store.finished) == (1, 1)

    run(scenario)


def test_no_reload_starts_once_the_time_is_spent() -> None:
    async def scenario() -> None:
        epochs = RouterEpoch(3)
        store = Store(epochs, 4)
        epochs.bind(store.reload)
        epochs.fenced = 4
        assert not await epochs.catch_up(3, 0.0)
        await asyncio.sleep(0.05)  # a reload started would have run by now
        assert store.started == 0

    run(scenario)


def test_a_store_with_nothing_newer_starts_no_reload_as_it_gives_up() -> None:
    """catch_up polls the store until its time is spent; it starts no reload in its last
    turn (one could still be running that began earlier, with time left to wait for it)."""

    async def scenario() -> None:
        epochs = RouterEpoch(3)
        store = Store(epochs, None, takes=0.03)
        epochs.bind(store.reload)
        epochs.fenced = 4
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert not await epochs.catch_up(3, 0.35)
        assert loop.time() - started < 0.45
        ran = store.started
        await asyncio.sleep(0.1)  # a reload started as it gave up would have run by now
        assert ran >= 2 and store.started == ran

    run(scenario)
