"""A bounded concurrent workload through the SDK that records every operation in a History.

Workers pick keys from a small set (so writes to one key overlap and overwrite each
other), put values no one else writes (worker and sequence number: a read names the write
it saw), delete now and then, and read. A worker finishes its current operation when told
to stop, so no operation is left out of the history. The fault (a blocking function, run
on a thread) happens while the workers run; they keep going for a while after it healed.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from shardkv.client import AsyncClient
from shardkv.common.hlc import writer_number

from faults.checker import WriterOf
from faults.history import History, Op


@dataclass(frozen=True, slots=True)
class Workload:
    """The shape of the load: how many keys and workers, which mix, how patient."""

    keys: int = 40
    workers: int = 12
    put_share: float = 0.5
    delete_share: float = 0.1
    # SDK timeout per operation; a timed-out operation is recorded as unknown.
    timeout_s: float = 3.0
    # Pause between a worker's operations: leaves CPU for the servers on a 2-core machine.
    think_s: float = 0.003
    prefix: bytes = b"w/"

    def key(self, index: int) -> bytes:
        return self.prefix + b"%03d" % index


async def _worker(
    name: str,
    client: AsyncClient,
    spec: Workload,
    history: History,
    stop: asyncio.Event,
    rng: random.Random,
) -> None:
    seq = 0
    while not stop.is_set():
        key = spec.key(rng.randrange(spec.keys))
        roll = rng.random()
        if roll < spec.put_share:
            seq += 1
            value = f"{name}-{seq}".encode()
            await history.put(name, key, value, client.put(key, value))
        elif roll < spec.put_share + spec.delete_share:
            await history.delete(name, key, client.delete(key))
        else:
            await history.get(name, key, client.get_record(key))
        await asyncio.sleep(spec.think_s * rng.random() * 2)


def client_of(op: Op) -> str:
    """The client a workload op went through ("c0" for worker "c0w3")."""
    return op.worker.partition("w")[0]


def writers(router_ids: Sequence[str]) -> WriterOf:
    """Which writer stamped each op, for checker.check: client ci talks to one router,
    router_ids[i] (run_workload's targets, in order), whose id is its writer number's."""
    numbers = [writer_number(router_id) for router_id in router_ids]
    return lambda op: numbers[int(client_of(op)[1:])]


def run_workload(
    targets: Sequence[str | Sequence[str]],
    fault: Callable[[], None],
    *,
    spec: Workload = Workload(),
    history: History | None = None,
    warmup_s: float = 1.0,
    after_s: float = 2.0,
    seed: int = 7,
) -> History:
    """Runs spec's workers against targets (one SDK client per entry, workers shared out
    among them and named after it) while fault runs on a thread; returns the history."""
    history = history or History()

    async def main() -> None:
        clients = [AsyncClient(t, timeout=spec.timeout_s) for t in targets]
        stop = asyncio.Event()
        tasks = [
            asyncio.create_task(
                _worker(
                    f"c{i % len(clients)}w{i}",
                    clients[i % len(clients)],
                    spec,
                    history,
                    stop,
                    random.Random(seed * 1000 + i),
                )
            )
            for i in range(spec.workers)
        ]
        try:
            await asyncio.sleep(warmup_s)
            await asyncio.to_thread(fault)
            await asyncio.sleep(after_s)
        finally:
            stop.set()
            await asyncio.gather(*tasks)
            await asyncio.gather(*(client.close() for client in clients))

    started = time.monotonic()
    asyncio.run(main())
    history.elapsed_s = time.monotonic() - started
    return history
