"""The I/O steps of a move around its stream: counting, fencing each epoch on the nodes,
re-homing hints, handing a removed node's hints over, dropping what was given away, and
purging what an aborted move sent.

Drops are retried until done: the switched topology keeps the move, in its ``drop``
phase, until every node that gave pieces away dropped them, so a router that restarts (or
one that takes the move over) drops them again (a purge repeated is harmless). A node DOWN
at that point is not waited for: what it still holds are copies of ranges it does not
own, which the next repair pass drops (repair/anti_entropy.py), and no read counts them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping

import grpc
from shardkv.router.membership.fencing import FenceFailed, fence_nodes
from shardkv.router.membership.live_topology import ClientFactory, Membership
from shardkv.router.membership.move_hints import hand_over_held_hints, rehome_hints
from shardkv.router.membership.move_plan import (
    MoveConflict,
    MoveProgress,
    Transfer,
    changed_pieces,
    client_of,
    describe_error,
    given_away,
    received,
)
from shardkv.router.membership.node_checks import BULK_TIMEOUT_S
from shardkv.router.membership.topology import NodeConfig, Topology
from shardkv.router.requests.health import NodeHealth
from shardkv.router.requests.node_client import NodeClient

log = logging.getLogger(__name__)

# Back-off between rounds of drops (doubling up to the maximum), and how many rounds an
# aborted move's purge gets.
DROP_RETRY_S = 0.5
DROP_RETRY_MAX_S = 10.0
UNDO_ROUNDS = 5
# Rounds of a fence before the move's step fails (the move then waits to be repeated).
FENCE_ROUNDS = 3
FENCE_RETRY_S = 1.0


async def count_transfers(
    clients: Mapping[str, NodeClient], transfers: list[Transfer], progress: MoveProgress
) -> list[Transfer]:
    """Counts what each transfer will stream; a giver that cannot answer is replaced by
    the surviving owners of its pieces."""

    async def count(transfer: Transfer) -> list[Transfer]:
        try:
            digests = await client_of(clients, transfer.source).token_digests(
                transfer.ranges, count_only=True, pace=0, timeout_s=BULK_TIMEOUT_S
            )
        except grpc.aio.AioRpcError as err:
            if not transfer.from_giver:
                raise
            log.warning(
                "move %s: %s cannot count (%s); copying from surviving owners instead",
                progress.id, transfer.source, err.code().name,
            )  # fmt: skip
            return transfer.fallback()
        progress.keys_total += sum(d.count for d in digests)
        progress.bytes_total += sum(d.bytes for d in digests)
        return [transfer]

    planned = await asyncio.gather(*(count(t) for t in transfers))
    return [t for group in planned for t in group]


class MoveSteps:
    """Fencing, re-homing and dropping for the moves of one router."""

    def __init__(
        self, membership: Membership, health: NodeHealth, probe_client: ClientFactory
    ) -> None:
        self._membership = membership
        self._health = health
        self._probe_client = probe_client

    async def fence(self, topology: Topology, nodes: tuple[NodeConfig, ...]) -> None:
        """Installs topology's epoch on nodes (those DOWN skipped: move_driver.py), a few
        rounds (a node that just died is DOWN by the next); a node no longer in this
        router's topology gets a channel of its own for it."""
        clients = self._membership.clients
        extra = {n.id: self._probe_client(n) for n in nodes if n.id not in clients}
        try:
            for round_ in range(FENCE_ROUNDS):
                try:
                    await fence_nodes(
                        {**clients, **extra},
                        [n.id for n in nodes],
                        topology.epoch,
                        skip={n.id for n in nodes if self._health.is_down(n.id)},
                    )
                    return
                except FenceFailed as err:
                    if round_ == FENCE_ROUNDS - 1:
                        raise
                    log.warning("%s; again in %.1f s", err, FENCE_RETRY_S)
                    await asyncio.sleep(FENCE_RETRY_S)
        finally:
            await asyncio.gather(*(c.close() for c in extra.values()))

    async def rehome(self, final: Topology, progress: MoveProgress) -> None:
        """Hints parked for the removed node go to the current owners of their keys."""
        try:
            await rehome_hints(
                self._membership.clients,
                self._membership.placement,
                final.replication,
                progress.node_id,
            )
        except (grpc.aio.AioRpcError, MoveConflict) as err:
            log.warning(
                "move %s: hints for %s not all re-homed (%s); repair covers their keys",
                progress.id,
                progress.node_id,
                describe_error(err),
            )

    async def hand_over_hints(
        self, progress: MoveProgress, check: Callable[[Topology], None]
    ) -> None:
        """The hints and markers the removed node holds for others go to a node that stays
        (move_hints.py), retried until done or the node is DOWN: what a dead node held is
        lost with it, and repair covers those keys. check raises MoveConflict once the
        move is no longer this router's to finish (before every round)."""
        leaving = progress.node_id
        delay = DROP_RETRY_S
        while True:
            check(self._membership.topology)
            if self._health.is_down(leaving):
                log.warning(
                    "move %s: %s is DOWN: the hints it holds wait for repair", progress.id, leaving
                )
                return
            try:
                await hand_over_held_hints(self._membership.clients, self._health, leaving)
                return
            except (grpc.aio.AioRpcError, MoveConflict) as err:
                log.warning(
                    "move %s: hints held by %s not handed over (%s); again in %.1f s",
                    progress.id, leaving, describe_error(err), delay,
                )  # fmt: skip
            await asyncio.sleep(delay)
            delay = min(delay * 2, DROP_RETRY_MAX_S)

    async def drop(self, progress: MoveProgress, check: Callable[[Topology], None]) -> None:
        """Every node that gave pieces away and stays drops them, routed under the epoch in
        force (a node fenced lower is fenced first: NodeCalls.purge_token_ranges); retried
        until each did, or is DOWN (module docstring). check raises MoveConflict once the
        move is no longer this router's to finish (before every round)."""
        dropped: set[str] = set()
        delay = DROP_RETRY_S
        while True:
            topology = self._membership.topology
            check(topology)
            keep = set(topology.weights(joined=True))
            todo = given_away(changed_pieces(topology), keep.__contains__)
            failed = await self._purge(
                {n: r for n, r in todo.items() if n not in dropped}, topology, progress, dropped
            )
            if not failed:
                return
            log.warning(
                "move %s: drops not done on %s; again in %.1f s",
                progress.id, "; ".join(failed), delay,
            )  # fmt: skip
            await asyncio.sleep(delay)
            delay = min(delay * 2, DROP_RETRY_MAX_S)

    async def undo(self, transition: Topology, stable: Topology, progress: MoveProgress) -> None:
        """After an abort: stable's epoch is fenced on every node of the transition, then
        each node that received pieces purges them (a few rounds; DOWN nodes skipped: a
        node leaving is checked empty when added again, a member's leftovers go with the
        next repair pass)."""
        await self.fence(stable, transition.nodes)
        todo = received(changed_pieces(transition))
        purged: set[str] = set()
        extra = {
            n.id: self._probe_client(n)
            for n in transition.nodes
            if n.id in todo and n.id not in self._membership.clients
        }
        try:
            for _ in range(UNDO_ROUNDS):
                left = {n: r for n, r in todo.items() if n not in purged}
                failed = await self._purge(left, stable, progress, purged, extra)
                if not failed:
                    return
                await asyncio.sleep(DROP_RETRY_S)
            log.warning("move %s: aborted, but not purged on %s", progress.id, "; ".join(failed))
        finally:
            await asyncio.gather(*(c.close() for c in extra.values()))

    async def _purge(
        self,
        todo: Mapping[str, list[tuple[int, int]]],
        topology: Topology,
        progress: MoveProgress,
        done: set[str],
        extra: Mapping[str, NodeClient] | None = None,
    ) -> list[str]:
        """Purges each node's ranges under topology's epoch, adding those that did (or are
        DOWN) to done; returns what failed on the others."""
        clients = {**self._membership.clients, **(extra or {})}
        failed = []
        for node_id, ranges in todo.items():
            if self._health.is_down(node_id):
                log.warning("move %s: %s is DOWN: its copies wait for repair", progress.id, node_id)
                done.add(node_id)
                continue
            try:
                progress.keys_dropped += await client_of(clients, node_id).purge_token_ranges(
                    ranges, all_records=True, timeout_s=BULK_TIMEOUT_S, epoch=topology.epoch
                )
            except (grpc.aio.AioRpcError, MoveConflict) as err:
                failed.append(f"{node_id} ({describe_error(err)})")
            else:
                done.add(node_id)
        return failed
