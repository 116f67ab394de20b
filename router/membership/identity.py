"""Which nodes count toward R and W: each node's data directory, checked against the topology.

A data directory carries an identity (shardkv.shardd.identity): the node id it was made
for, the cluster that claimed it and a generation. The topology keeps the generation each
node's directory must have (``generation`` in cluster.toml, 0 when absent) and the
cluster's name (``cluster_id``). The router asks every node that is not DOWN for its
identity once per health interval, and right after a node comes back from DOWN, and sorts
each directory into one of:

- ``ok``: claimed by this cluster (or by an unnamed one), at the expected generation or one
  above it (advanced, not recorded in the topology yet: the router records it).
- ``new``: never claimed, while other nodes of the cluster are (an empty or replaced disk).
- ``behind``: a lower generation than the topology's (a copy restored from before).
- ``foreign``: claimed by another cluster, or the process at the node's address runs under
  another node id.
- ``ahead``: more than one generation above the topology's (the topology was restored).
- ``rebuilding``: a router holds the node's rebuild lease (router/repair/rebuild.py).
- ``unchecked``: not checked since this router started or the node came back.

Only an ``ok`` node counts. Every other node that is not DOWN is one of the placement's
``uncounted``: a pending owner of its ranges (it takes writes, and each of its keys needs one
more reply). A new or behind directory is rebuilt from every other owner of its ranges on
the router's own initiative; foreign and ahead ones only by hand (``shardctl node rebuild``).

When the generation advances:

- A fresh directory has generation 0 and is unclaimed. A new cluster (every node expected at
  generation 0) claims its directories once every node answered unclaimed; a joining node's
  directory (node add needs it empty) is claimed when it is first seen, and by the move
  itself before it streams into it (``claim_joining``). A claim takes the expected
  generation: it writes nothing to the topology.
- A new run of a node (shardd started again) whose directory has the expected generation E:
  the directory advances to E + 1, recording the run, and the topology follows to E + 1 (a
  compare-and-swap, epoch + 1, made when no move is in progress). A directory restored from
  a copy taken before that run carries a generation below the topology's: behind.
- A rebuild completes: the directory gets E + 1, then the topology.

Several routers judge the same directories, each with a topology that may lag the store:
a directory that looks new, behind, foreign or ahead is judged again against the newest
stored topology and its identity as it is then, before anything follows from it. And a
new cluster's claims found half made (routers started together; one stopped mid-way) are
completed, not taken for wiped directories, while nothing was written (claims.py).

The directory always advances first, so a crash in between leaves it one above the topology,
which counts as ``ok`` and is recorded then. A copy taken since the node's last recorded run
cannot be told from the directory itself.

Fencing: a node whose fence (shardd/fence.py; the identity reports it) is below the epoch
this router serves is fenced at that epoch when it is checked, before it counts. That
covers a node that was DOWN while a move fenced the others, and topology changes that
fence nothing themselves (a generation recorded here: it changes no placement, and a
router still at the epoch before serves the same owners, counting fewer of them).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace

import grpc

# claim_joining is the move driver's (move_driver.py imports it from here).
from shardkv.router.membership.claims import claim_joining as claim_joining
from shardkv.router.membership.claims import claims_half_made
from shardkv.router.membership.live_topology import Membership
from shardkv.router.membership.topology import JOINING, NodeConfig, Topology, TopologyError
from shardkv.router.membership.topology_store import StoreUnavailable, TopologyConflict
from shardkv.router.requests.health import NodeHealth
from shardkv.v1 import replica_pb2

log = logging.getLogger(__name__)

OK, UNCHECKED, NEW, BEHIND = "ok", "unchecked", "new", "behind"
FOREIGN, AHEAD, REBUILDING = "foreign", "ahead", "rebuilding"
# Judged so only after re-reading the stored topology and the directory (_newest).
DOUBTFUL = frozenset({NEW, BEHIND, FOREIGN, AHEAD})
# A rebuild lease left idle this long has lapsed (the node grants it to another router).
LEASE_IDLE_MS = 10_000

# Told of a node whose directory must be rebuilt: (node id, "new" or "behind").
LostListener = Callable[[str, str], None]


@dataclass(frozen=True)
class DirectoryView:
    """A node's directory as this router last saw it."""

    state: str
    identity: replica_pb2.DirectoryIdentity | None = None
    detail: str = ""


@dataclass(frozen=True)
class _Round:
    """One fetch of every node's identity, and the topology it is judged against."""

    topology: Topology
    returns: dict[str, int]
    fetched: dict[str, replica_pb2.DirectoryIdentity]


UNCHECKED_VIEW = DirectoryView(UNCHECKED, None, "not checked since the node started or returned")


