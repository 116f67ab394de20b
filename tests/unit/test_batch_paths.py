"""The batch paths of the Coordinator (batch_write.py, batch_read.py) over fake nodes: one
chunk per node for a whole batch, and the keys they cannot decide handed to the general
path (hints on fallbacks, its errors), while the others are decided in the batch."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from fake_nodes import FakeCluster, read_error, read_value, run, settle
from shardkv.common.hlc import HybridClock
from shardkv.router.requests import batch_read, read_groups, replica_answers
from shardkv.router.requests.writes import Mutations
from shardkv.v1 import replica_pb2

# Reads ask owners in a known order (FakeCluster.asked).
pytestmark = pytest.mark.usefixtures("first_node_first")


@pytest.fixture(autouse=True, params=["C", "Python"])
def placing(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test runs with the answers compared and placed in C (_spans.c) and in Python."""
    if request.param == "Python":
        monkeypatch.setattr(read_groups, "place", read_groups.python_place)
        monkeypatch.setattr(read_groups, "same", read_groups.python_same)
        monkeypatch.setattr(read_groups, "top", read_groups.python_top)
        monkeypatch.setattr(replica_answers, "ascending", replica_answers.python_ascending)
    elif read_groups.place is read_groups.python_place:
        pytest.skip("the C spans are not built (test_spans.py says why)")
    return str(request.param)


class Counting:
    """Counts a fake node's calls by kind (chunks of a batch, single items)."""

    def __init__(self, cluster: FakeCluster) -> None:
        self.calls: dict[str, int] = {}
        for node_id, node in cluster.nodes.items():
            for kind in ("apply", "read", "apply_chunk", "read_chunk"):
                setattr(node, kind, self._wrap(node_id, kind, getattr(node, kind)))

    def _wrap(self, node_id: str, kind: str, call: Callable[..., None]) -> Callable[..., None]:
        def counted(*args: object) -> None:
            self.calls[kind] = self.calls.get(kind, 0) + 1
            call(*args)

        return counted


@pytest.mark.timeout(10)
def test_a_batch_sends_each_node_one_chunk_and_no_single_items() -> None:
    async def scenario() -> None:
        cluster = FakeCluster(5)
        calls = Counting(cluster)
        keys = [b"b/%d" % i for i in range(300)]
        outcomes = await cluster.coordinator.write(
            Mutations.of([(k, b"v") for k in keys]), 2, cluster.deadline()
        )
        assert [o.error for o in outcomes] == [None] * len(keys)
        reads = await cluster.coordinator.read(keys, 2, cluster.deadline())
        assert [read_value(o) for o in reads] == [b"v"] * len(keys)
        await settle()
        # Each node the batch asks gets one chunk: every node its writes, and the nodes
        # first in the batch's order of some key's owners its reads.
        asked = {node_id for key in keys for node_id in cluster.asked(key)[:2]}
        assert calls.calls == {"apply_chunk": 5, "read_chunk": len(asked)}
        for key in keys:
            assert sum(node.value(key) == b"v" for node in cluster.nodes.values()) == 3

    run(scenario)


@pytest.mark.timeout(10)
def test_a_key_short_of_its_quorum_through_failed_calls_gets_hints_via_the_general_path() -> None:
    """Two owners fail their calls but are not known DOWN: the batch cannot reach W=2 for
    that key, so the general path places it again and parks hints on the fallbacks. The
    hints do not count toward W, so the key fails, saying so; the batch's other keys are
    decided in the batch, each by its owners alone."""

    async def scenario() -> None:
        cluster = FakeCluster(5)
        key = cluster.key_owned("short", "n1")
        owners = cluster.owners(key)
        for failing in owners[1:]:
            cluster.nodes[failing].fail = grpc.StatusCode.UNAVAILABLE
        others = [b"o/%d" % i for i in range(50)]
        outcomes = await cluster.coordinator.write(
            Mutations.of([(k, b"v") for k in [key, *others]]), 2, cluster.deadline()
        )
        error = outcomes[0].error
        assert error is not None and "1 of 2 required replicas acknowledged" in error
        assert "parked, not counted toward the quorum" in error
        fallbacks = [n for n in cluster.ids if n not in owners]
        hinted = {t for n in fallbacks for t in owners[1:] if key in cluster.nodes[n].hinted_for(t)}
        assert hinted == set(owners[1:])
        for other, outcome in zip(others, outcomes[1:], strict=True):
            up = [o for o in cluster.owners(other) if o not in owners[1:]]
            assert (outcome.error is None) == (len(up) >= 2), (other, up, outcome.error)

    run(scenario)


