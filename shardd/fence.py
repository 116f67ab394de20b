"""The node's fence: the lowest topology epoch it still serves routers under.

A move installs each new topology epoch on the nodes (Replica.Fence) before the new
placement takes effect and before any range is dropped, so that a router still routing
under an older placement — paused, partitioned, or slow to follow the store — can neither
write, read nor drop anything under it: the node refuses such a call with
FAILED_PRECONDITION and tells the router its fence ("shardkv-fence" trailing metadata),
and the router reloads its topology and routes the request again.

The fence lives in the store's "meta" database, written in its own fsync'd transaction,
and is loaded when the node opens its store, before it serves anything. It changes only
through ``raise_to`` (Replica.Fence), never from an epoch a request claims, so a forged
huge epoch locks nobody out. ``raise_to`` runs on the group committer's thread, the one
thread every write transaction of the node starts from: a write is checked against the
fence on that thread just before its commit, so no fence can rise between the check and
the commit, and a Fence answered means no write routed under a lower epoch commits after.

A call without an epoch is served unfenced, as before fencing existed: every router sends
one on every call (NodeClient), so such a call is not router traffic but an operator's
(grpcurl, tests, tools; under node authentication it needs the node token like any other
call), and it changes no placement. Like etcd, which checks a revision only where a
request names one. What this cannot fence is a router of a version before fencing: upgrade
every router before the first move of a cluster.
"""

from __future__ import annotations

from collections.abc import Iterable

from shardkv.common.limits import LimitExceeded
from shardkv.shardd.store import Store

# gRPC metadata: the epoch a call was routed under (request), the node's fence (trailing).
EPOCH_KEY = "shardkv-epoch"
FENCE_KEY = "shardkv-fence"
# The highest epoch a topology can hold (router/membership/topology.py bounds it so).
MAX_EPOCH = 1 << 62
_META_KEY = b"fence"


class StaleEpoch(Exception):
    """A call routed under an epoch the node no longer serves (FAILED_PRECONDITION, with
    the node's fence in the trailing metadata)."""

    def __init__(self, message: str, fence: int = 0) -> None:
        super().__init__(message)
        self.fence = fence

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        return ((FENCE_KEY, str(self.fence)),)


class FenceLowered(Exception):
    """A Fence below the node's fence (FAILED_PRECONDITION naming both epochs)."""


def epoch_of(metadata: Iterable[tuple[str, str | bytes]] | None) -> int | None:
    """The epoch a call carries (None: none); INVALID_ARGUMENT when it is not a number in
    0..MAX_EPOCH."""
    for key, value in metadata or ():
        if key != EPOCH_KEY:
            continue
        text = value.decode("ascii", "replace") if isinstance(value, bytes) else value
        if not text.isdigit() or int(text) > MAX_EPOCH:
            raise LimitExceeded(
                f"metadata {EPOCH_KEY}={text[:32]!r} is not an epoch (a decimal 0..{MAX_EPOCH})"
            )
        return int(text)
    return None


class Fence:
    """The fence epoch of one node's store."""

    def __init__(self, store: Store, node_id: str) -> None:
        """Loads the fence (blocking: call it on a worker thread, before serving)."""
        self._store = store
        self._node_id = node_id
        raw = store.meta(_META_KEY)
        self.epoch = int(raw) if raw is not None else 0

    def admit(self, epoch: int | None, what: str) -> None:
        """Raises StaleEpoch unless a call routed under epoch may do what now: epoch is
        not below the fence (None: not router traffic, module docstring)."""
        fence = self.epoch
        if epoch is not None and epoch < fence:
            raise StaleEpoch(
                f"stale epoch: {what} was routed under topology epoch {epoch}, node"
                f" {self._node_id} is fenced at epoch {fence}; reload the topology",
                fence,
            )

    def admit_purge(self, epoch: int | None) -> None:
        """Raises StaleEpoch unless a purge routed under epoch runs at exactly the fence:
        ranges given away under one epoch may belong to this node again under a later one,
        and a purge under a later epoch than the fence waits until that epoch is fenced."""
        fence = self.epoch
        if epoch is not None and epoch != fence:
            raise StaleEpoch(
                f"purge routed under epoch {epoch} refused: node {self._node_id} is fenced at epoch"
                f" {fence}, and purges run only at the fenced epoch (fence the node first)",
                fence,
            )

    def raise_to(self, epoch: int) -> int:
        """Raises the fence to epoch, durably, and returns it; the same epoch again is a
        no-op; a lower one raises FenceLowered. Blocking: run it on the commit thread."""
        if epoch > MAX_EPOCH:
            raise LimitExceeded(f"fence epoch {epoch} exceeds the maximum {MAX_EPOCH}")
        if epoch < self.epoch:
            raise FenceLowered(
                f"fence to epoch {epoch} refused: node {self._node_id} is fenced at epoch"
                f" {self.epoch}, and a fence never goes back"
            )
        if epoch > self.epoch:
            self._store.meta(_META_KEY, str(epoch).encode())
            self.epoch = epoch
        return self.epoch
