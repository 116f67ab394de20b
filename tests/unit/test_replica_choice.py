"""Which owners a read asks (batch_read.py, replica_latency.py), over fake nodes: R of the
N owners in the batch's order of the nodes, all at ALL, one at ONE; a slow, silent or
failing owner costs a read the speculative delay at most, never its answer; a node
measured clearly slower is asked last; and the estimates themselves."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter

import grpc
import pytest
from fake_nodes import FakeCluster, read_error, read_value, run, settle
from shardkv.router.requests import replica_latency
from shardkv.router.requests.replica_latency import (
    MIN_DELAY_S,
    PEAK_HALF_LIFE_S,
    REFRESH_S,
    STALE_S,
    AskOrders,
    ReplicaLatency,
)
from shardkv.v1 import replica_pb2

KEYS = [b"c/%d" % i for i in range(300)]


class Turns:
    """In place of the random module for replica_latency.AskOrders: the batches' orders
    start at the first node, then the second, and so on around (among those not slow)."""

    def __init__(self) -> None:
        self.draws = 0

    def randrange(self, count: int) -> int:
        return self._next(list(range(count)))

    def choice(self, positions: list[int]) -> int:
        return self._next(positions)

    def _next(self, positions: list[int]) -> int:
        self.draws += 1
        return positions[(self.draws - 1) % len(positions)]


@pytest.fixture(autouse=True)
def turns(monkeypatch: pytest.MonkeyPatch) -> Turns:
    """Batches start at each node in turn, so a test knows whom each batch asks."""
    drawn = Turns()
    monkeypatch.setattr(replica_latency, "random", drawn)
    return drawn


def stored(cluster: FakeCluster, keys: list[bytes]) -> None:
    """Every owner of every key holds it at version 5."""
    for key in keys:
        for owner in cluster.owners(key):
            cluster.nodes[owner].records[key] = replica_pb2.Record(
                key=key, value=b"v", version=5, writer=1
            )


def reads_per_node(cluster: FakeCluster) -> dict[str, int]:
    return {node_id: len(node.keys_read) for node_id, node in cluster.nodes.items()}


@pytest.mark.timeout(10)
@pytest.mark.parametrize(("needed", "asked"), [(1, 1), (2, 2), (3, 3)])
def test_a_batch_asks_r_owners_of_each_key_in_its_order_of_the_nodes(
    needed: int, asked: int
) -> None:
    """ONE, QUORUM and ALL over healthy nodes: each key asks exactly that many owners, the
    first ones in its batch's order of the nodes (from the batch's first node onwards
    around the sorted node ids), so keys with the same owners ask the same ones; batches
    starting at each node in turn share the reads evenly."""

    async def scenario() -> None:
        cluster = FakeCluster(4)
        stored(cluster, KEYS)
        nodes = sorted(cluster.nodes)
        totals = dict.fromkeys(nodes, 0)
        for first in range(len(nodes)):
            before = reads_per_node(cluster)
            outcomes = await cluster.coordinator.read(KEYS, needed, cluster.deadline())
            assert [read_value(o) for o in outcomes] == [b"v"] * len(KEYS)
            await settle()
            after = reads_per_node(cluster)
            for node_id in nodes:
                expected = [k for k in KEYS if node_id in cluster.asked(k, first)[:asked]]
                assert after[node_id] - before[node_id] == len(expected), (first, node_id)
                totals[node_id] += after[node_id] - before[node_id]
            assert sum(after.values()) - sum(before.values()) == asked * len(KEYS)
        if asked < 3:  # with ALL every owner reads every key it owns
            assert max(totals.values()) <= 1.5 * min(totals.values()), totals
        assert cluster.coordinator.repairs == 0

    run(scenario)


@pytest.mark.timeout(10)
@pytest.mark.usefixtures("first_node_first")  # each read asks n1 first
@pytest.mark.parametrize("needed", [1, 2])
def test_a_silent_owner_costs_a_read_the_speculative_delay_not_its_answer(needed: int) -> None:
    """The first owner of every key never answers (and is not known DOWN): each read asks
    the remaining owners once its round is late and answers long before its deadline.
    Eight times over: a fake node's answer mostly comes within the loop clock's
    millisecond, a first answer that took 0.0 s, which once counted as none yet (the
    round then waited half its time)."""

    async def scenario() -> None:
        for _ in range(8):
            cluster = FakeCluster()
            keys = [k for k in KEYS if cluster.owners(k)[0] == "n1"][:50]
            stored(cluster, keys)
            cluster.nodes["n1"].silent = True
            started = time.monotonic()
            outcomes = await cluster.coordinator.read(keys, needed, cluster.deadline(2.0))
            took = time.monotonic() - started
            assert [read_error(o) for o in outcomes] == [None] * len(keys)
            assert all(read_value(o) == b"v" for o in outcomes)
            # The delay before any estimate is MIN_DELAY_S; three times it while no owner
            # answered (ONE), or three times the first answer (QUORUM): far below the
            # deadline.
            assert took < 0.5, f"the read waited {took:.3f} s for a silent owner"
            assert all(k in cluster.nodes[cluster.owners(k)[2]].keys_read for k in keys)

    run(scenario)


@pytest.mark.timeout(10)
def test_a_speculative_delay_longer_than_the_time_left_still_asks_before_the_deadline() -> None:
    """Every owner lately answered in 0.4 s, so the speculative delay is about that; a read
    given 0.3 s whose first owner falls silent still asks the third owner within its time
    (by half of it, as a late round does) and answers, instead of waiting out the delay
    past its deadline and failing every key."""

    async def scenario() -> None:
        cluster = FakeCluster()
        keys = [k for k in KEYS if cluster.owners(k)[0] == "n1"][:50]
        stored(cluster, keys)
        for node in cluster.nodes.values():
            node.delay_s = 0.4
        slow = await cluster.coordinator.read(keys, 2, cluster.deadline(2.0))
        assert [read_error(o) for o in slow] == [None] * len(keys)
        for node in cluster.nodes.values():
            node.delay_s = 0.0
        cluster.nodes["n1"].silent = True
        started = time.monotonic()
        outcomes = await cluster.coordinator.read(keys, 2, cluster.deadline(0.3))
        took = time.monotonic() - started
        assert [read_error(o) for o in outcomes] == [None] * len(keys)
        assert [read_value(o) for o in outcomes] == [b"v"] * len(keys)
        assert took < 0.3, took

    run(scenario)


@pytest.mark.timeout(10)
def test_a_failing_owner_has_its_keys_ask_the_next_owner_at_once() -> None:
    """An owner whose calls fail (not DOWN yet): its keys go to their third owner as soon
    as the failure is in, without waiting for any delay, and the read answers."""

    async def scenario() -> None:
        cluster = FakeCluster()
        stored(cluster, KEYS)
        cluster.nodes["n2"].fail = grpc.StatusCode.UNAVAILABLE
        outcomes = await cluster.coordinator.read(KEYS, 2, cluster.deadline())
        assert [read_error(o) for o in outcomes] == [None] * len(KEYS)
        behind_n2 = [k for k in KEYS if "n2" in cluster.asked(k)[:2]]
        for key in behind_n2:
            third = cluster.asked(key)[2]
            assert key in cluster.nodes[third].keys_read

    run(scenario)


@pytest.mark.timeout(10)
def test_reads_ask_a_node_measured_clearly_slower_last() -> None:
    """n3 answers 40 ms late, the others at once: once measured, reads ask n1 and n2 for
    every key and leave n3 alone; n3's keys are still answered from R=2 owners."""

    async def scenario() -> None:
        cluster = FakeCluster()
        stored(cluster, KEYS)
        cluster.nodes["n3"].delay_s = 0.04
        # Two turns of the batches' order (each asks n3 for every key in two of three
        # batches), past the estimates' refresh interval: n3 is measured.
        for _ in range(6):
            await cluster.coordinator.read(KEYS[:30], 2, cluster.deadline())
            await asyncio.sleep(REFRESH_S + 0.01)
        before = reads_per_node(cluster)
        outcomes = await cluster.coordinator.read(KEYS, 2, cluster.deadline())
        assert [read_error(o) for o in outcomes] == [None] * len(KEYS)
        after = reads_per_node(cluster)
        assert after["n3"] == before["n3"], "the slow node was asked"
        assert after["n1"] - before["n1"] == after["n2"] - before["n2"] == len(KEYS)

    run(scenario)


