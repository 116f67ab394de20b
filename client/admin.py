"""The SDK's Admin calls, declared once: a table of the router's Admin RPCs (name, request,
reply, and whether a failed attempt may be repeated) and the methods ``Client`` and
``AsyncClient`` expose for them, each of which only hands its call to the shell.

How Admin calls travel (the shells' ``_admin_call`` and ``_admin_stream``):

- They go to the routers in the order given, the first that answers, rather than round
  robin as KV calls do, so that a sequence of them (add a node, then follow its move) sees
  one router's view.
- Reads (topology, health, moves, repair status, status, rebuilds, backup before its
  first batch) and ``restore`` (records carry their versions, so a repeat changes nothing)
  are repeated after UNAVAILABLE as the client's ``RetryPolicy`` says, like KV calls.
- ``add_node``, ``remove_node``, ``repair`` and ``rebuild_node`` have a lasting effect, and
  an UNAVAILABLE answer does not tell whether the router acted. They are never sent twice
  to one router: after UNAVAILABLE they go at once to a router this call has not tried, if
  there is one (as shardctl's own Admin client did), and otherwise fail. A node add or
  remove that one router applied is refused by the next (ALREADY_EXISTS, NOT_FOUND or
  FAILED_PRECONDITION), not applied twice; a second repair pass repairs nothing the first
  did not, and a second rebuild of a node only copies its ranges again.

No I/O happens here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Generic, ParamSpec, TypeVar

from google.protobuf.message import Message
from shardkv.v1 import admin_pb2, replica_pb2

from .errors import Internal

P = ParamSpec("P")
Reply = TypeVar("Reply", bound=Message)
F = TypeVar("F", bound=Callable[..., object])


@dataclass(frozen=True, slots=True)
class AdminCall(Generic[Reply]):
    """One Admin RPC ready to send: its method, its request, the reply type it answers
    with, and whether a failed attempt may be repeated (see the module docstring)."""

    method: str
    request: Message
    reply: type[Reply]
    repeatable: bool

    def result(self, reply: object) -> Reply:
        """The reply, checked to be of the type the RPC answers with."""
        if not isinstance(reply, self.reply):
            raise Internal(f"{self.method} answered a {type(reply).__name__} (server bug)")
        return reply


@dataclass(frozen=True, slots=True)
class AdminRPC(Generic[P, Reply]):
    """One row of the table: an Admin RPC's name, request, reply and retry rule."""

    method: str
    request: Callable[P, Message]
    reply: type[Reply]
    repeatable: bool = True

    def call(self, *args: P.args, **kwargs: P.kwargs) -> AdminCall[Reply]:
        """The call with its request built from the arguments."""
        return AdminCall(self.method, self.request(*args, **kwargs), self.reply, self.repeatable)


# The Admin service as the SDK calls it (protos/shardkv/v1/admin.proto documents each RPC).
GET_TOPOLOGY = AdminRPC("GetTopology", admin_pb2.GetTopologyRequest, admin_pb2.Topology)
GET_HEALTH = AdminRPC("GetHealth", admin_pb2.GetHealthRequest, admin_pb2.ClusterHealth)
ADD_NODE = AdminRPC("AddNode", admin_pb2.AddNodeRequest, admin_pb2.Move, repeatable=False)
REMOVE_NODE = AdminRPC("RemoveNode", admin_pb2.RemoveNodeRequest, admin_pb2.Move, repeatable=False)
GET_MOVES = AdminRPC("GetMoves", admin_pb2.GetMovesRequest, admin_pb2.GetMovesResponse)
REPAIR = AdminRPC("Repair", admin_pb2.RepairRequest, admin_pb2.RepairStatus, repeatable=False)
GET_REPAIR = AdminRPC("GetRepair", admin_pb2.GetRepairRequest, admin_pb2.RepairStatus)
GET_STATUS = AdminRPC("GetStatus", admin_pb2.GetStatusRequest, admin_pb2.ClusterStatus)
BACKUP = AdminRPC("Backup", admin_pb2.BackupRequest, replica_pb2.SnapshotBatch)  # a stream
RESTORE = AdminRPC("Restore", admin_pb2.RestoreRequest, admin_pb2.RestoreResponse)
REBUILD_NODE = AdminRPC(
    "RebuildNode", admin_pb2.RebuildNodeRequest, admin_pb2.Rebuild, repeatable=False
)
GET_REBUILDS = AdminRPC("GetRebuilds", admin_pb2.GetRebuildsRequest, admin_pb2.GetRebuildsResponse)


