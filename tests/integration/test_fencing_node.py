"""A node's fence against raw gRPC calls: Fence only raises it, durably; calls routed
under an older epoch are refused with the node's fence in the trailing metadata; an epoch
a request claims never raises the fence; a purge runs only at the fenced epoch."""

from __future__ import annotations

import grpc
import pytest
from harness import Proc
from shardkv.v1 import replica_pb2, replica_pb2_grpc

WHOLE = [replica_pb2.TokenRange(start=0, end=1 << 32)]


def _stub(proc: Proc) -> tuple[grpc.Channel, replica_pb2_grpc.ReplicaStub]:
    channel = grpc.insecure_channel(proc.address)
    return channel, replica_pb2_grpc.ReplicaStub(channel)  # type: ignore[no-untyped-call]


def _at(epoch: int) -> list[tuple[str, str]]:
    return [("shardkv-epoch", str(epoch))]


def _record(key: bytes, version: int) -> replica_pb2.Record:
    return replica_pb2.Record(key=key, value=b"v", version=version, writer=1)


def _refused(call: object, *args: object, **kwargs: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        result = call(*args, **kwargs)  # type: ignore[operator]
        if hasattr(result, "__iter__"):
            list(result)
    err = caught.value
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION, err
    return err


def _fence_of(err: grpc.RpcError) -> str | None:
    return dict(err.trailing_metadata() or ()).get("shardkv-fence")


@pytest.mark.timeout(60)
def test_fence_refuses_older_epochs_and_survives_sigkill(node: Proc) -> None:
    channel, stub = _stub(node)
    with channel:
        version = (1_700_000_000_000 << 16) | 1
        # Never fenced: calls without an epoch are served as before.
        stub.Apply(replica_pb2.ApplyRequest(records=[_record(b"a", version)]))
        assert stub.Fence(replica_pb2.FenceRequest(epoch=5)).epoch == 5
        assert stub.Fence(replica_pb2.FenceRequest(epoch=5)).epoch == 5  # idempotent
        lower = _refused(stub.Fence, replica_pb2.FenceRequest(epoch=3))
        assert "epoch 3" in lower.details() and "epoch 5" in lower.details()

        stale = _refused(
            stub.Apply, replica_pb2.ApplyRequest(records=[_record(b"b", version)]), metadata=_at(4)
        )
        assert _fence_of(stale) == "5"
        assert "epoch 4" in stale.details() and "epoch 5" in stale.details()
        read = replica_pb2.ReadRequest(keys=[b"a", b"b"])
        assert _fence_of(_refused(stub.Read, read, metadata=_at(4))) == "5"
        stream = replica_pb2.StreamTokenRangesRequest(ranges=WHOLE)
        assert _fence_of(_refused(stub.StreamTokenRanges, stream, metadata=_at(4))) == "5"

        # A forged huge epoch is served but never raises the fence.
        huge = 1 << 61
        stub.Apply(replica_pb2.ApplyRequest(records=[_record(b"c", version)]), metadata=_at(huge))
        assert stub.Identity(replica_pb2.IdentityRequest()).fence_epoch == 5
        stub.Apply(replica_pb2.ApplyRequest(records=[_record(b"b", version)]), metadata=_at(5))
        got = stub.Read(read, metadata=_at(5)).records
        assert [r.version for r in got] == [version, version]

        # A purge runs at exactly the fenced epoch: not above it, not below it.
        purge = replica_pb2.PurgeTokenRangesRequest(ranges=WHOLE, all_records=True)
        _refused(stub.PurgeTokenRanges, purge, metadata=_at(6))
        _refused(stub.PurgeTokenRanges, purge, metadata=_at(huge))
        _refused(stub.PurgeTokenRanges, purge, metadata=_at(4))
        assert stub.PurgeTokenRanges(purge, metadata=_at(5)).purged == 3

    node.kill()
    node.start()
    channel, stub = _stub(node)
    with channel:
        assert stub.Identity(replica_pb2.IdentityRequest()).fence_epoch == 5
        _refused(stub.Fence, replica_pb2.FenceRequest(epoch=4))
        stale = _refused(
            stub.Apply, replica_pb2.ApplyRequest(records=[_record(b"d", 1)]), metadata=_at(4)
        )
        assert _fence_of(stale) == "5"