# -- the estimates ------------------------------------------------------------------------


def test_a_batchs_order_of_the_nodes_starts_anywhere_with_clearly_slower_nodes_last(
    turns: Turns,
) -> None:
    latency = ReplicaLatency()
    for node_id, seconds in (("n1", 0.002), ("n2", 0.003), ("n3", 0.004)):
        latency.observe(node_id, seconds, now=0.0)
    slow, delay = latency.plan(now=0.0)
    assert slow == frozenset() and delay == MIN_DELAY_S
    orders = AskOrders()
    nodes = ("n1", "n2", "n3")
    drawn = [orders.next(nodes, slow)(("n3", "n1", "n2")) for _ in range(3)]
    assert drawn == [("n1", "n2", "n3"), ("n2", "n3", "n1"), ("n3", "n1", "n2")]
    # Owners are ordered among themselves: a node not among them is skipped.
    turns.draws = 0
    assert orders.next(("n0", *nodes), slow)(("n3", "n1")) == ("n1", "n3")

    later = ReplicaLatency()
    for node_id, seconds in (("n1", 0.002), ("n2", 0.003), ("n3", 0.5)):
        later.observe(node_id, seconds, now=0.0)
    slow, delay = later.plan(now=0.0)
    assert slow == {"n3"}
    # The peaks of the nodes reads ask, not the slow node's.
    assert delay == MIN_DELAY_S
    turns.draws = 0
    drawn = [orders.next(nodes, slow)(("n3", "n1", "n2")) for _ in range(4)]
    # Only a node not slow starts a batch's order: each as often as the other.
    assert drawn == [("n1", "n2", "n3"), ("n2", "n1", "n3")] * 2


