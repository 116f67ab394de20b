"""Scans read only what the current owners of each key hold, so a deleted key never comes back.

A node that gave a range away keeps its copy until the move drops it (after a settle
delay). Anti-entropy and tombstone GC look only at owners; a scan that asked every live
node saw that leftover copy once the owners' tombstones were purged, and removing the new
node later copied nothing over it. The test runs exactly that: put, add a node, delete
while the move is switched but before the givers drop, a GC pass, scan; then the move
ends, the node is removed, and no read or scan finds any deleted key.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from harness import Cluster, shardd_proc, start_cluster, stopped_after
from shardkv.client import Client, Consistency
from shardkv.v1 import admin_pb2

KEYS = [b"so/%03d" % i for i in range(120)]
# The window between the switch and the givers' drop must hold a delete, a repair pass and
# a scan on a loaded machine.
SETTLE_MS = 4000
GRACE_S = 1
EXTRA_TOML = f"""
[rebalance]
settle_ms = {SETTLE_MS}

[repair]
interval_s = 0
tombstone_grace_s = {GRACE_S}
"""


@pytest.fixture
def cluster(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    running = start_cluster(tmp_path, extra_toml=EXTRA_TOML)
    spare = shardd_proc(tmp_path, "n4")
    running.nodes.append(spare)
    with stopped_after(running, request):
        spare.start()
        yield running


def wait_move(client: Client, node_id: str, state: int, timeout_s: float = 60.0) -> None:
    """Waits until the move of node_id reaches state (in progress or finished)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        moves = client.moves()
        seen = [m for m in (moves.current, *moves.history) if m.node_id == node_id]
        if any(m.state == state for m in seen):
            return
        if any(m.state == admin_pb2.MOVE_FAILED for m in seen):
            raise AssertionError(f"move of {node_id} failed: {seen}")
        time.sleep(0.05)
    raise TimeoutError(f"move of {node_id} never reached {admin_pb2.MoveState.Name(state)}")


def wait_repair(client: Client, timeout_s: float = 30.0) -> admin_pb2.RepairStatus:
    """Runs one repair pass to its end and returns its status."""
    started = client.repair()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = client.repair_status()
        if getattr(status, "pass") >= getattr(started, "pass") and not status.running:
            assert not status.error, status.error
            return status
        time.sleep(0.05)
    raise TimeoutError("repair pass did not finish")


def scanned(client: Client) -> dict[bytes, bytes]:
    return {r.key: r.value for r in client.scan(prefix=b"so/", consistency=Consistency.ALL)}


@pytest.mark.timeout(120)
def test_a_deleted_key_never_comes_back_through_a_scan_or_a_later_move(cluster: Cluster) -> None:
    spare = cluster.node("n4")
    with Client(cluster.router.address, timeout=10) as client:
        client.put_many({key: b"old" for key in KEYS})
        client.add_node("n4", spare.address)
        wait_move(client, "n4", admin_pb2.MOVE_SWITCHED)
        # The new placement is in force; the nodes that gave ranges to n4 still hold them.
        with ThreadPoolExecutor(16) as pool:  # coalesced into a few batches
            list(pool.map(client.delete, KEYS))
        switched = time.monotonic()
        time.sleep(GRACE_S + 0.1)  # the tombstones must be older than the grace to go
        status = wait_repair(client)
        assert status.tombstones_purged > 0, status
        found = scanned(client)
        in_window = time.monotonic() - switched < SETTLE_MS / 1000
        assert not found, (
            f"{len(found)} deleted keys came back in a scan (GC pass and scan inside the"
            f" window before the drop: {in_window}), e.g. {sorted(found)[:3]}"
        )
        assert in_window, "the scan came after the givers dropped their copies: proves nothing"
        wait_move(client, "n4", admin_pb2.MOVE_DONE)
        client.remove_node("n4")
        wait_move(client, "n4", admin_pb2.MOVE_DONE)
        got = client.get_many(KEYS, consistency=Consistency.ALL)
        assert not got, f"{len(got)} deleted keys came back after removing n4"
        found = scanned(client)
        assert not found, f"{len(found)} deleted keys came back in a scan after removing n4"
