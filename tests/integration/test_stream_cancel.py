"""Cancelling a server stream mid-way leaves every server up (security issue, item 1).

grpcio's core crashed (SIGSEGV) when the request interceptor asked a finished streaming
call for its peer, so a client that read one message of a stream and cancelled, a few
times over, killed a node; a cancelled Admin/Backup took down the router and the node
behind it. These tests cancel every streaming RPC of node and router many times, with
large values so that the server is still writing when the cancel lands. And a router's
own streams from a node end on the node as soon as their caller closes them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator

import grpc
from harness import Cluster, Proc
from shardkv.common.limits import DEFAULT_LIMITS
from shardkv.router.membership.topology import NodeConfig
from shardkv.router.requests.node_client import NodeClient
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


def test_closing_a_token_range_stream_cancels_it_on_the_node(node: Proc) -> None:
    """The router's NodeClient.stream_token_ranges (moves, anti-entropy) closed by its
    caller before the end: the node's stream ends CANCELLED then, not at its deadline.
    (Closing the generator alone left the call open: the node kept walking its store.)"""
    with grpc.insecure_channel(node.address) as channel:
        kv = kv_pb2_grpc.KVStub(channel)
        for page in range(2):  # two pages of the node's walk, which is paced between pages
            mutations = [
                kv_pb2.Mutation(key=b"tr/%d/%d" % (page, i), value=b"v") for i in range(1000)
            ]
            kv.BatchWrite(kv_pb2.BatchWriteRequest(mutations=mutations), timeout=30)
    cancelled = "method=/shardkv.v1.Replica/StreamTokenRanges code=CANCELLED"

    async def read_one_and_close() -> None:
        client = NodeClient(
            NodeConfig(node.name, node.address),
            limits=DEFAULT_LIMITS,
            call_timeout_s=5,
            on_failure=lambda failure, timeout: None,
        )
        try:
            # At 10 records/s the node rests 100 s after its first page; the deadline is
            # later still: only a cancel ends the call within the wait below.
            stream = client.stream_token_ranges(
                [(0, 1 << 32)], batch_size=1, keys_only=True, pace=10, timeout_s=600
            )
            assert len(await anext(stream)) == 1
            await stream.aclose()
            deadline = time.monotonic() + 30
            while cancelled not in node.log():
                assert time.monotonic() < deadline, (
                    f"the node's stream was not cancelled:\n{node.log()[-3000:]}"
                )
                await asyncio.sleep(0.05)
        finally:
            await client.close()

    asyncio.run(read_one_and_close())