@pytest.mark.timeout(10)
def test_a_node_out_of_resources_fails_its_keys_without_a_second_attempt() -> None:
    async def scenario() -> None:
        cluster = FakeCluster()
        for node_id in ("n2", "n3"):
            cluster.nodes[node_id].fail = grpc.StatusCode.RESOURCE_EXHAUSTED
        calls = Counting(cluster)
        [outcome] = await cluster.coordinator.write(
            Mutations.of([(b"k", b"v")]), 2, cluster.deadline()
        )
        assert outcome.error is not None and outcome.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "1 of 2 required replicas acknowledged" in outcome.error
        await settle()
        assert calls.calls["apply_chunk"] == 3, "no general-path retry of a shed write"
        # The owner that took it keeps markers for the two that refused (as _cover does).
        assert calls.calls.get("apply") == 1
        assert (
            cluster.nodes["n1"].marked_for("n2") == cluster.nodes["n1"].marked_for("n3") == {b"k"}
        )

    run(scenario)


@pytest.mark.timeout(10)
def test_a_read_short_of_r_fails_with_the_general_paths_error() -> None:
    async def scenario() -> None:
        cluster = FakeCluster()
        for node_id in ("n2", "n3"):
            cluster.nodes[node_id].fail = grpc.StatusCode.UNAVAILABLE
        cluster.nodes["n1"].records[b"k"] = replica_pb2.Record(
            key=b"k", value=b"v", version=3, writer=1
        )
        [outcome] = await cluster.coordinator.read([b"k"], 2, cluster.deadline())
        assert "1 of 2 required replicas answered" in (read_error(outcome) or "")

    run(scenario)