def test_every_node_not_slow_is_first_as_often_as_any_other(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Drawn at random, whatever the pattern of batches (the order of one batch does not
    depend on the batches before it); a slow node is never first, and the node after it
    in id order is not first more often than the others."""
    monkeypatch.setattr(replica_latency, "random", random.Random(7))
    orders = AskOrders()
    nodes = tuple(f"n{i}" for i in range(1, 7))
    for slow in (frozenset(), frozenset({"n3"})):
        firsts = Counter(orders.next(nodes, slow)(nodes)[0] for _ in range(6000))
        fast = [n for n in nodes if n not in slow]
        assert set(firsts) == set(fast)
        share = 6000 / len(fast)
        assert all(0.85 * share < firsts[n] < 1.15 * share for n in fast), firsts


def test_a_failure_marks_a_node_slow_and_silence_forgives_it() -> None:
    latency = ReplicaLatency()
    for node_id in ("n1", "n2", "n3"):
        latency.observe(node_id, 0.002, now=0.0)
    latency.failed("n2", now=0.01)
    assert latency.plan(now=0.2)[0] == {"n2"}
    # n2 is asked by no read: once its figure is older than STALE_S it is unknown again,
    # and the next reply starts its estimate afresh.
    for node_id in ("n1", "n3"):
        latency.observe(node_id, 0.002, now=STALE_S + 0.1)
    assert latency.plan(now=STALE_S + 0.2)[0] == frozenset()
    latency.observe("n2", 0.002, now=STALE_S + 0.3)
    assert latency.plan(now=STALE_S + 0.4)[0] == frozenset()


def test_the_speculative_delay_follows_the_healthy_nodes_recent_peak() -> None:
    latency = ReplicaLatency()
    for node_id in ("n1", "n2", "n3"):
        latency.observe(node_id, 0.010, now=0.0)
        latency.observe(node_id, 0.080, now=0.0)  # a burst of queued replies
    assert latency.plan(now=0.0)[1] == pytest.approx(0.080)
    # The peak halves every PEAK_HALF_LIFE_S without a slower reply.
    later = min(PEAK_HALF_LIFE_S, STALE_S) * 0.8
    assert latency.plan(now=later)[1] == pytest.approx(0.080 * 0.5 ** (later / PEAK_HALF_LIFE_S))


def test_the_nodes_least_asked_right_now_come_first_and_slow_ones_still_last(
    turns: Turns,
) -> None:
    """Keys asked of a node and not yet answered put it after the others (a least-request
    balancer): the batches in flight spread over the nodes; a slow node stays last."""
    orders = AskOrders()
    nodes = ("n1", "n2", "n3")
    orders.sent("n1", 100)
    orders.sent("n2", 30)
    assert orders.next(nodes, frozenset())(nodes) == ("n3", "n2", "n1")
    assert orders.next(nodes, frozenset({"n3"}))(nodes) == ("n2", "n1", "n3")
    orders.replied("n1", 100)
    assert dict(orders.outstanding) == {"n2": 30}
    turns.draws = 0
    assert orders.next(nodes, frozenset())(nodes) == ("n1", "n3", "n2")


@pytest.mark.timeout(10)
def test_every_key_asked_is_answered_back_whatever_befalls_its_chunk() -> None:
    """What a batch read counts as asked of each node comes back to nothing once every
    chunk is answered: answered, failed, or answered after the round's deadline (a count
    left behind would push a node back in every later batch's order)."""

    async def scenario() -> None:
        cluster = FakeCluster(4)
        stored(cluster, KEYS)
        orders = cluster.coordinator._batch_reader._orders
        cluster.nodes["n2"].fail = grpc.StatusCode.UNAVAILABLE
        cluster.nodes["n3"].delay_s = 0.3
        for _ in range(4):
            await cluster.coordinator.read(KEYS, 2, asyncio.get_running_loop().time() + 0.1)
        await asyncio.sleep(0.4)  # n3's late replies arrive after their rounds ended
        await settle()
        assert dict(orders.outstanding) == {}

    run(scenario)
