"""The router's errors and their status codes, registered in the shared table.

The table and the handler wrappers live in shardkv.serving.status; the router's servicers
take the wrappers from here, so these entries are in the table before any handler runs.
"""

from __future__ import annotations

import grpc
from shardkv.common.hlc import ClockStateError
from shardkv.router.membership.move_plan import BadNode, MoveConflict, NodeExists, NodeUnknown
from shardkv.router.membership.topology import TopologyError
from shardkv.router.membership.topology_store import StoreUnavailable
from shardkv.router.requests.scan import ScanUnavailable
from shardkv.serving.status import register, streaming, unary

__all__ = ["AnswerTooLarge", "Exhausted", "Unavailable", "streaming", "unary"]


class Unavailable(Exception):
    """Not enough replicas answered; the message says how many and which failed."""


class Exhausted(Exception):
    """Too few replicas could take the request because one lacked resources (a full store,
    an overloaded node or router queue); the message says which. Passed on as
    RESOURCE_EXHAUSTED rather than UNAVAILABLE: an immediate retry will not help."""


# StoreUnavailable: the topology store (etcd) is away, so topology changes are refused.
# ClockStateError: the clock's reservation could not be renewed (its state file); writes
# wait for it, and a retry can succeed once the file is writable again.
register(
    grpc.StatusCode.UNAVAILABLE, Unavailable, ScanUnavailable, StoreUnavailable, ClockStateError
)


class AnswerTooLarge(Exception):
    """The complete answer would exceed the message limit; the message names the limit and
    the caller must ask for less per call (RESOURCE_EXHAUSTED)."""


register(grpc.StatusCode.RESOURCE_EXHAUSTED, Exhausted, AnswerTooLarge)
register(grpc.StatusCode.INVALID_ARGUMENT, BadNode)
register(grpc.StatusCode.NOT_FOUND, NodeUnknown)
register(grpc.StatusCode.ALREADY_EXISTS, NodeExists)
# Another move runs, or the topology file refuses the change.
register(grpc.StatusCode.FAILED_PRECONDITION, MoveConflict, TopologyError)
