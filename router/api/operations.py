"""The operator calls of the Admin service: cluster status, backup and restore.

Status: the router asks every node not known to be DOWN for its figures (Replica.Stats)
at once, with node_call_ms each, and answers them beside its topology. Rates (ops/s) are
left to the caller, which samples twice (the node counters and uptimes make that exact,
restarts included); so a status call keeps no state on the router.

Backup: the router relays one node's Replica.Snapshot stream unchanged. It is a call per
node, so a backup tool can say which node failed, retry just that one, and write each
node's file as it arrives. Each node's copy is consistent in itself (one LMDB snapshot);
different nodes are copied at slightly different moments, as in every Dynamo-style
system (Cassandra's per-node snapshots): restoring the union, newest version of each key
winning, gives every write acknowledged before the backup started.

Restore: records come back through the coordinator's write path with the versions they
carry, to the owners the current ring gives their keys (markers for owners that are down,
but no hints on fallbacks), and each must reach W replicas. Replicas keep a record only
when it is newer than theirs (last write wins), so restoring onto a live cluster never
undoes a later write, restoring twice is harmless, and the new cluster may have a
different topology. Each record is marked as a restore's, so an owner that holds no
record of the key stores it only above its purge watermark: a key deleted after the
backup and purged since by tombstone GC is refused, and counted as skipped.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import grpc.aio
from shardkv.common.limits import LimitExceeded, Limits
from shardkv.router.membership.live_topology import Membership
from shardkv.router.membership.move_plan import NodeUnknown
from shardkv.router.requests.coordinator import Coordinator
from shardkv.router.requests.health import DOWN
from shardkv.serving.status import Relayed
from shardkv.v1 import admin_pb2, replica_pb2

Context = grpc.aio.ServicerContext[Any, Any]


class Operations:
    """GetStatus, Backup and Restore, for the Admin service to delegate to."""

    def __init__(
        self,
        *,
        coordinator: Coordinator,
        membership: Membership,
        limits: Limits,
        call_timeout_s: float,
        request_timeout_s: float,
    ) -> None:
        self._coordinator = coordinator
        self._membership = membership
        self._clients = membership.clients
        self._limits = limits
        self._call_timeout_s = call_timeout_s
        self._request_timeout_s = request_timeout_s

    async def status(self, topology: admin_pb2.Topology) -> admin_pb2.ClusterStatus:
        """topology (as GetTopology answers it) with every reachable node's figures."""
        nodes = await asyncio.gather(*(self._node_stats(node) for node in topology.nodes))
        return admin_pb2.ClusterStatus(
            topology=topology, nodes=nodes, collected_ms=int(time.time() * 1000)
        )

    async def _node_stats(self, node: admin_pb2.NodeStatus) -> admin_pb2.NodeStats:
        client = self._clients.get(node.id)
        if node.state == DOWN or client is None:
            reason = node.last_error or ("DOWN" if client else "no connection to this node")
            return admin_pb2.NodeStats(id=node.id, reachable=False, error=reason)
        try:
            stats = await client.stats(self._call_timeout_s)
        except grpc.aio.AioRpcError as err:
            return admin_pb2.NodeStats(
                id=node.id, reachable=False, error=f"{err.code().name}: {err.details()}"
            )
        return admin_pb2.NodeStats(id=node.id, reachable=True, stats=stats)

    async def backup(
        self, request: admin_pb2.BackupRequest, context: Context
    ) -> AsyncIterator[replica_pb2.SnapshotBatch]:
        """The node's snapshot, batch by batch; NodeUnknown (NOT_FOUND) for an unknown
        node, and the node's own status, relayed, when its stream fails."""
        client = self._clients.get(request.node_id)
        if client is None:
            known = ", ".join(sorted(self._clients))
            raise NodeUnknown(f"no node {request.node_id!r} (nodes: {known})")
        try:
            async for batch in client.snapshot(request.batch_size, context.time_remaining()):
                yield batch
        except grpc.aio.AioRpcError as err:
            raise Relayed(
                err.code(), f"snapshot of node {request.node_id} failed: {err.details()}"
            ) from err

    async def restore(
        self, request: admin_pb2.RestoreRequest, context: Context
    ) -> admin_pb2.RestoreResponse:
        """Writes the records with their own versions, marked as a restore's; each must
        reach W replicas. Records that break a limit refuse the whole call (LimitExceeded:
        INVALID_ARGUMENT)."""
        self._check(request.records)
        for record in request.records:
            record.restore = True
        remaining = context.time_remaining()
        timeout = self._request_timeout_s if remaining is None else remaining
        deadline = asyncio.get_running_loop().time() + timeout
        outcomes = await self._coordinator.write_records(
            list(request.records), self._membership.topology.write_quorum, deadline
        )
        failures = [o.error for o in outcomes if o.error is not None]
        skipped = sum(o.possibly_deleted for o in outcomes)
        return admin_pb2.RestoreResponse(
            restored=len(outcomes) - len(failures) - skipped, failures=failures, skipped=skipped
        )

    def _check(self, records: Any) -> None:
        self._limits.check_batch(records, "Restore records")
        for record in records:
            self._limits.check_key(record.key)
            if not record.tombstone:
                self._limits.check_value(record.key, record.value)
            if not record.version:
                raise LimitExceeded(f"record of key {record.key[:64]!r} has no version")
