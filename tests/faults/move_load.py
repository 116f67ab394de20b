"""A writer that runs while the cluster's topology changes, and the move's span.

tests/integration/test_topology_change.py adds and removes nodes "under load"; these show
that the load was there and that it lost nothing: `Writer` records every put in a History
(the fault checker's, faults/history.py), `move_window` is the span from the AddNode or
RemoveNode call to MOVE_DONE, `writes_inside` counts the puts acknowledged within it, and
`agreed_records` is what the owners of each key hold once they agree, the final state the
checker (faults/checker.py `check`) judges the puts against.
"""

from __future__ import annotations

import asyncio
import threading
import time

from harness import Cluster
from shardkv.client import AsyncClient
from shardkv.router.placement.ring import Ring
from shardkv.v1 import admin_pb2, replica_pb2

from faults.cluster import read_all_at_all, read_records
from faults.history import OK, History
from faults.verdict import Final


class Writer(threading.Thread):
    """Writes fresh keys through the SDK, one at a time, until stopped, and records every
    put in a History: acknowledged with its version, or failed with the error (its outcome
    unknown: it may have reached some replicas)."""

    def __init__(self, routers: str, prefix: str) -> None:
        super().__init__(daemon=True)
        self._routers = routers.split(",")
        self._prefix = prefix
        self._halt = threading.Event()
        self.history = History()
        self.crash: BaseException | None = None

    def run(self) -> None:
        try:
            asyncio.run(self._write())
        except BaseException as err:  # surfaced by finish()
            self.crash = err

    async def _write(self) -> None:
        client = AsyncClient(self._routers, timeout=5)
        try:
            i = 0
            while not self._halt.is_set():
                key, value = f"{self._prefix}/{i:06d}".encode(), b"x%d" % i
                await self.history.put("writer", key, value, client.put(key, value))
                i += 1
        finally:
            await client.close()

    def finish(self) -> dict[bytes, bytes]:
        """Stops the writer; returns the writes acknowledged."""
        self._halt.set()
        self.join(30)
        assert not self.is_alive(), "the writer did not stop"
        assert self.crash is None, f"the writer crashed: {self.crash!r}"
        return {op.key: op.value for op in self.history.ops if op.outcome == OK and op.value}

    def errors(self) -> list[str]:
        return [op.error for op in self.history.ops if op.outcome != OK]


def move_window(move: admin_pb2.Move, called: float, returned: float) -> tuple[float, float]:
    """The move's span on time.monotonic(): from the AddNode/RemoveNode call to MOVE_DONE.
    The router stamps started_ms and finished_ms from its wall clock (this machine's, as
    time.time() reads it); the span is kept within the call to shardctl as well."""
    assert move.state == admin_pb2.MOVE_DONE and move.finished_ms, move
    offset = time.time() - time.monotonic()
    start = max(called, (move.started_ms + 1) / 1000 - offset)
    end = min(returned, move.finished_ms / 1000 - offset)
    assert start < end, (move, called, returned)
    return start, end


def writes_inside(writer: Writer, start: float, end: float) -> int:
    """Writes begun at start or later and acknowledged by end."""
    return sum(
        op.outcome == OK and start <= op.start and op.end <= end for op in writer.history.ops
    )


def agreed_records(
    cluster: Cluster, ring: Ring, n: int, keys: list[bytes], timeout_s: float = 60.0
) -> dict[bytes, Final]:
    """The record every owner of each key (its n nodes on ring) holds, once they agree:
    keys are read at ALL through the router meanwhile, so read repair settles a write whose
    outcome was unknown."""
    deadline = time.monotonic() + timeout_s
    while True:
        views: dict[bytes, list[replica_pb2.Record]] = {key: [] for key in keys}
        for node_id in ring.nodes:
            owned = [key for key in keys if node_id in ring.preference_list(key, n)]
            held = read_records(cluster.node(node_id).address, owned)
            for key, record in zip(owned, held, strict=True):
                views[key].append(record)
        differ = [key for key, records in views.items() if any(r != records[0] for r in records)]
        if not differ:
            return {key: Final.of(records[0]) for key, records in views.items()}
        assert time.monotonic() < deadline, f"owners of {len(differ)} keys disagree: {differ[:3]}"
        read_all_at_all(cluster.router.address, differ)
        time.sleep(0.2)
