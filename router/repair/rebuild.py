"""Rebuilding a node whose data directory was lost or rolled back, from every other owner.

A node whose directory is new (an empty or replaced disk) or behind (restored from an older
copy) does not count toward R and W (router/membership/identity.py) until it is rebuilt:

1. Lease: the router takes the node's rebuild lease (Replica.RebuildLease) and renews it
   while it works; other routers then see the node as ``rebuilding`` and start no rebuild
   of their own. The node takes writes all along, as a pending owner.
2. Purge: a behind, foreign or never-claimed directory drops every record it holds (a
   record that only an old copy still holds may be one deleted since and purged
   everywhere else; every record the node needs comes back in step 4).
3. Count, then stream: for every piece of the token space the node owns, its records are
   streamed to the node from EVERY other owner of the piece, newest winning on apply: a
   write acknowledged by the lost directory and one other owner lives on that one only.
   Every other owner must be up; a rebuild with one DOWN fails and is tried again. The
   node then takes the highest purge watermark of the nodes (carry_watermark).
4. Finish: the directory gets the topology's generation + 1 and the lease goes, in one
   compare-and-set on the node; the router then records the generation in the topology,
   and the node counts again.

The router starts a rebuild by itself when a check finds a new or behind directory (no
move in progress), and tries again every RETRY_S while one fails; ``shardctl node
rebuild`` (Admin.RebuildNode) starts one by hand, for any state (foreign and ahead
directories included: they are never rebuilt automatically). A move in progress refuses
a rebuild, and a move that starts during one makes it fail (the ring it copies by changes).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

import grpc
from shardkv.common.ring_tokens import TOKEN_SPACE
from shardkv.router.membership.identity import AHEAD, OK, IdentityGuard, classify
from shardkv.router.membership.live_topology import Membership
from shardkv.router.membership.move_plan import MoveConflict, NodeUnknown, Transfer, now_ms
from shardkv.router.membership.range_streamer import (
    STREAM_TIMEOUT_S,
    Streamer,
    carry_watermark,
)
from shardkv.router.membership.topology import Topology
from shardkv.router.pace import Pacer
from shardkv.router.placement.current import Piece, pieces
from shardkv.router.requests.health import NodeHealth
from shardkv.v1 import admin_pb2, replica_pb2

log = logging.getLogger(__name__)

# A failed automatic rebuild is tried again after this long.
RETRY_S = 2.0
# The lease is renewed this often (the node lets it lapse after 10 s idle).
RENEW_S = 2.0
CALL_TIMEOUT_S = 10.0


@dataclass
class RebuildProgress:
    """One rebuild of one node (mutated while it runs)."""

    node_id: str
    reason: str
    router_id: str
    state: int = admin_pb2.REBUILD_RUNNING
    phase: str = "lease"
    sources: list[str] = field(default_factory=list)
    keys_total: int = 0
    keys_copied: int = 0
    bytes_copied: int = 0
    records_purged: int = 0
    generation: int = 0
    started_ms: int = field(default_factory=now_ms)
    finished_ms: int = 0
    error: str = ""

    def copied(self, records: int, size: int) -> None:
        self.keys_copied += records
        self.bytes_copied += size

    def to_proto(self) -> admin_pb2.Rebuild:
        return admin_pb2.Rebuild(
            node_id=self.node_id,
            state=self.state,  # type: ignore[arg-type]
            phase=self.phase,
            reason=self.reason,
            keys_total=self.keys_total,
            keys_copied=self.keys_copied,
            bytes_copied=self.bytes_copied,
            records_purged=self.records_purged,
            generation=self.generation,
            started_ms=self.started_ms,
            finished_ms=self.finished_ms,
            error=self.error,
            router_id=self.router_id,
            sources=self.sources,
        )


class Rebuilder:
    """Runs rebuilds, one per node at a time; keeps the latest of each node."""

    def __init__(
        self,
        *,
        router_id: str,
        membership: Membership,
        health: NodeHealth,
        guard: IdentityGuard,
        max_records_per_s: int = 0,
    ) -> None:
        self._router_id = router_id
        self._membership = membership
        self._health = health
        self._guard = guard
        self._pacer = Pacer(max_records_per_s)
        self.latest: dict[str, RebuildProgress] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._retry_at: dict[str, float] = {}
        guard.on_lost(self._lost)
        # A node back from DOWN may be the owner a failed rebuild was missing: try at once.
        health.on_return(lambda _: self._retry_at.clear())

    def running(self, node_id: str) -> bool:
        task = self._tasks.get(node_id)
        return task is not None and not task.done()

    def request(self, node_id: str) -> RebuildProgress:
        """Starts a rebuild of node_id now (Admin.RebuildNode), or returns the one running.
        Raises NodeUnknown for a node not in the topology, MoveConflict during a move."""
        topology = self._membership.topology
        if all(node.id != node_id for node in topology.nodes):
            known = ", ".join(node.id for node in topology.nodes)
            raise NodeUnknown(f"no node {node_id!r} in the topology (nodes: {known})")
        if topology.move is not None:
            raise MoveConflict(
                f"move {topology.move.id} is in progress; rebuild {node_id} after it"
            )
        if not self.running(node_id):
            self._start(node_id, "requested")
        return self.latest[node_id]

    async def stop(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _lost(self, node_id: str, state: str) -> None:
        """A check found node_id's directory new or behind: rebuild it, unless a rebuild
        runs or failed less than RETRY_S ago."""
        if self.running(node_id) or time.monotonic() < self._retry_at.get(node_id, 0.0):
            return
        self._start(node_id, "new directory" if state == "new" else state)

    def _start(self, node_id: str, reason: str) -> None:
        progress = RebuildProgress(node_id, reason, self._router_id)
        self.latest[node_id] = progress
        self._tasks[node_id] = asyncio.create_task(self._run(progress), name=f"rebuild-{node_id}")

    async def _run(self, progress: RebuildProgress) -> None:
        started = time.monotonic()
        try:
            await self._rebuild(progress)
        except asyncio.CancelledError:
            progress.error = "cancelled: the router stopped"
            raise
        except (MoveConflict, grpc.aio.AioRpcError) as err:
            progress.error = _reason(err)
            log.warning("rebuild of %s failed: %s", progress.node_id, progress.error)
        except Exception as err:
            progress.error = f"{type(err).__name__}: {err}"
            log.exception("rebuild of %s failed", progress.node_id)
        finally:
            progress.finished_ms = progress.finished_ms or now_ms()
            if progress.error:
                progress.state = admin_pb2.REBUILD_FAILED
                self._retry_at[progress.node_id] = time.monotonic() + RETRY_S
                await self._release(progress.node_id)
        if not progress.error:
            log.info(
                "rebuilt %s (%s) in %.2f s: %d records copied from %s, %d purged; generation %d",
                progress.node_id,
                progress.reason,
                time.monotonic() - started,
                progress.keys_copied,
                ", ".join(progress.sources),
                progress.records_purged,
                progress.generation,
            )

    async def _rebuild(self, progress: RebuildProgress) -> None:
        node_id = progress.node_id
        topology = self._membership.topology
        if topology.move is not None:
            raise MoveConflict(f"move {topology.move.id} is in progress")
        node = topology.node(node_id)
        layout = self._membership.layout
        owned = [
            p for p in pieces(layout.old, layout.old, topology.replication) if node_id in p.old
        ]
        transfers = _transfers(node_id, owned)
        progress.sources = sorted({t.source for t in transfers})
        for source in [node_id, *progress.sources]:
            if self._health.is_down(source) or source not in self._membership.clients:
                raise MoveConflict(f"{source} is DOWN; a rebuild needs every owner of the ranges")
        target = self._membership.clients[node_id]
        identity = await target.identity(replica_pb2.IdentityRequest(), CALL_TIMEOUT_S)
        # What the directory is, whoever holds its lease (a rebuild of ours that stopped).
        unleased = replica_pb2.DirectoryIdentity()
        unleased.CopyFrom(identity)
        unleased.rebuild_by = ""
        state, detail = classify(node, topology, unleased)
        if identity.node_id != node_id:
            raise MoveConflict(f"refusing to rebuild {node_id}: {detail}")
        await target.identity(replica_pb2.RebuildLeaseRequest(router_id=self._router_id), RENEW_S)
        renewer = asyncio.create_task(self._renew(node_id), name=f"rebuild-lease-{node_id}")
        try:
            await self._copy(progress, state, transfers)
            progress.phase = "finish"
            current = await target.identity(replica_pb2.IdentityRequest(), CALL_TIMEOUT_S)
            _check_unchanged(topology, self._membership.topology)
            progress.generation = self._membership.topology.node(node_id).generation + 1
            await target.identity(
                replica_pb2.SetIdentityRequest(
                    expect_generation=current.generation,
                    expect_claimed=current.claimed,
                    expect_cluster_id=current.cluster_id,
                    cluster_id=topology.cluster_id or current.cluster_id,
                    generation=progress.generation,
                    advance_boot=True,
                    rebuild_by=self._router_id,
                ),
                CALL_TIMEOUT_S,
            )
        finally:
            renewer.cancel()
            await asyncio.gather(renewer, return_exceptions=True)
        progress.phase, progress.state = "done", admin_pb2.REBUILD_DONE
        progress.finished_ms = now_ms()
        await self._guard.check_all()  # counts the node again and records its generation

    async def _copy(self, progress: RebuildProgress, state: str, transfers: list[Transfer]) -> None:
        """Purges what an old or foreign directory holds, then copies every other owner's
        records of the node's pieces to it."""
        clients = self._membership.clients
        target = clients[progress.node_id]
        if state not in (OK, AHEAD):
            progress.phase = "purge"
            progress.records_purged = await target.purge_token_ranges(
                [(0, TOKEN_SPACE)], all_records=True, timeout_s=STREAM_TIMEOUT_S
            )
        progress.phase = "count"
        for transfer in transfers:
            counts = await clients[transfer.source].token_digests(
                transfer.ranges, count_only=True, pace=0, timeout_s=STREAM_TIMEOUT_S
            )
            progress.keys_total += sum(c.count for c in counts)
        progress.phase = "stream"
        streamer = Streamer(
            clients,
            self._health,
            pacer=self._pacer,
            on_batch=progress.copied,
            name=f"rebuild {progress.node_id}",
        )
        tasks = [asyncio.create_task(streamer.run(transfer)) for transfer in transfers]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        await carry_watermark(clients, self._health, [progress.node_id])

    async def _renew(self, node_id: str) -> None:
        request = replica_pb2.RebuildLeaseRequest(router_id=self._router_id)
        while True:
            await asyncio.sleep(RENEW_S)
            client = self._membership.clients.get(node_id)
            if client is not None:
                try:
                    await client.identity(request, RENEW_S)
                except grpc.aio.AioRpcError as err:
                    log.info("renewing the rebuild lease of %s: %s", node_id, err.code().name)

    async def _release(self, node_id: str) -> None:
        client = self._membership.clients.get(node_id)
        if client is None:
            return
        request = replica_pb2.RebuildLeaseRequest(router_id=self._router_id, release=True)
        try:
            await client.identity(request, RENEW_S)
        except grpc.aio.AioRpcError:
            pass  # it lapses by itself


def _transfers(node_id: str, owned: list[Piece]) -> list[Transfer]:
    """Per other owner, the pieces it shares with node_id: streamed from it to node_id."""
    by_source: dict[str, list[Piece]] = {}
    for piece in owned:
        for owner in piece.old:
            if owner != node_id:
                by_source.setdefault(owner, []).append(piece)
    return [
        Transfer(node_id, source, tuple(found), from_giver=False)
        for source, found in sorted(by_source.items())
    ]


def _check_unchanged(before: Topology, now: Topology) -> None:
    """Raises MoveConflict when a move began or the node set changed while copying."""
    if now.move is not None:
        raise MoveConflict(f"move {now.move.id} started during the rebuild")
    if [(n.id, n.weight) for n in now.nodes] != [(n.id, n.weight) for n in before.nodes]:
        raise MoveConflict("the node set changed during the rebuild")


def _reason(err: BaseException) -> str:
    if isinstance(err, grpc.aio.AioRpcError):
        return f"{err.code().name}: {err.details()}"
    return str(err)