def _counting(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the batch read path's comparisons of whole groups of keys."""
    calls: list[int] = []

    def counted(*args: Any) -> bool:
        calls.append(1)
        return read_groups.agreed(*args)

    monkeypatch.setattr(batch_read, "agreed", counted)
    return calls


def _newer_on(cluster: FakeCluster, node_id: str, key: bytes) -> None:
    cluster.nodes[node_id].records[key] = replica_pb2.Record(
        key=key, value=b"newer", version=9, writer=1
    )


def _store_alike(cluster: FakeCluster, keys: list[bytes]) -> None:
    for key in keys:
        for node_id in cluster.owners(key):
            cluster.nodes[node_id].records[key] = replica_pb2.Record(
                key=key, value=b"same", version=5, writer=1
            )


@pytest.mark.timeout(10)
def test_a_batch_answers_each_key_with_the_newest_of_its_owners_and_repairs_only_stale_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Owners agree on most keys of a batch and disagree on a few, in every group of keys
    with the same owners, the newer record on the first owner asked or the second: every
    key is answered with its newest record, a deleted key as not found, and only the stale
    replicas are repaired. The groups were compared whole."""

    async def scenario() -> None:
        compared = _counting(monkeypatch)
        cluster = FakeCluster()
        keys = [b"g/%d" % i for i in range(200)]
        _store_alike(cluster, keys)
        stale = keys[::25]
        for number, key in enumerate(stale):  # one owner asked holds a newer write
            _newer_on(cluster, cluster.asked(key)[number % 2], key)
        gone = keys[7]
        for node_id in cluster.owners(gone):
            cluster.nodes[node_id].records[gone] = replica_pb2.Record(
                key=gone, version=8, writer=2, tombstone=True
            )
        reads = await cluster.coordinator.read(keys, 2, cluster.deadline())
        expected = [None if key == gone else b"newer" if key in stale else b"same" for key in keys]
        assert [read_value(o) for o in reads] == expected
        assert compared, "the groups were not compared whole"
        await settle()
        assert cluster.coordinator.repairs == len(stale)
        for key in stale:
            assert [cluster.nodes[n].value(key) for n in cluster.asked(key)[:2]] == [b"newer"] * 2

    run(scenario)


@pytest.mark.parametrize("agree", [True, False], ids=["owners agree", "owners differ"])
@pytest.mark.timeout(10)
def test_a_batch_read_moves_the_routers_clock_past_the_newest_version_read(agree: bool) -> None:
    """A version read (here 200 ms ahead of the router's clock, within the max offset) is
    observed, so a later write through this router orders after it: read from the first
    owner of a group whose owners agreed, or as one key's newest where they differ."""

    async def scenario() -> None:
        cluster = FakeCluster()
        keys = [b"c/%d" % i for i in range(60)]
        _store_alike(cluster, keys)
        ahead = HybridClock(wall=lambda: time.time() + 0.2).now()
        key = keys[37]
        owners = cluster.owners(key) if agree else cluster.owners(key)[1:2]
        for node_id in owners:
            cluster.nodes[node_id].records[key] = replica_pb2.Record(
                key=key, value=b"ahead", version=ahead, writer=1
            )
        assert cluster.clock.now() < ahead
        reads = await cluster.coordinator.read(keys, 2, cluster.deadline())
        assert read_value(reads[37]) == b"ahead"
        assert cluster.clock.now() > ahead

    run(scenario)


@pytest.mark.timeout(10)
def test_a_failed_owner_has_the_batch_counted_key_by_key_and_still_answered_newest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """n1, first in the batch's order, fails every read: its keys ask their third owner,
    the round counts key by key (no group is compared whole), and every key is answered
    with the newest record the owners that answered hold (some on that third owner)."""

    async def scenario() -> None:
        compared = _counting(monkeypatch)
        cluster = FakeCluster()
        keys = [b"f/%d" % i for i in range(120)]
        _store_alike(cluster, keys)
        stale = keys[::10]
        for key in stale:
            _newer_on(cluster, [n for n in cluster.asked(key) if n != "n1"][-1], key)
        cluster.nodes["n1"].fail = grpc.StatusCode.UNAVAILABLE
        reads = await cluster.coordinator.read(keys, 2, cluster.deadline())
        assert [read_value(o) for o in reads] == [
            b"newer" if key in stale else b"same" for key in keys
        ]
        assert not compared, "a round with a failed owner compares key by key"

    run(scenario)


@pytest.mark.timeout(10)
def test_a_tombstone_and_a_value_with_the_same_stamp_resolve_as_everywhere_else() -> None:
    """Two owners hold the same (version, writer), one a tombstone and one a value (only a
    bug makes that): the read answers what hlc.precedes keeps, the tombstone, as the
    general path and every replica would, and repairs the other owner."""

    async def scenario() -> None:
        cluster = FakeCluster()
        key = cluster.key_owned("tie", "n1")
        first, second, _ = cluster.owners(key)
        cluster.nodes[first].records[key] = replica_pb2.Record(
            key=key, value=b"v", version=5, writer=1
        )
        cluster.nodes[second].records[key] = replica_pb2.Record(
            key=key, version=5, writer=1, tombstone=True
        )
        [outcome] = await cluster.coordinator.read([key], 2, cluster.deadline())
        assert read_error(outcome) is None and read_value(outcome) is None
        await settle()
        assert cluster.coordinator.repairs == 1

    run(scenario)
