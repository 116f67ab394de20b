"""Adding and removing nodes online: one move at a time, driven by the router asked.

A move goes through these steps, each stored (compare-and-swap) before it takes effect:

1. Transition (epoch + 1): the node is written as ``joining`` (or ``leaving``) with a
   ``[move]`` table. Every router then sends writes to the old and the new owners of each
   key and reads from both (placement.py), with one more reply per pending owner.
2. Fence the transition: every node of the old and the new topology (the transition's
   nodes: members, the joining and the leaving one) takes the transition's epoch
   (Replica.Fence, fencing.py). From then on no node stores, serves or drops anything a
   router routed under the old placement: a write routed before the transition either
   committed before the fence (and the stream below copies it) or is refused and routed
   again under the transition. No settle delay is needed, however long a router paused.
3. A joining node's data directory is claimed (identity.py, claim_joining), so that it
   counts as soon as it owns anything. Count, then stream: moves.py plans which pieces go
   from which node to which; each source counts its pieces (for progress), then streams
   them, and the router applies every batch to the target (LWW, so repeating any of it is
   harmless), routed under the move's epoch; each target then takes the highest purge
   watermark of the nodes (range_streamer.carry_watermark).
4. Switch (epoch + 1): the move enters its ``drop`` phase. Only now does the new placement
   become authoritative (it alone is in force), after the copy is complete.
5. Fence the switch on the same nodes (the removed one included): a router still routing
   under the transition (writes to old and new owners) is refused and reloads.
6. Drop: nodes that gave pieces away purge them, routed under the epoch in force, which a
   node accepts only while fenced at exactly that epoch — so a drop computed for one
   placement never runs once a later change was fenced. Retried until done (move_steps.py);
   the stored drop phase makes a restarted driver drop them again. A removed node then
   hands the hints and markers it holds for others to a node that stays (move_hints.py),
   retried likewise, so they still reach their targets once it is gone.
7. Done (epoch + 1): the node becomes a plain member, or leaves the file. Nothing to fence:
   the placement is the drop phase's.

A failure leaves the transition in force (writes keep reaching both sides; nothing is lost)
and the move FAILED: repeating the request resumes it, the opposite request aborts it (the
nodes that received pieces then purge them: MoveSteps.undo). A switched move cannot be
aborted; either request finishes its drops. The router that drives a move resumes it
when restarted, whatever its step. Moves and repair passes exclude each other: a move
cancels a running pass, and Repair is refused during a move.

Fencing covers every node that is up. A node DOWN when an epoch is fenced (a dead node
being removed, or one that failed meanwhile) is skipped; it serves nobody while down, and
routers fence it at their epoch when it returns, before it counts again (identity.py).
The one settle delay left is the close of a removed node's channel (live_topology.py):
requests still using it finish first; nothing depends on it for safety.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace

from shardkv.router.membership.identity import claim_joining
from shardkv.router.membership.live_topology import ClientFactory, Membership
from shardkv.router.membership.move_lease import MoveLease, claim, claimed, take_over_orphans
from shardkv.router.membership.move_plan import (
    ADD,
    REMOVE,
    BadNode,
    MoveConflict,
    MoveProgress,
    NodeExists,
    NodeUnknown,
    aborted_topology,
    changed_pieces,
    check_driver,
    client_of,
    conflict,
    describe_error,
    dropping,
    final_topology,
    moving_node,
    now_ms,
    plan_transfers,
    progress_of,
)
from shardkv.router.membership.move_steps import MoveSteps, count_transfers
from shardkv.router.membership.node_checks import (
    check_new_node,
    check_placement_with,
    probe_new_node,
)
from shardkv.router.membership.range_streamer import Streamer, carry_watermark
from shardkv.router.membership.topology import (
    DROP,
    JOINING,
    LEAVING,
    STREAM,
    MoveRecord,
    NodeConfig,
    Topology,
)
from shardkv.router.pace import Pacer
from shardkv.router.requests.health import NodeHealth
from shardkv.v1 import admin_pb2

log = logging.getLogger(__name__)

# Finished moves kept for GetMoves.
HISTORY = 20


class Rebalancer:
    """Starts, runs, resumes and reports node adds and removes."""

    def __init__(
        self,
        *,
        router_id: str,
        membership: Membership,
        health: NodeHealth,
        probe_client: ClientFactory,
        pause_repair: Callable[[], Awaitable[None]],
        lease: MoveLease | None = None,
    ) -> None:
        """lease: the right to drive a move, on the etcd back end (move_lease.py)."""
        self._router_id = router_id
        self._lease = lease
        self._orphans: asyncio.Task[None] | None = None
        self._membership = membership
        self._health = health
        self._probe_client = probe_client
        self._pause_repair = pause_repair
        self._steps = MoveSteps(membership, health, probe_client)
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self.current: MoveProgress | None = None
        self.history: list[MoveProgress] = []

    @property
    def moving(self) -> bool:
        """True while the topology is in transition (a move runs, failed or waits)."""
        return self._membership.topology.move is not None

    def start(self) -> None:
        """Resumes a move this router was driving when it stopped; with a lease, takes
        over moves whose driver died (move_lease.py)."""
        topology = self._membership.topology
        if topology.move is not None and topology.move.driver == self._router_id:
            log.info("resuming move %s after a restart", topology.move.id)
            self._launch(progress_of(topology, self._router_id))
        if self._lease is not None:
            self._orphans = asyncio.create_task(
                take_over_orphans(
                    self._lease, lambda: self._membership.topology, self._router_id, self._adopt
                ),
                name="move-takeovers",
            )

    async def stop(self) -> None:
        for task in (self._task, self._orphans):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        await self._release()

    async def _release(self) -> None:
        """Lets go of the move lease: the move is over (done or aborted), or this router
        stops (another takes the move over at once)."""
        if self._lease is not None:
            await self._lease.release()

    async def _adopt(self) -> None:
        """Takes over the move in progress (its driver holds no lease any more)."""
        async with self._lock:
            topology = await self._latest()
            if topology.move is not None and topology.move.driver != self._router_id:
                await self._resume(topology)

    def _check(self, topology: Topology, progress: MoveProgress) -> None:
        """Before each step: the move is still this router's, and so is its lease."""
        check_driver(topology, progress.id, self._router_id)
        lapsed = self._lease.lapsed() if self._lease is not None else ""
        if lapsed:
            raise MoveConflict(f"move {progress.id} stopped: {lapsed}")

    async def add_node(self, node_id: str, address: str, weight: int) -> MoveProgress:
        async with self._lock:
            topology = await self._latest()
            moving = moving_node(topology)
            if moving is not None:
                if dropping(topology, moving, node_id):
                    return await self._resume(topology)
                if moving.id == node_id and moving.state == LEAVING:
                    return await self._abort(topology, moving, ADD)
                if moving.id == node_id and moving.address == address:
                    return await self._resume(topology)
                raise conflict(topology, self.current)
            check_new_node(node_id, address, weight)
            for node in topology.nodes:
                if node.id == node_id:
                    raise NodeExists(
                        f"node {node_id!r} is already in the topology (epoch {topology.epoch},"
                        f" address {node.address})"
                    )
                if node.address == address:
                    raise NodeExists(f"address {address} is already used by node {node.id!r}")
            joining = NodeConfig(node_id, address, weight, JOINING)
            nodes = (*topology.nodes, joining)
            check_placement_with(topology, nodes, BadNode)
            await probe_new_node(self._probe_client, NodeConfig(node_id, address, weight))
            return await self._begin(topology, ADD, joining, nodes)

    async def remove_node(self, node_id: str) -> MoveProgress:
        async with self._lock:
            topology = await self._latest()
            moving = moving_node(topology)
            if moving is not None:
                if dropping(topology, moving, node_id):
                    return await self._resume(topology)
                if moving.id == node_id and moving.state == JOINING:
                    return await self._abort(topology, moving, REMOVE)
                if moving.id == node_id:
                    return await self._resume(topology)
                raise conflict(topology, self.current)
            node = next((n for n in topology.nodes if n.id == node_id), None)
            if node is None:
                known = ", ".join(n.id for n in topology.nodes)
                raise NodeUnknown(
                    f"no node {node_id!r} in topology epoch {topology.epoch} ({known})"
                )
            if len(topology.nodes) - 1 < topology.replication:
                raise MoveConflict(
                    f"removing {node_id!r} would leave {len(topology.nodes) - 1} node(s) for"
                    f" replication N={topology.replication}"
                )
            leaving = replace(node, state=LEAVING)
            nodes = tuple(leaving if n.id == node_id else n for n in topology.nodes)
            check_placement_with(topology, nodes, MoveConflict)
            return await self._begin(topology, REMOVE, leaving, nodes)

    async def _latest(self) -> Topology:
        """The stored topology, read now: a change is judged against what the store holds,
        not what this router last followed (a move another router began a moment ago)."""
        try:
            await self._membership.reload()
        except Exception as err:  # the change's compare-and-swap will tell
            log.info("reading the topology store before a change failed: %r", err)
        return self._membership.topology

    # -- starting, resuming, aborting ----------------------------------------------------

    async def _begin(
        self, topology: Topology, kind: int, node: NodeConfig, nodes: tuple[NodeConfig, ...]
    ) -> MoveProgress:
        verb = "add" if kind == ADD else "remove"
        record = MoveRecord(f"{verb}-{node.id}@{topology.epoch}", self._router_id, now_ms())
        transition = replace(topology, epoch=topology.epoch + 1, nodes=nodes, move=record)
        async with claimed(self._lease, record.id):
            await self._membership.commit(transition, expected=topology)
        log.info("move %s: transition at epoch %d", record.id, transition.epoch)
        progress = progress_of(transition, self._router_id)
        self._launch(progress)
        return progress

    async def _resume(self, topology: Topology) -> MoveProgress:
        """Runs a stopped move again (from the settle step; repeats are harmless). A move
        another router drove is taken over: this router becomes its driver."""
        if self._task is not None and not self._task.done():
            raise conflict(topology, self.current)
        move = topology.move
        assert move is not None
        async with claimed(self._lease, move.id):
            if move.driver != self._router_id:
                taken = replace(
                    topology, epoch=topology.epoch + 1, move=replace(move, driver=self._router_id)
                )
                await self._membership.commit(taken, expected=topology)
                topology = taken
        progress = progress_of(topology, self._router_id)
        log.info("move %s: resumed", progress.id)
        self._launch(progress)
        return progress

    async def _abort(self, topology: Topology, node: NodeConfig, kind: int) -> MoveProgress:
        """Undoes a stopped transition: the joining node leaves, or the leaving one stays;
        then the nodes that received pieces purge them (MoveSteps.undo)."""
        if self._task is not None and not self._task.done():
            raise conflict(topology, self.current)
        assert topology.move is not None
        stable = aborted_topology(topology, node)
        async with claimed(self._lease, topology.move.id):
            await self._membership.commit(stable, expected=topology)
        if self.current is not None:
            self._finish(self.current)
        log.info("move %s aborted at epoch %d", topology.move.id, stable.epoch)
        progress = MoveProgress(
            f"abort-{topology.move.id}", kind, node.id, node.address, self._router_id,
            topology.epoch, stable.epoch, state=admin_pb2.MOVE_SWITCHED,
        )  # fmt: skip
        try:
            await self._steps.undo(topology, stable, progress)
        except Exception as err:  # the abort stands; a repair pass drops what is left
            log.warning("move %s aborted, its copies not purged: %s", topology.move.id, err)
            progress.error = describe_error(err)
        progress.state, progress.finished_ms = admin_pb2.MOVE_DONE, now_ms()
        self._finish(progress)
        self.current = None
        await self._release()
        return progress

    def _launch(self, progress: MoveProgress) -> None:
        self.current = progress
        self._task = asyncio.create_task(self._run(progress), name=f"move-{progress.id}")

    # -- running ------------------------------------------------------------------------

    async def _run(self, progress: MoveProgress) -> None:
        try:
            await self._pause_repair()
            await claim(self._lease, progress.id)
            topology = self._membership.topology
            self._check(topology, progress)
            await self._steps.fence(topology, topology.nodes)
            assert topology.move is not None
            if topology.move.phase == STREAM:
                await self._stream_and_switch(topology, progress)
            progress.state = admin_pb2.MOVE_SWITCHED
            await self._steps.drop(progress, lambda now: self._check(now, progress))
            if progress.kind == REMOVE:
                await self._steps.hand_over_hints(progress, lambda now: self._check(now, progress))
            current = self._membership.topology
            self._check(current, progress)
            final = final_topology(current)
            await self._membership.commit(final, expected=current)
            progress.state, progress.epoch = admin_pb2.MOVE_DONE, final.epoch
            log.info("move %s: done at epoch %d", progress.id, final.epoch)
        except asyncio.CancelledError:
            progress.error = "stopped with the router; it resumes when the router restarts"
            raise
        except Exception as err:
            progress.state = admin_pb2.MOVE_FAILED
            progress.error = describe_error(err)
            log.error("move %s failed: %s", progress.id, progress.error)
        finally:
            progress.finished_ms = now_ms()
            if progress.state == admin_pb2.MOVE_DONE:
                self._finish(progress)
                self.current = None
                await self._release()

    async def _stream_and_switch(self, topology: Topology, progress: MoveProgress) -> None:
        """Claims the joining directory, copies every changed piece, switches (the move's
        drop phase, epoch + 1) and fences the switch on every node of the move."""
        joining = next((n for n in topology.nodes if n.state == JOINING), None)
        if joining is not None:
            await claim_joining(client_of(self._membership.clients, joining.id), joining, topology)
        transfers = plan_transfers(changed_pieces(topology), self._health.is_down)
        progress.state = admin_pb2.MOVE_COUNTING
        transfers = await count_transfers(self._membership.clients, transfers, progress)
        progress.state = admin_pb2.MOVE_STREAMING
        streamer = Streamer(
            self._membership.clients,
            self._health,
            pacer=Pacer(topology.rebalance.max_records_per_s),
            on_batch=progress.moved,
            name=f"move {progress.id}",
            epoch=topology.epoch,
        )
        async with asyncio.TaskGroup() as group:
            for transfer in transfers:
                group.create_task(streamer.run(transfer))
        targets = {t.target for t in transfers}
        await carry_watermark(self._membership.clients, self._health, targets, topology.epoch)
        current = self._membership.topology
        self._check(current, progress)
        assert current.move is not None
        switched = replace(current, epoch=current.epoch + 1, move=replace(current.move, phase=DROP))
        await self._membership.commit(switched, expected=current)
        progress.state, progress.epoch = admin_pb2.MOVE_SWITCHED, switched.epoch
        log.info(
            "move %s: switched at epoch %d after streaming %d records (%d bytes)",
            progress.id, switched.epoch, progress.keys_moved, progress.bytes_moved,
        )  # fmt: skip
        await self._steps.fence(switched, switched.nodes)
        if progress.kind == REMOVE:
            await self._steps.rehome(switched, progress)

    def _finish(self, progress: MoveProgress) -> None:
        self.history = [*self.history, progress][-HISTORY:]