def _doc(twin: Callable[..., object]) -> Callable[[F], F]:
    """Gives an AsyncClient method the docstring of its Client twin (written once)."""

    def copy(method: F) -> F:
        method.__doc__ = twin.__doc__
        return method

    return copy


class AdminMethods:
    """The Admin methods of ``Client``: routers only (a shardd answers ``Unimplemented``).

    Each takes keyword ``timeout=`` (seconds; default the client's) and raises the SDK's
    ``ShardKVError`` classes. Replies are the messages of ``shardkv.v1.admin_pb2``.
    """

    def _admin_call(self, call: AdminCall[Reply], timeout: float | None) -> Reply:
        raise NotImplementedError  # each shell sends it

    def _admin_stream(self, call: AdminCall[Reply], timeout: float | None) -> Iterator[Reply]:
        raise NotImplementedError

    def topology(self, *, timeout: float | None = None) -> admin_pb2.Topology:
        """The cluster's ``Topology`` as the router sees it: epoch, N, R and W, and every
        node with its address, weight, share of the ring and state."""
        return self._admin_call(GET_TOPOLOGY.call(), timeout)

    def health(self, *, timeout: float | None = None) -> admin_pb2.ClusterHealth:
        """The ``ClusterHealth``: ``healthy`` when every node is up, the counts of nodes up
        and down, and each node's state."""
        return self._admin_call(GET_HEALTH.call(), timeout)

    def add_node(
        self, node_id: str, address: str, weight: int = 1, *, timeout: float | None = None
    ) -> admin_pb2.Move:
        """Starts adding a node online; returns the ``Move`` started (follow it with
        ``moves()``). An id or address in use fails with ALREADY_EXISTS, another move
        running with ``FailedPrecondition``. Never repeated on one router (see
        ``shardkv.client.admin``)."""
        return self._admin_call(ADD_NODE.call(id=node_id, address=address, weight=weight), timeout)

    def remove_node(self, node_id: str, *, timeout: float | None = None) -> admin_pb2.Move:
        """Starts decommissioning a node; returns the ``Move`` started (follow it with
        ``moves()``). An unknown id fails with ``NotFound``; another move running, or fewer
        than N nodes left, with ``FailedPrecondition``. Never repeated on one router."""
        return self._admin_call(REMOVE_NODE.call(id=node_id), timeout)

    def moves(self, *, timeout: float | None = None) -> admin_pb2.GetMovesResponse:
        """The moves as ``GetMovesResponse``: ``current`` (set while one runs) and
        ``history`` (those finished), with keys and bytes moved and remaining."""
        return self._admin_call(GET_MOVES.call(), timeout)

    def repair(self, *, timeout: float | None = None) -> admin_pb2.RepairStatus:
        """Starts an anti-entropy pass now, or finds the one running; returns its
        ``RepairStatus`` (follow it with ``repair_status()``). During a move it fails with
        ``FailedPrecondition``. Never repeated on one router."""
        return self._admin_call(REPAIR.call(), timeout)

    def repair_status(self, *, timeout: float | None = None) -> admin_pb2.RepairStatus:
        """The ``RepairStatus`` of the running anti-entropy pass, or of the last one."""
        return self._admin_call(GET_REPAIR.call(), timeout)

    def status(self, *, timeout: float | None = None) -> admin_pb2.ClusterStatus:
        """The ``ClusterStatus``: the topology and each node's figures (records, disk,
        hints, work done); nodes known to be down are not asked (``reachable`` False)."""
        return self._admin_call(GET_STATUS.call(), timeout)

    def backup(
        self, node_id: str, *, timeout: float | None = None
    ) -> Iterator[replica_pb2.SnapshotBatch]:
        """The ``SnapshotBatch`` messages of a consistent copy of a node's store, as the
        router relays them: its records in key order, then the hints it holds (batches with
        ``hint_target`` set). Fetched as the iterator advances; ``timeout`` bounds the whole
        stream and None (the default here) means no bound, as a large store takes as long
        as it takes. A failure after the first batch is raised, never retried."""
        return self._admin_stream(BACKUP.call(node_id=node_id), timeout)

    def restore(
        self, records: Sequence[replica_pb2.Record], *, timeout: float | None = None
    ) -> admin_pb2.RestoreResponse:
        """Writes records with the versions they carry: replicas keep each only when it is
        newer than theirs, so restoring twice changes nothing, and refuse one whose key they
        hold no record of when their tombstone GC has reached past its version (deleted
        after the backup, purged since). Returns ``RestoreResponse``: ``restored``, the
        records that reached the write quorum W; ``skipped``, those refused as possibly
        deleted; and ``failures``, one message per record that missed W. At most the
        router's batch limit per call."""
        return self._admin_call(RESTORE.call(records=records), timeout)

    def rebuild_node(self, node_id: str, *, timeout: float | None = None) -> admin_pb2.Rebuild:
        """Starts rebuilding a node from every other owner of each of its ranges, or finds
        the rebuild running; returns its ``Rebuild`` (follow it with ``rebuilds()``). An
        unknown id fails with ``NotFound``, a move in progress with ``FailedPrecondition``.
        Never repeated on one router."""
        return self._admin_call(REBUILD_NODE.call(id=node_id), timeout)

    def rebuilds(self, *, timeout: float | None = None) -> admin_pb2.GetRebuildsResponse:
        """The latest ``Rebuild`` of each node this router rebuilt or rebuilds."""
        return self._admin_call(GET_REBUILDS.call(), timeout)


