"""A hint parked on a fallback never counts toward W (Cassandra's rule, not Dynamo's).

Five nodes, N=3, R=W=2. Two owners of some keys are SIGKILLed and seen DOWN, then the
keys are written: one owner is up and fallbacks beyond the preference list park hints for
the other two. Every node holding the record (the live owner, the fallbacks) is then
SIGSTOPped and the two owners restart on their own data, which never got the write: a read
at R=2 is answered by them alone. Had the hints counted toward W, the writes were
acknowledged on one owner and those reads say "not found", stale reads of acknowledged
writes (what multi-host scenario (c) saw during a move). With hints not counting, the
writes fail (UNAVAILABLE, naming the hints), the hints still hand the records over later,
and the checker finds nothing.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import stopped_after
from shardkv.client import AsyncClient
from shardkv.router.placement.ring import Ring
from shardkv.v1 import admin_pb2

from faults.checker import check
from faults.cluster import (
    FaultyCluster,
    read_records,
    start_faulty_cluster,
    wait_node_state,
    wait_nodes_up,
)
from faults.history import OK, History
from faults.verdict import Final

NODES = [f"n{i}" for i in range(1, 6)]
DOWN_OWNERS = ("n4", "n5")
KEYS = 12
RING = Ring(dict.fromkeys(NODES, 1))
# Hints are handed over every 500 ms (the harness's hint_interval_ms); generous.
HANDED_OVER_TIMEOUT_S = 30.0


@pytest.fixture
def cluster(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[FaultyCluster]:
    with stopped_after(start_faulty_cluster(tmp_path, nodes=len(NODES)), request) as running:
        yield running


def keys_owned_by(owners: tuple[str, ...], count: int) -> list[bytes]:
    """Keys whose preference list (N=3) holds every node of owners."""
    candidates = (b"sq/%04d" % i for i in range(10_000))
    keys = [k for k in candidates if set(owners) <= set(RING.preference_list(k, 3))]
    assert len(keys) >= count, f"only {len(keys)} keys owned by {owners}"
    return keys[:count]


def handed_over(cluster: FaultyCluster, keys: list[bytes]) -> dict[bytes, Final]:
    """Each key's record once all three owners hold the same one (read on the nodes, not
    through the router, so read repair cannot do the hints' work)."""
    deadline = time.monotonic() + HANDED_OVER_TIMEOUT_S
    while True:
        final: dict[bytes, Final] = {}
        differ: dict[bytes, dict[str, str]] = {}
        for key in keys:
            owners = RING.preference_list(key, 3)
            held = {o: Final.of(read_records(cluster.node(o).address, [key])[0]) for o in owners}
            if len(set(held.values())) == 1:
                final[key] = held[owners[0]]
            else:
                differ[key] = {o: str(f) for o, f in held.items()}
        if not differ:
            return final
        assert time.monotonic() < deadline, f"owners still differ: {differ}"
        time.sleep(0.2)


@pytest.mark.timeout(120)
def test_a_write_only_hints_acknowledge_is_not_acknowledged(cluster: FaultyCluster) -> None:
    router = cluster.router.address
    keys = keys_owned_by(DOWN_OWNERS, KEYS)
    others = [node for node in cluster.nodes if node.name not in DOWN_OWNERS]
    history = History()

    async def writes() -> None:
        async with AsyncClient(router, timeout=2.0) as client:
            for key in keys:
                await history.put("w", key, b"v-" + key, client.put(key, b"v-" + key))

    async def reads() -> None:
        async with AsyncClient(router, timeout=2.0) as client:
            for key in keys:
                await history.get("r", key, client.get_record(key))

    for owner in DOWN_OWNERS:
        cluster.node(owner).kill()
        wait_node_state(router, owner, admin_pb2.DOWN)
    asyncio.run(writes())
    acknowledged = [op for op in history.ops if op.outcome == OK]

    # Only the two owners that missed every write can answer a read now.
    for node in others:
        node.signal(signal.SIGSTOP)
    for owner in DOWN_OWNERS:
        cluster.node(owner).start()
    for node in others:
        wait_node_state(router, node.name, admin_pb2.DOWN)
    for owner in DOWN_OWNERS:
        wait_node_state(router, owner, admin_pb2.UP)
    asyncio.run(reads())
    for node in others:
        node.signal(signal.SIGCONT)

    wait_nodes_up(router)
    final = handed_over(cluster, keys)
    verdict = check(history.ops, final)
    assert not verdict.problems(), "\n".join([verdict.summary(), *verdict.problems()])
    assert not acknowledged, f"acknowledged by one owner and hints: {acknowledged[0]}"
    errors = [op.error for op in history.ops if op.kind == "put"]
    assert all("hint" in error for error in errors), errors[0]
    # The hints still carried every record to its owners, though no write was acknowledged.
    assert all(final[key].value == b"v-" + key for key in keys)
