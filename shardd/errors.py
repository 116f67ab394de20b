"""The node's errors and their status codes, registered in the shared table.

The table and the handler wrappers live in shardkv.serving.status; the node's servicers
take the wrappers from here, so these entries are in the table before any handler runs.
"""

from __future__ import annotations

import grpc
from shardkv.serving.status import register, streaming, unary
from shardkv.shardd.commit import CommitterClosed, CommitterOverloaded
from shardkv.shardd.fence import FenceLowered, StaleEpoch
from shardkv.shardd.gate import StoreClosed
from shardkv.shardd.identity import IdentityConflict
from shardkv.shardd.snapshot import SnapshotsBusy
from shardkv.shardd.store import StoreFull, TooManyTargets

__all__ = ["ResponseTooLarge", "streaming", "unary"]


class ResponseTooLarge(Exception):
    """An answer would exceed the gRPC message limit; the caller must ask for less."""


# Full store, full commit queue, oversized answer, hints for too many nodes: retrying at
# once will not help.
register(
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    StoreFull,
    CommitterOverloaded,
    ResponseTooLarge,
    TooManyTargets,
)
# Snapshots at their bound (each a full copy of the store): retry when one has ended.
register(grpc.StatusCode.RESOURCE_EXHAUSTED, SnapshotsBusy)
# The directory's identity is not what the caller saw, or another router rebuilds the node.
register(grpc.StatusCode.FAILED_PRECONDITION, IdentityConflict)
# A call routed under an epoch older than the node's fence (the router reloads its topology
# and routes it again), or a Fence below it.
register(grpc.StatusCode.FAILED_PRECONDITION, StaleEpoch, FenceLowered)
# The node is shutting down: another replica can answer.
register(grpc.StatusCode.UNAVAILABLE, StoreClosed, CommitterClosed)
