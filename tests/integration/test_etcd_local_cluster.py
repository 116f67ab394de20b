"""`make cluster TOPOLOGY=etcd ROUTERS=2` as a user runs it (issue 15 item 6): a local etcd,
three nodes and two routers on one topology; `make cluster-status` shows etcd (members,
health, the epoch it holds, the writer ids held); `make cluster-stop` stops etcd too, by
PID; a plain `make cluster` later brings back the same cluster, etcd and both routers,
with its data, and refuses to switch it to the file back end. Ports lie in a free block
on loopback, as for test_local_cluster.py (whose default `make cluster` this leaves alone).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from shardkv.client import Client
from test_local_cluster import LocalCluster, free_port_block

# etcd takes PORT-10 and PORT-9, router r2 PORT-1 (scripts/local_etcd.py, local_cluster.py).
BELOW = 10


@pytest.fixture
def etcd_local(tmp_path: Path) -> Iterator[LocalCluster]:
    base = free_port_block(BELOW + 4)  # etcd .. r1 and three nodes (and their +1000)
    cluster = LocalCluster(tmp_path / "var", base + BELOW)
    try:
        yield cluster
    finally:
        cluster.make("cluster-stop", check=False)
        for pid in cluster.pids():  # anything cluster-stop could not stop
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def topology_epochs(cluster: LocalCluster) -> set[int]:
    epochs = set()
    for address in (cluster.router, f"127.0.0.1:{cluster.port - 1}"):
        with Client(address) as kv:
            epochs.add(kv.topology().epoch)
    return epochs


@pytest.mark.timeout(240)
def test_make_cluster_with_etcd_and_two_routers(etcd_local: LocalCluster) -> None:
    started = etcd_local.make("cluster", "TOPOLOGY=etcd", "ROUTERS=2").stdout
    for name in ("etcd", "n1", "router", "router2"):
        assert f"started {name} pid=" in started, started
    r2 = f"127.0.0.1:{etcd_local.port - 1}"
    with Client(etcd_local.router) as kv:
        kv.put("etcd-make:1", b"through r1")
    with Client(r2) as kv:
        assert kv.get("etcd-make:1") == b"through r1"
    assert len(topology_epochs(etcd_local)) == 1, "the routers serve different epochs"

    status = etcd_local.make("cluster-status").stdout
    assert status.count("SERVING") == 6, status
    assert "healthy (a quorum read answered); etcd 3.4" in status, status
    assert "member local http://127.0.0.1:" in status and " leader" in status, status
    assert "topology: epoch " in status and "3 nodes under /shardkv/local/topology" in status
    assert "writer id router 'r1'" in status and "writer id router 'r2'" in status, status

    pids = etcd_local.pids()
    assert len(pids) == 6
    etcd_local.make("cluster-stop")
    assert not [pid for pid in pids if Path(f"/proc/{pid}").exists()], "cluster-stop left some"
    assert etcd_local.make("cluster-status").stdout.count("stopped") == 6

    # The cluster remembers its settings: a plain `make cluster` brings all six back.
    again = etcd_local.make("cluster").stdout
    assert "started etcd" in again and "started router2" in again, again
    with Client(r2) as kv:
        assert kv.get("etcd-make:1") == b"through r1"
    refused = etcd_local.make("cluster", "TOPOLOGY=file", check=False)
    assert refused.returncode != 0 and "TOPOLOGY=file (cluster has etcd)" in refused.stderr
