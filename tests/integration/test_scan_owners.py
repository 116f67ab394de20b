"""A deleted key never comes back from a copy a move left on a node that gave its range away.

A node that gives a range away keeps its copy until the move's drop, and keeps it when the
drop fails (the node was down). Anti-entropy and tombstone GC looked only at owners: a scan
that asked every live node saw that leftover once the owners' tombstones were purged, and
removing the new node later made the leftover's node an owner again, with the old value,
which repair then spread everywhere. The test runs exactly that: put, add a node while n3
is down (n3's drop fails, its copies stay), n3 back, delete, a GC pass, scan, remove the
node; no read or scan finds a deleted key. Scans now keep only what owners hold
(router/requests/scan.py), and a repair pass drops every node's copies of ranges it does not
own before purging any tombstone (router/repair/anti_entropy.py).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from faults.cluster import read_records, wait_node_state
from harness import Cluster, shardd_proc, start_cluster, stopped_after
from shardkv.client import Client, Consistency
from shardkv.router.membership.topology import load_topology
from shardkv.router.placement.ring import Ring
from shardkv.v1 import admin_pb2

KEYS = [b"so/%03d" % i for i in range(120)]
GRACE_S = 1
EXTRA_TOML = f"""
[rebalance]
settle_ms = 300

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


def wait_move(client: Client, move: admin_pb2.Move, timeout_s: float = 60.0) -> None:
    """Waits until the move (by id) is done."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        moves = client.moves()
        seen = [m for m in (moves.current, *moves.history) if m.id == move.id]
        if any(m.state == admin_pb2.MOVE_DONE for m in seen):
            return
        assert not any(m.state == admin_pb2.MOVE_FAILED for m in seen), seen
        time.sleep(0.05)
    raise TimeoutError(f"move {move.id} not done after {timeout_s} s")


def repair_pass(client: Client, timeout_s: float = 30.0) -> admin_pb2.RepairStatus:
    """Runs one repair pass to its end and returns its status."""
    number = getattr(client.repair(), "pass")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = client.repair_status()
        if getattr(status, "pass") >= number and not status.running:
            assert not status.error, status.error
            return status
        time.sleep(0.05)
    raise TimeoutError("repair pass did not finish")


def scanned(client: Client) -> list[bytes]:
    return [r.key for r in client.scan(prefix=b"so/", consistency=Consistency.ALL)]


@pytest.mark.timeout(120)
def test_a_deleted_key_never_comes_back_through_a_scan_or_a_later_move(cluster: Cluster) -> None:
    giver = cluster.node("n3")
    with Client(cluster.router.address, timeout=10) as client:
        client.put_many({key: b"old" for key in KEYS}, consistency=Consistency.ALL)
        giver.kill()
        wait_node_state(cluster.router.address, "n3", admin_pb2.DOWN)
        wait_move(client, client.add_node("n4", cluster.node("n4").address))
        giver.start()
        wait_node_state(cluster.router.address, "n3", admin_pb2.UP)
        topology = load_topology(cluster.config)
        ring = Ring({n.id: n.weight for n in topology.nodes})
        given = [k for k in KEYS if "n3" not in ring.preference_list(k, topology.replication)]
        left = [r.key for r in read_records(giver.address, given) if r.version]
        assert left, "n3 kept no copy of what it gave away: the test proves nothing"
        with ThreadPoolExecutor(16) as pool:  # coalesced into a few batches
            list(pool.map(client.delete, KEYS))
        time.sleep(GRACE_S + 0.1)  # the tombstones must be older than the grace to go
        status = repair_pass(client)
        assert status.tombstones_purged > 0, status
        found = scanned(client)
        assert not found, f"{len(found)} deleted keys came back in a scan, e.g. {found[:3]}"
        wait_move(client, client.remove_node("n4"))
        got = client.get_many(KEYS, consistency=Consistency.ALL)
        assert not got, f"{len(got)} deleted keys came back after removing n4"
        found = scanned(client)
        assert not found, f"{len(found)} deleted keys came back in a scan after removing n4"
