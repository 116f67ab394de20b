"""Owner-held markers through a real shardd's Replica API: kept with their record, counted
with hints, handed over as the node's current record, and refused without their record;
and through a router, for every key of a batch when two owners are down."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from faults.cluster import wait_node_state
from harness import Proc, start_cluster, stopped_after
from shardkv.client import Client, Consistency
from shardkv.v1 import admin_pb2, replica_pb2, replica_pb2_grpc


@pytest.mark.timeout(30)
def test_markers_travel_with_their_record_and_hand_over_the_current_one(node: Proc) -> None:
    with grpc.insecure_channel(node.address) as channel:
        replica = replica_pb2_grpc.ReplicaStub(channel)
        first = replica_pb2.Record(key=b"k", value=b"first", version=5 << 16, writer=1)
        reply = replica.Apply(
            replica_pb2.ApplyRequest(
                records=[first],
                markers=[
                    replica_pb2.Marker(key=b"k", target="n2"),
                    replica_pb2.Marker(key=b"k", target="n3"),
                ],
            ),
            timeout=5,
        )
        assert list(reply.applied) == [True]
        summary = replica.HintSummary(replica_pb2.HintSummaryRequest(), timeout=5)
        assert {(c.target, c.count) for c in summary.targets} == {("n2", 1), ("n3", 1)}
        assert replica.Stats(replica_pb2.StatsRequest(), timeout=5).hints == 2

        newer = replica_pb2.Record(key=b"k", value=b"newer", version=6 << 16, writer=1)
        replica.Apply(replica_pb2.ApplyRequest(records=[newer]), timeout=5)
        handed = replica.ReadHints(replica_pb2.ReadHintsRequest(target="n3"), timeout=5).records
        assert list(handed) == [newer], "hand-off sends the node's current record"
        deleted = replica.DeleteHints(
            replica_pb2.DeleteHintsRequest(target="n3", records=handed), timeout=5
        ).deleted
        assert deleted == 1
        summary = replica.HintSummary(replica_pb2.HintSummaryRequest(), timeout=5)
        assert [(c.target, c.count) for c in summary.targets] == [("n2", 1)]

        with pytest.raises(grpc.RpcError) as refused:
            replica.Apply(
                replica_pb2.ApplyRequest(
                    records=[newer], markers=[replica_pb2.Marker(key=b"other", target="n3")]
                ),
                timeout=5,
            )
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "no record of that key in the same request" in (refused.value.details() or "")


@pytest.mark.timeout(60)
def test_a_batch_written_with_two_owners_down_keeps_a_marker_for_each(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """N=3 on three nodes, n2 and n3 down, 800 keys written at ONE: n1 keeps a marker for
    each of them per missing owner, 1,600 in all. A call of 800 records carried them all,
    over the node's 1,000 markers a call, and every key failed."""
    with stopped_after(start_cluster(tmp_path), request) as cluster:
        for name in ("n2", "n3"):
            cluster.node(name).kill()
            wait_node_state(cluster.router.address, name, admin_pb2.DOWN)
        keys = {b"marked/%03d" % i: b"v" for i in range(800)}
        with Client(cluster.router.address, timeout=10) as client:
            client.put_many(keys, consistency=Consistency.ONE)
        with grpc.insecure_channel(cluster.node("n1").address) as channel:
            summary = replica_pb2_grpc.ReplicaStub(channel).HintSummary(
                replica_pb2.HintSummaryRequest(), timeout=5
            )
        assert {(c.target, c.count) for c in summary.targets} == {("n2", 800), ("n3", 800)}
