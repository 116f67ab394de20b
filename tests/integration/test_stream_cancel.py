"""Cancelling a server stream mid-way leaves every server up (security issue, item 1).

grpcio's core crashed (SIGSEGV) when the request interceptor asked a finished streaming
call for its peer, so a client that read one message of a stream and cancelled, a few
times over, killed a node; a cancelled Admin/Backup took down the router and the node
behind it. These tests cancel every streaming RPC of node and router many times, with
large values so that the server is still writing when the cancel lands.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import grpc
from harness import Cluster, Proc
from shardkv.v1 import admin_pb2, admin_pb2_grpc, kv_pb2, kv_pb2_grpc, replica_pb2, replica_pb2_grpc

VALUE = b"v" * (1 << 20)
ROUNDS = 12


def _put_large_values(address: str, count: int = 20) -> None:
    with grpc.insecure_channel(address) as channel:
        kv = kv_pb2_grpc.KVStub(channel)
        for index in range(count):
            kv.Put(kv_pb2.PutRequest(key=f"big-{index:02d}".encode(), value=VALUE), timeout=10)


def _cancel_after_first(open_stream: Callable[[], Iterator[object]], rounds: int) -> None:
    """Opens a stream, reads one message, cancels it; rounds times."""
    for _ in range(rounds):
        stream = open_stream()
        next(stream)
        stream.cancel()  # type: ignore[attr-defined]


def _assert_serving(*procs: Proc) -> None:
    for proc in procs:
        assert proc.alive(), f"{proc.name} died:\n{proc.log()[-4000:]}"
        with grpc.insecure_channel(proc.address) as channel:
            kv = kv_pb2_grpc.KVStub(channel)
            kv.Get(kv_pb2.GetRequest(key=b"big-00"), timeout=10)


def test_cancelled_node_streams_leave_the_node_up(node: Proc) -> None:
    _put_large_values(node.address)
    with grpc.insecure_channel(node.address) as channel:
        replica = replica_pb2_grpc.ReplicaStub(channel)
        _cancel_after_first(
            lambda: replica.StreamRange(replica_pb2.StreamRangeRequest(batch_size=1), timeout=30),
            ROUNDS,
        )
        _cancel_after_first(
            lambda: replica.StreamTokenRanges(
                replica_pb2.StreamTokenRangesRequest(
                    ranges=[replica_pb2.TokenRange(start=0, end=(1 << 32) - 1)], batch_size=1
                ),
                timeout=30,
            ),
            ROUNDS,
        )
        _cancel_after_first(
            lambda: replica.Snapshot(replica_pb2.SnapshotRequest(batch_size=1), timeout=30),
            ROUNDS,
        )
    _assert_serving(node)


def test_cancelled_backup_leaves_router_and_nodes_up(cluster: Cluster) -> None:
    _put_large_values(cluster.router.address)
    with grpc.insecure_channel(cluster.router.address) as channel:
        admin = admin_pb2_grpc.AdminStub(channel)
        for proc in cluster.nodes:
            _cancel_after_first(
                lambda proc=proc: admin.Backup(
                    admin_pb2.BackupRequest(node_id=proc.name, batch_size=1), timeout=30
                ),
                ROUNDS // 3,
            )
    _assert_serving(*cluster.all())
