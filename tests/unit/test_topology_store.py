"""The topology store's compare-and-swap on cluster.toml (no server started): a change is
written only over the topology it was computed from, two changes racing from one topology
give exactly one winner, a conflict names the stored epoch and move, a held lock is
refused in time, and the watch sees changes; etcd URLs are parsed or refused by name."""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
from dataclasses import replace
from pathlib import Path

import pytest
from shardkv.router.membership.live_topology import Membership
from shardkv.router.membership.store_etcd import parse_etcd_url
from shardkv.router.membership.store_file import FileTopologyStore, lock_path
from shardkv.router.membership.topology import (
    JOINING,
    MoveRecord,
    NodeConfig,
    Topology,
    load_topology,
)
from shardkv.router.membership.topology_store import (
    StoreUnavailable,
    TopologyConflict,
    save_topology,
)
from shardkv.router.requests.health import NodeHealth
from shardkv.router.requests.node_client import NodeClient

NODES = tuple(NodeConfig(f"n{i}", f"127.0.0.1:{7100 + i}") for i in (1, 2, 3))
BASE = Topology(1, 3, 2, 2, NODES)


def adding(topology: Topology, node_id: str, router: str) -> Topology:
    """topology's transition adding node_id, driven by router."""
    node = NodeConfig(node_id, f"127.0.0.1:{7200 + len(topology.nodes)}", 1, JOINING)
    move = MoveRecord(f"add-{node_id}@{topology.epoch}", router, 1)
    return replace(topology, epoch=topology.epoch + 1, nodes=(*topology.nodes, node), move=move)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    path = tmp_path / "cluster.toml"
    save_topology(path, BASE)
    return path


def test_a_change_is_written_only_over_what_it_was_computed_from(path: Path) -> None:
    store = FileTopologyStore(path, interval_s=0.01)
    first = adding(BASE, "n4", "r1")
    asyncio.run(store.compare_and_swap(BASE, first))
    assert load_topology(path) == first
    with pytest.raises(TopologyConflict) as lost:
        asyncio.run(store.compare_and_swap(BASE, adding(BASE, "n5", "r2")))
    assert lost.value.stored == first
    assert "it holds epoch 2 with move add-n4@1 (n4 joining, driven by router 'r1')" in str(
        lost.value
    )
    assert load_topology(path) == first
    assert lock_path(path).exists()  # kept: removing it would let two writers lock two files


def test_two_changes_racing_from_one_topology_give_exactly_one_winner(path: Path) -> None:
    async def race(round_: int) -> list[BaseException | None]:
        # Two stores (two routers) on one file, both computing from the same epoch.
        expected = replace(BASE, epoch=10 * round_ + 1)
        save_topology(path, expected)
        changes = [adding(expected, f"x{round_}{side}", f"r{side}") for side in "ab"]
        stores = [FileTopologyStore(path, interval_s=1) for _ in changes]
        return await asyncio.gather(
            *(s.compare_and_swap(expected, c) for s, c in zip(stores, changes, strict=True)),
            return_exceptions=True,
        )

    for round_ in range(20):
        outcome = asyncio.run(race(round_))
        assert sorted(type(o).__name__ for o in outcome) == ["NoneType", "TopologyConflict"]
        assert load_topology(path).epoch == 10 * round_ + 2


def test_same_epoch_with_other_content_is_a_conflict_not_a_match(path: Path) -> None:
    edited = replace(BASE, nodes=(*NODES[:2], NodeConfig("n9", "127.0.0.1:7109")))
    save_topology(path, edited)  # written by hand, at the same epoch
    with pytest.raises(TopologyConflict, match="other content than this router's epoch 1"):
        asyncio.run(
            FileTopologyStore(path, interval_s=1).compare_and_swap(BASE, adding(BASE, "n4", "r1"))
        )
    assert load_topology(path) == edited


def test_a_held_lock_is_refused_in_time(path: Path) -> None:
    fd = os.open(lock_path(path), os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # another process writing (or stopped while writing)
        store = FileTopologyStore(path, interval_s=1, lock_wait_s=0.2)
        with pytest.raises(StoreUnavailable, match="stayed locked by another process"):
            asyncio.run(store.compare_and_swap(BASE, adding(BASE, "n4", "r1")))
    finally:
        os.close(fd)
    assert load_topology(path) == BASE


def test_the_watch_sees_the_file_now_and_after_every_change(path: Path) -> None:
    async def scenario() -> list[int]:
        store = FileTopologyStore(path, interval_s=0.01)
        seen: list[int] = []
        async for topology in store.watch():
            seen.append(topology.epoch)
            if topology.epoch == 1:
                await FileTopologyStore(path, interval_s=1).compare_and_swap(
                    BASE, adding(BASE, "n4", "r1")
                )
            else:
                await store.close()
        return seen

    assert asyncio.run(asyncio.wait_for(scenario(), 10)) == [1, 2]


def test_a_router_refuses_a_topology_at_its_own_epoch_with_other_content(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def no_client(node: NodeConfig) -> NodeClient:
        raise AssertionError("nothing may be adopted")

    health = NodeHealth(n.id for n in NODES)
    membership = Membership(BASE, store=None, clients={}, health=health, new_client=no_client)
    edited = replace(BASE, nodes=(*NODES[:2], NodeConfig("n9", "127.0.0.1:7109")))
    with caplog.at_level(logging.ERROR):
        membership._consider(edited, "cluster.toml")
    assert membership.topology == BASE
    assert "holds epoch 1 with other content than this router serves" in caplog.text


@pytest.mark.parametrize(
    ("url", "endpoints", "prefix"),
    [
        ("etcd://127.0.0.1:2379/shardkv/prod", ("127.0.0.1:2379",), "/shardkv/prod"),
        ("etcd://a:1,b.example:2/x/", ("a:1", "b.example:2"), "/x"),
        ("etcd://[::1]:2379/p", ("[::1]:2379",), "/p"),
    ],
)
def test_etcd_urls(url: str, endpoints: tuple[str, ...], prefix: str) -> None:
    target = parse_etcd_url(url)
    assert (target.endpoints, target.prefix) == (endpoints, prefix)
    assert target.key == f"{prefix}/topology".encode()


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://a:1/x", "is not etcd://"),
        ("etcd://a:1", "names no PREFIX"),
        ("etcd://a:1/", "names no PREFIX"),
        ("etcd://a/x", "'a' is not HOST:PORT"),
        ("etcd://a:70000/x", "'a:70000' is not HOST:PORT"),
        ("etcd://a:1,,b:2/x", "'' is not HOST:PORT"),
    ],
)
def test_bad_etcd_urls_are_refused_by_name(url: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem.replace("(", r"\(")):
        parse_etcd_url(url)