def classify(
    node: NodeConfig, topology: Topology, identity: replica_pb2.DirectoryIdentity
) -> tuple[str, str]:
    """The state of node's directory (see the module docstring) and why."""
    expected, generation = node.generation, identity.generation
    if identity.node_id != node.id:
        return FOREIGN, f"the node at {node.address} runs as {identity.node_id!r}, not {node.id!r}"
    if identity.rebuild_by and identity.rebuild_idle_ms < LEASE_IDLE_MS:
        return REBUILDING, f"rebuilt by router {identity.rebuild_by}"
    if not identity.claimed:
        return NEW, "never claimed by the cluster: an empty or replaced data directory"
    ours, theirs = topology.cluster_id, identity.cluster_id
    if ours and theirs and ours != theirs:
        return FOREIGN, f"claimed by cluster {theirs!r}, not {ours!r}"
    if generation < expected:
        return BEHIND, (
            f"generation {generation}, below the topology's {expected}: restored from an older copy"
        )
    if generation > expected + 1:
        return AHEAD, (
            f"generation {generation}, above the topology's {expected}: was the topology"
            " restored from an older copy?"
        )
    return OK, ""


class IdentityGuard:
    """Checks every node's data directory and keeps the placement's uncounted set."""

    def __init__(
        self,
        *,
        membership: Membership,
        health: NodeHealth,
        interval_s: float,
        timeout_s: float,
    ) -> None:
        self._membership = membership
        self._health = health
        self._interval_s = interval_s
        self._timeout_s = timeout_s
        self._views: dict[str, DirectoryView] = {}
        # The last identity each node answered with (whether the cluster was ever claimed).
        self._last: dict[str, replica_pb2.DirectoryIdentity] = {}
        # Bumped when a node returns, so a check begun before that is not believed.
        self._returns: dict[str, int] = {}
        self._listeners: list[LostListener] = []
        self._task: asyncio.Task[None] | None = None
        self._checks: set[asyncio.Task[None]] = set()
        self._round = asyncio.Lock()
        health.on_return(self._returned)
        self._sync()

    def on_lost(self, listener: LostListener) -> None:
        """Calls listener(node_id, state) after each check that finds a new or behind
        directory (a rebuild is due)."""
        self._listeners.append(listener)

    def view(self, node_id: str) -> DirectoryView:
        return self._views.get(node_id, UNCHECKED_VIEW)

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="identity-checks")

    async def stop(self) -> None:
        tasks = [*self._checks, *([self._task] if self._task is not None else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def check_all(self) -> None:
        """One round: checks every node not DOWN, claims, advances and records generations,
        and says which nodes are uncounted."""
        async with self._round:
            await self._check_round()

    def _returned(self, node_id: str) -> None:
        """A node came back from DOWN: it does not count until checked (at once)."""
        self._returns[node_id] = self._returns.get(node_id, 0) + 1
        self._views[node_id] = UNCHECKED_VIEW
        self._sync()
        check = asyncio.get_running_loop().create_task(self.check_all())
        self._checks.add(check)
        check.add_done_callback(self._checks.discard)

    def _sync(self) -> None:
        """Tells the placement which nodes do not count: those not ok and not DOWN (a DOWN
        node answers nothing, so it needs no extra reply)."""
        uncounted = frozenset(
            node.id
            for node in self._membership.topology.nodes
            if self.view(node.id).state != OK and not self._health.is_down(node.id)
        )
        placement = self._membership.placement
        if uncounted != placement.uncounted:
            log.info(
                "nodes not counted toward quorums: %s",
                ", ".join(f"{n} ({self.view(n).state})" for n in sorted(uncounted)) or "none",
            )
            placement.set_uncounted(uncounted)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                await self.check_all()
            except Exception:
                log.exception("checking the nodes' data directories failed")

    async def _fetch(self, node: NodeConfig) -> replica_pb2.DirectoryIdentity | None:
        client = self._membership.clients.get(node.id)
        if client is None or self._health.is_down(node.id):
            return None
        try:
            return await client.identity(replica_pb2.IdentityRequest(), self._timeout_s)
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.UNIMPLEMENTED:
                # A shardd from before directories had identities (a rolling upgrade):
                # counted as it always was.
                return replica_pb2.DirectoryIdentity(
                    node_id=node.id, claimed=True, generation=node.generation
                )
            log.debug("identity of %s: %s", node.id, err.code().name)
            return None

    async def _fetch_round(self) -> _Round:
        """The served topology, then every node's identity (those that answered and did not
        come back from DOWN meanwhile)."""
        topology = self._membership.topology
        returns = dict(self._returns)
        answers = await asyncio.gather(*(self._fetch(node) for node in topology.nodes))
        fetched = {
            node.id: identity
            for node, identity in zip(topology.nodes, answers, strict=True)
            if identity is not None and self._returns.get(node.id, 0) == returns.get(node.id, 0)
        }
        return _Round(topology, returns, fetched)

    async def _newest(self) -> _Round:
        """A round judged against the newest stored topology and the directories as they
        are now. Fetched identities are newer than the served topology, which may lag the
        store (another router recorded a generation or claimed meanwhile): a directory
        that looks new, behind, foreign or ahead is judged again after re-reading both."""
        first = await self._fetch_round()
        if not any(
            classify(node, first.topology, first.fetched[node.id])[0] in DOUBTFUL
            for node in first.topology.nodes
            if node.id in first.fetched
        ):
            return first
        try:
            await self._membership.reload()
        except (StoreUnavailable, TopologyError, OSError) as err:
            log.info("could not re-read the topology before judging directories: %s", err)
        return await self._fetch_round()

    async def _check_round(self) -> None:
        checked = await self._newest()
        topology, returns, fetched = checked.topology, checked.returns, checked.fetched
        self._last.update(fetched)
        known = [self._last.get(node.id) for node in topology.nodes]
        bootstrap = all(node.generation == 0 for node in topology.nodes) and all(
            identity is not None and not identity.claimed for identity in known
        )
        if not bootstrap:
            # Another router's claims of this new cluster, half made: complete them.
            bootstrap = await claims_half_made(
                topology, fetched, self._membership.clients, self._timeout_s
            )
        for node in topology.nodes:
            identity = fetched.get(node.id)
            if identity is None:
                continue
            identity = await self._claim_or_advance(node, topology, identity, bootstrap=bootstrap)
            if identity.fence_epoch < topology.epoch:
                await self._fence(node, topology.epoch)
            if self._returns.get(node.id, 0) != returns.get(node.id, 0):
                continue  # it went away and came back meanwhile: the next check decides
            state, detail = classify(node, topology, identity)
            previous = self._views.get(node.id)
            if previous is None or previous.state != state:
                log.info("data directory of %s: %s %s", node.id, state, detail)
            self._views[node.id] = DirectoryView(state, identity, detail)
        for node_id in list(self._views):
            if all(node.id != node_id for node in topology.nodes):
                del self._views[node_id]
        self._sync()
        await self._record()
        # A fresh directory in a cluster none of whose directories is known claimed yet
        # waits for the claim (a new cluster with a node not started), not for a rebuild.
        claimed = any(identity is not None and identity.claimed for identity in known)
        for node in topology.nodes:
            state = self.view(node.id).state
            due = state == BEHIND or (state == NEW and claimed)
            if node.id in fetched and due and topology.move is None and not bootstrap:
                for listener in self._listeners:
                    listener(node.id, state)

    async def _fence(self, node: NodeConfig, epoch: int) -> None:
        """Raises node's fence to epoch (a node fenced higher already refuses: fine)."""
        client = self._membership.clients.get(node.id)
        if client is None:
            return
        try:
            await client.fence(epoch, self._timeout_s)
        except grpc.aio.AioRpcError as err:
            log.info("could not fence %s at epoch %d: %s", node.id, epoch, err.details())
            return
        log.info("fenced %s at epoch %d", node.id, epoch)

    async def _claim_or_advance(
        self,
        node: NodeConfig,
        topology: Topology,
        identity: replica_pb2.DirectoryIdentity,
        *,
        bootstrap: bool,
    ) -> replica_pb2.DirectoryIdentity:
        """Claims a fresh directory of a new cluster or a joining node (at the expected
        generation), or advances an ok directory at the expected generation whose current
        run is not recorded yet (no move in progress); returns the identity now."""
        state, _ = classify(node, topology, identity)
        if state == NEW and (bootstrap or node.state == JOINING):
            generation = node.generation
        elif (
            state == OK
            and identity.generation == node.generation
            and identity.boot != identity.advanced_boot
            and topology.move is None
        ):
            generation = node.generation + 1
        else:
            return identity
        request = replica_pb2.SetIdentityRequest(
            expect_generation=identity.generation,
            expect_claimed=identity.claimed,
            expect_cluster_id=identity.cluster_id,
            cluster_id=topology.cluster_id or identity.cluster_id,
            generation=generation,
            advance_boot=True,
        )
        client = self._membership.clients.get(node.id)
        if client is None:
            return identity
        try:
            changed = await client.identity(request, self._timeout_s)
        except grpc.aio.AioRpcError as err:
            # Another router changed it first (or the node went away): judge what it is now.
            log.info("could not update the data directory of %s: %s", node.id, err.details())
            return await self._fetch(node) or identity
        what = "claimed" if state == NEW else "advanced for its new run"
        log.info("data directory of %s %s: generation %d", node.id, what, generation)
        return changed

    async def _record(self) -> None:
        """Raises the topology's generation of every ok node whose directory is one above
        it, in one compare-and-swap (epoch + 1); not during a move, whose steps are
        compare-and-swaps of their own."""
        topology = self._membership.topology
        raised = {}
        for node in topology.nodes:
            view = self.view(node.id)
            if view.state == OK and view.identity is not None:
                if view.identity.generation == node.generation + 1:
                    raised[node.id] = view.identity.generation
        if not raised or topology.move is not None or self._membership.store is None:
            return
        nodes = tuple(replace(n, generation=raised.get(n.id, n.generation)) for n in topology.nodes)
        new = replace(topology, epoch=topology.epoch + 1, nodes=nodes)
        try:
            await self._membership.commit(new, expected=topology)
        except (TopologyConflict, StoreUnavailable, TopologyError) as err:
            log.info("recording generations %s not done now: %s", raised, err)
            return
        log.info(
            "recorded data directory generations %s at epoch %d",
            ", ".join(f"{n}={g}" for n, g in sorted(raised.items())),
            new.epoch,
        )
