"""Owner-held markers through a real shardd's Replica API: kept with their record, counted
with hints, handed over as the node's current record, and refused without their record."""

from __future__ import annotations

import grpc
import pytest
from harness import Proc
from shardkv.v1 import replica_pb2, replica_pb2_grpc


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
