"""Crash safety of the store: SIGKILL shardd in the middle of heavy concurrent writes, again
and again on the same data directory. Every restart must reopen the store, and every write
acknowledged before any of the kills must still be there (a node answers a write once the
journal frame holding it is fsync'd; each start replays what LMDB did not take yet)."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest
from harness import shardd_proc
from shardkv.client import AsyncClient, RetryPolicy

from faults.checker import check
from faults.cluster import read_records
from faults.history import History
from faults.verdict import Final

ITERATIONS = 10
WRITERS = 48
MIN_ACKED = 50


def _acked(history: History) -> int:
    return sum(op.outcome == "ok" for op in history.ops)


async def _write_until_killed(
    address: str,
    kill: object,
    history: History,
    round_: int,
    rng: random.Random,
    value_bytes: tuple[int, int],
) -> None:
    """WRITERS tasks put (and sometimes delete) their own keys until the node is killed."""
    stop = asyncio.Event()

    async def writer(index: int) -> None:
        name = f"r{round_}w{index}"
        seq = 0
        while not stop.is_set():
            seq += 1
            key = f"crash/{name}/{seq % 40}".encode()
            if seq % 9 == 0:
                await history.delete(name, key, client.delete(key))
            else:
                value = f"{name}-{seq}-".encode() + b"x" * rng.randrange(*value_bytes)
                await history.put(name, key, value, client.put(key, value))

    # One attempt per call: after the kill every call fails at once (unknown outcome).
    # The kill waits for MIN_ACKED acknowledgements of this round (however slow the machine),
    # then lands at a random moment of the writes that follow.
    acked_before = _acked(history)
    async with AsyncClient(address, timeout=2.0, retry=RetryPolicy(max_attempts=1)) as client:
        tasks = [asyncio.create_task(writer(i)) for i in range(WRITERS)]
        async with asyncio.timeout(60):
            while _acked(history) < acked_before + MIN_ACKED:
                await asyncio.sleep(0.01)
        await asyncio.sleep(rng.uniform(0.0, 0.5))
        await asyncio.to_thread(kill)  # type: ignore[arg-type]
        stop.set()
        await asyncio.gather(*tasks)


# Small values stay in the journal between kills (replayed at each start); large ones fill
# its 16 MiB every few hundred writes, so kills also land while a checkpoint commits the
# journal into LMDB (shardkv.shardd.write_ahead).
@pytest.mark.parametrize("value_bytes", [(1, 4096), (16384, 65536)], ids=["small", "large"])
@pytest.mark.timeout(90)
def test_sigkill_in_heavy_writes_never_loses_an_acknowledged_write(
    tmp_path: Path, value_bytes: tuple[int, int]
) -> None:
    node = shardd_proc(tmp_path, "n1")
    history = History()
    rng = random.Random(11)
    try:
        for round_ in range(ITERATIONS):
            node.start()  # waits until SERVING: the store reopened after the previous kill
            acked_before = _acked(history)
            asyncio.run(
                _write_until_killed(node.address, node.kill, history, round_, rng, value_bytes)
            )
            assert node.popen is not None and node.popen.returncode == -9
            assert _acked(history) >= acked_before + MIN_ACKED, (
                f"round {round_}: too few writes were acknowledged before the kill"
            )
        node.start()
        keys = history.keys()
        final = {
            key: Final.of(record)
            for key, record in zip(keys, read_records(node.address, keys), strict=True)
        }
        verdict = check(history.ops, final)
        print(f"[crash loop] kills={ITERATIONS} {verdict.summary()}")
        assert not verdict.problems(), "\n".join(verdict.problems())
        assert "cannot start" not in node.log()
    finally:
        node.stop()