class AsyncAdminMethods:
    """The Admin methods of ``AsyncClient``: those of ``Client`` (``AdminMethods``), each a
    coroutine, and ``backup`` an async iterator."""

    async def _admin_call(self, call: AdminCall[Reply], timeout: float | None) -> Reply:
        raise NotImplementedError  # each shell sends it

    def _admin_stream(self, call: AdminCall[Reply], timeout: float | None) -> AsyncIterator[Reply]:
        raise NotImplementedError

    @_doc(AdminMethods.topology)
    async def topology(self, *, timeout: float | None = None) -> admin_pb2.Topology:
        return await self._admin_call(GET_TOPOLOGY.call(), timeout)

    @_doc(AdminMethods.health)
    async def health(self, *, timeout: float | None = None) -> admin_pb2.ClusterHealth:
        return await self._admin_call(GET_HEALTH.call(), timeout)

    @_doc(AdminMethods.add_node)
    async def add_node(
        self, node_id: str, address: str, weight: int = 1, *, timeout: float | None = None
    ) -> admin_pb2.Move:
        return await self._admin_call(
            ADD_NODE.call(id=node_id, address=address, weight=weight), timeout
        )

    @_doc(AdminMethods.remove_node)
    async def remove_node(self, node_id: str, *, timeout: float | None = None) -> admin_pb2.Move:
        return await self._admin_call(REMOVE_NODE.call(id=node_id), timeout)

    @_doc(AdminMethods.moves)
    async def moves(self, *, timeout: float | None = None) -> admin_pb2.GetMovesResponse:
        return await self._admin_call(GET_MOVES.call(), timeout)

    @_doc(AdminMethods.repair)
    async def repair(self, *, timeout: float | None = None) -> admin_pb2.RepairStatus:
        return await self._admin_call(REPAIR.call(), timeout)

    @_doc(AdminMethods.repair_status)
    async def repair_status(self, *, timeout: float | None = None) -> admin_pb2.RepairStatus:
        return await self._admin_call(GET_REPAIR.call(), timeout)

    @_doc(AdminMethods.status)
    async def status(self, *, timeout: float | None = None) -> admin_pb2.ClusterStatus:
        return await self._admin_call(GET_STATUS.call(), timeout)

    @_doc(AdminMethods.backup)
    def backup(
        self, node_id: str, *, timeout: float | None = None
    ) -> AsyncIterator[replica_pb2.SnapshotBatch]:
        return self._admin_stream(BACKUP.call(node_id=node_id), timeout)

    @_doc(AdminMethods.restore)
    async def restore(
        self, records: Sequence[replica_pb2.Record], *, timeout: float | None = None
    ) -> admin_pb2.RestoreResponse:
        return await self._admin_call(RESTORE.call(records=records), timeout)

    @_doc(AdminMethods.rebuild_node)
    async def rebuild_node(
        self, node_id: str, *, timeout: float | None = None
    ) -> admin_pb2.Rebuild:
        return await self._admin_call(REBUILD_NODE.call(id=node_id), timeout)

    @_doc(AdminMethods.rebuilds)
    async def rebuilds(self, *, timeout: float | None = None) -> admin_pb2.GetRebuildsResponse:
        return await self._admin_call(GET_REBUILDS.call(), timeout)
