"""The real Coordinator over in-process fake nodes (fake_nodes.py): write quorums, hints for
every owner that did not acknowledge, owner-held markers that never count toward W, reads
answered by the newest record of the R owners asked, and read repair of the owners asked.
Which owners a read asks, and speculation: test_replica_choice.py."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from fake_nodes import FakeCluster, read_error, read_value, run, settle, until
from shardkv.router.requests.node_link import MarkedRecord
from shardkv.router.requests.writes import Mutations
from shardkv.v1 import replica_pb2

# Reads ask owners in a known order (FakeCluster.asked).
pytestmark = pytest.mark.usefixtures("first_node_first")


# -- writes: W acknowledgements --------------------------------------------------------------


@pytest.mark.timeout(10)
def test_write_answers_at_w_and_reaches_every_owner() -> None:
    async def scenario() -> None:
        cluster = FakeCluster()
        slow = cluster.nodes["n3"]
        slow.hold()
        keys = [b"w/%d" % i for i in range(20)]
        outcomes = await cluster.coordinator.write(
            Mutations.of([(k, b"v") for k in keys]), 2, cluster.deadline()
        )
        # Answered at W=2, while the third owner has not answered yet.
        assert [o.error for o in outcomes] == [None] * len(keys)
        assert slow.held
        slow.release()
        await settle()
        for node in cluster.nodes.values():
            assert all(node.value(k) == b"v" for k in keys)
            assert not node.markers, "every owner acknowledged: nobody keeps a marker"
        assert len({o.version for o in outcomes}) == len(keys), "one version per write"

    run(scenario)


@pytest.mark.timeout(10)
def test_write_fails_when_fewer_than_w_acknowledge_by_the_deadline() -> None:
    async def scenario() -> None:
        cluster = FakeCluster()
        cluster.nodes["n2"].silent = True
        cluster.nodes["n3"].silent = True
        [outcome] = await cluster.coordinator.write(
            Mutations.of([(b"k", b"v")]), 2, cluster.deadline(0.1)
        )
        assert outcome.error is not None and outcome.code == grpc.StatusCode.UNAVAILABLE
        assert "1 of 2 required replicas acknowledged" in outcome.error
        assert "n2 (no answer before the deadline)" in outcome.error

    run(scenario)


# -- owner-held markers never count toward W ---------------------------------------------------


@pytest.mark.timeout(10)
def test_two_owners_down_the_survivor_alone_never_makes_w2() -> None:
    async def scenario() -> None:
        cluster = FakeCluster()
        cluster.down("n2", "n3")
        [outcome] = await cluster.coordinator.write(
            Mutations.of([(b"k", b"v")]), 2, cluster.deadline()
        )
        assert outcome.error is not None and outcome.code == grpc.StatusCode.UNAVAILABLE
        assert "1 of 2 required replicas acknowledged" in outcome.error
        n1 = cluster.nodes["n1"]
        # The survivor holds the record once, with markers for both owners that missed it,
        # sent in the same item (one commit on the node).
        assert n1.value(b"k") == b"v"
        assert n1.marked_for("n2") == n1.marked_for("n3") == {b"k"}
        assert [type(item) for item in n1.received] == [MarkedRecord]
        assert not cluster.nodes["n2"].received and not cluster.nodes["n3"].received

        [one] = await cluster.coordinator.write(
            Mutations.of([(b"k1", b"v")]), 1, cluster.deadline()
        )
        assert one.error is None
        assert n1.marked_for("n2") == {b"k", b"k1"}

    run(scenario)


@pytest.mark.timeout(10)
def test_one_owner_down_markers_ride_with_the_record_to_both_live_owners() -> None:
    async def scenario() -> None:
        cluster = FakeCluster()
        cluster.down("n3")
        keys = [b"m/%d" % i for i in range(10)]
        outcomes = await cluster.coordinator.write(
            Mutations.of([(k, b"v") for k in keys]), 3, cluster.deadline()
        )
        # ALL: two acknowledgements of three; markers do not make up the third.
        assert all("2 of 3 required replicas acknowledged" in (o.error or "") for o in outcomes)
        outcomes = await cluster.coordinator.write(
            Mutations.of([(k, b"v2") for k in keys]), 2, cluster.deadline()
        )
        assert [o.error for o in outcomes] == [None] * len(keys)
        for node_id in ("n1", "n2"):
            assert cluster.nodes[node_id].marked_for("n3") == set(keys)
        assert cluster.coordinator.markers_kept == 2 * len(keys)

    run(scenario)


# -- a hint for every owner that did not acknowledge, whatever the failure ---------------------


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    "code",
    [
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    ],
)
def test_an_owner_whose_write_fails_gets_markers_on_the_owners_that_acknowledged(
    code: grpc.StatusCode,
) -> None:
    async def scenario() -> None:
        cluster = FakeCluster()
        failing = cluster.nodes["n3"]
        failing.fail, failing.delay_s = code, 0.05  # fails after the quorum is decided
        [outcome] = await cluster.coordinator.write(
            Mutations.of([(b"k", b"v")]), 2, cluster.deadline()
        )
        assert outcome.error is None
        await until(lambda: all(cluster.nodes[n].marked_for("n3") == {b"k"} for n in ("n1", "n2")))
        assert not cluster.nodes["n1"].marked_for("n2")

    run(scenario)


@pytest.mark.timeout(10)
def test_an_owner_silent_past_the_deadline_gets_markers_too() -> None:
    async def scenario() -> None:
        cluster = FakeCluster()
        cluster.nodes["n2"].silent = True
        [outcome] = await cluster.coordinator.write(
            Mutations.of([(b"k", b"v")]), 2, cluster.deadline(0.1)
        )
        assert outcome.error is None
        await until(lambda: cluster.nodes["n1"].marked_for("n2") == {b"k"})
        await until(lambda: cluster.nodes["n3"].marked_for("n2") == {b"k"})

    run(scenario)


@pytest.mark.timeout(10)
def test_a_fallback_outside_the_preference_list_holds_a_hint_that_does_not_count() -> None:
    async def scenario() -> None:
        cluster = FakeCluster(4)
        key = cluster.key_owned("fb", "n1")
        owners = cluster.owners(key)
        fallback = next(n for n in cluster.ids if n not in owners)
        cluster.down(owners[2])
        [at_all] = await cluster.coordinator.write(
            Mutations.of([(key, b"v")]), 3, cluster.deadline()
        )
        assert at_all.error is not None, "a hint is no owner's copy: W=3 needs three owners"
        assert f"{owners[2]} (DOWN" in at_all.error and "hint parked" in at_all.error
        assert f"not counted toward the quorum: {fallback} (hint for {owners[2]})" in at_all.error
        [outcome] = await cluster.coordinator.write(
            Mutations.of([(key, b"v")]), 2, cluster.deadline()
        )
        assert outcome.error is None
        assert cluster.nodes[fallback].hinted_for(owners[2]) == {key}
        assert cluster.nodes[fallback].value(key) is None, "a hint is not the fallback's data"
        assert not any(cluster.nodes[o].markers for o in owners[:2])

    run(scenario)


@pytest.mark.timeout(10)
def test_a_failed_fallback_hint_is_replaced_by_owner_markers() -> None:
    async def scenario() -> None:
        cluster = FakeCluster(4)
        key = cluster.key_owned("fbf", "n1")
        owners = cluster.owners(key)
        fallback = next(n for n in cluster.ids if n not in owners)
        cluster.down(owners[2])
        cluster.nodes[fallback].fail = grpc.StatusCode.UNAVAILABLE
        [outcome] = await cluster.coordinator.write(
            Mutations.of([(key, b"v")]), 2, cluster.deadline()
        )
        assert outcome.error is None
        await until(
            lambda: all(cluster.nodes[o].marked_for(owners[2]) == {key} for o in owners[:2])
        )

    run(scenario)


@pytest.mark.timeout(10)
def test_a_restored_record_is_never_parked_on_a_fallback() -> None:
    async def scenario() -> None:
        cluster = FakeCluster(4)
        key = cluster.key_owned("rs", "n1")
        owners = cluster.owners(key)
        fallback = next(n for n in cluster.ids if n not in owners)
        cluster.down(owners[2])
        record = replica_pb2.Record(key=key, value=b"v", version=5, writer=1, restore=True)
        [outcome] = await cluster.coordinator.write_records([record], 2, cluster.deadline())
        # A fallback cannot tell whether the key was deleted and purged since the backup;
        # the owners that judged it keep markers for the one that is down.
        assert outcome.error is None and not outcome.possibly_deleted
        assert not cluster.nodes[fallback].received
        assert all(cluster.nodes[o].marked_for(owners[2]) == {key} for o in owners[:2])

    run(scenario)


# -- reads -------------------------------------------------------------------------------------


def _put(cluster: FakeCluster, node_id: str, key: bytes, value: bytes, version: int) -> None:
    cluster.nodes[node_id].records[key] = replica_pb2.Record(
        key=key, value=value, version=version, writer=1
    )


@pytest.mark.timeout(10)
def test_read_answers_with_the_newest_of_the_r_owners_it_asks() -> None:
    """Healthy owners: R=2 asks the first two owners in the batch's order and answers the
    newer of their records; the third owner, newer still, is not asked. ALL asks all
    three."""

    async def scenario() -> None:
        cluster = FakeCluster()
        key = cluster.key_owned("k", "n1")
        first, second, third = cluster.asked(key)
        _put(cluster, first, key, b"old", 1)
        _put(cluster, second, key, b"mid", 2)
        _put(cluster, third, key, b"new", 3)
        [outcome] = await cluster.coordinator.read([key], 2, cluster.deadline())
        assert read_error(outcome) is None
        assert read_value(outcome) == b"mid", "R=2: the newer of the two owners asked"
        assert key not in cluster.nodes[third].keys_read
        [outcome] = await cluster.coordinator.read([key], 3, cluster.deadline())
        assert read_value(outcome) == b"new"
        [missing] = await cluster.coordinator.read([b"absent"], 2, cluster.deadline())
        assert read_error(missing) is None and read_value(missing) is None

    run(scenario)


@pytest.mark.timeout(10)
def test_read_fails_when_fewer_than_r_answer_and_skips_down_nodes() -> None:
    async def scenario() -> None:
        cluster = FakeCluster()
        cluster.down("n2", "n3")
        [outcome] = await cluster.coordinator.read([b"k"], 2, cluster.deadline())
        assert "1 of 2 required replicas answered" in (read_error(outcome) or "")
        assert not cluster.nodes["n2"].keys_read, "a DOWN node is not asked"

    run(scenario)


@pytest.mark.timeout(10)
def test_read_repair_updates_the_stale_owners_a_read_asked() -> None:
    """The first owner holds an older record, the second the newest, the third none. A
    read at R=2 answers the newest and repairs the first owner, once every reply is in; it
    does not ask the third, which keeps nothing until a read asks it (here at ALL; else
    anti-entropy brings it the record)."""

    async def scenario() -> None:
        cluster = FakeCluster()
        key = cluster.key_owned("rr", "n1")
        first, second, third = cluster.asked(key)
        _put(cluster, first, key, b"old", 1)
        _put(cluster, second, key, b"new", 3)
        [outcome] = await cluster.coordinator.read([key], 2, cluster.deadline())
        assert read_value(outcome) == b"new"
        await until(lambda: cluster.nodes[first].value(key) == b"new")
        await settle()
        assert cluster.nodes[third].value(key) is None, "an owner not asked is not repaired"
        assert cluster.coordinator.repairs == 1
        [outcome] = await cluster.coordinator.read([key], 3, cluster.deadline())
        assert read_value(outcome) == b"new"
        await until(lambda: {n.value(key) for n in cluster.nodes.values()} == {b"new"})
        assert cluster.coordinator.repairs == 2

    run(scenario)


@pytest.mark.timeout(10)
def test_a_node_becoming_uncounted_mid_read_leaves_the_quorum_it_was_counted_in() -> None:
    """A read sizes its quorums by the nodes that count when it starts (Placement.
    set_uncounted: requests in flight keep their quorums). Its answer dropped the reply
    of an owner found uncounted meanwhile (a node going DOWN and UP again is checked anew)
    and answered from the one stale reply left."""

    async def scenario() -> None:
        cluster = FakeCluster(4)
        placement = cluster.coordinator.placement
        key = next(k for k in (b"k/%d" % i for i in range(10_000)) if "n4" not in cluster.owners(k))
        first, slow, behind = cluster.owners(key)
        other = next(
            k
            for k in (b"j/%d" % i for i in range(10_000))
            if {slow, "n4"} <= set(cluster.owners(k))
        )
        new = replica_pb2.Record(key=key, value=b"v2", version=20, writer=7)
        cluster.nodes[first].records[key] = cluster.nodes[slow].records[key] = new
        cluster.nodes[behind].records[key] = replica_pb2.Record(
            key=key, value=b"v1", version=10, writer=7
        )
        placement.set_uncounted(frozenset({"n4"}))  # n4 is rebuilt: the general read path
        cluster.nodes[slow].silent = cluster.nodes["n4"].silent = True  # other keeps it open
        read = asyncio.ensure_future(
            cluster.coordinator.read([key, other], 2, cluster.deadline(0.5))
        )
        await settle()  # first and behind answered: the key's quorum of 2 is decided
        placement.set_uncounted(frozenset({"n4", first}))
        outcomes = await read
        assert read_value(outcomes[0]) == b"v2", read_error(outcomes[0]) or "the older value"

    run(scenario)
