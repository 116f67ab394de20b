"""How many bytes of records one read request may hold in the router, and how large an
answer may be.

A BatchGet of a thousand keys may name a thousand 1 MiB values; its answer cannot exceed
the message limit anyway, so the router need not hold more than the few copies of an
answer that fits: one per replica asked (N owners, plus one pending owner during a move).
A ReadBudget watches the replies of one request; past its bound it drops every further
record (its replica counts as failed with RESOURCE_EXHAUSTED), so the request ends without
holding more, and the caller answers that the result cannot fit. Node calls themselves are
capped by value bytes (node_client.MAX_BATCH_BYTES), so what is in flight is bounded too.
The batch path counts each answer entry whole (key, value, tags and version), the general
path a record's key and value.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import grpc
from shardkv.common.limits import Limits
from shardkv.router.requests.coalescer import Deliver, NodeFailure
from shardkv.router.requests.replica_answers import ReplicaAnswers
from shardkv.v1 import replica_pb2

# Room for the framing of an answer beside its entries (the nodes leave the same).
REPLY_FRAMING = 64 << 10
# Bytes an entry of an answer takes beside its key and value: tags, lengths, version,
# status (an upper bound; the nodes count the same).
ENTRY_BYTES = 32

_Ask = tuple[bytes, Deliver[replica_pb2.Record]]


def answer_budget(limits: Limits) -> int:
    """Bytes of entries one answer may carry: the message limit less framing."""
    return limits.max_message_bytes - REPLY_FRAMING


def may_exceed(limits: Limits, entries: int) -> bool:
    """Whether an answer of entries entries could pass the answer budget, were every key
    and value of the largest size allowed."""
    return entries * (limits.max_key_bytes + limits.max_value_bytes + ENTRY_BYTES) > (
        answer_budget(limits)
    )


def too_large(
    limits: Limits, keys: int, distinct: int, size: int, budget: ReadBudget | None
) -> str | None:
    """Why the answer to keys keys (distinct of them distinct), whose entries take size
    bytes, cannot be sent in one message, naming the limit; None when it fits."""
    if not (budget is not None and budget.spent) and size <= answer_budget(limits):
        return None  # the common case, before any message is written
    named = f"of {keys} keys ({distinct} distinct)"
    limit = f"the message limit of {limits.max_message_bytes} bytes (max_message_bytes)"
    if budget is not None and budget.spent:
        return (
            f"{named} cannot fit {limit}: the records read for it passed {budget.max_bytes}"
            " bytes before every key was read"
        )
    return f"{named} would carry {size} bytes, over {limit}; a key named twice counts twice"


class ReadBudget:
    """Bytes of records one request may hold; replies beyond it are dropped."""

    def __init__(self, max_bytes: int, *, message_limit: int) -> None:
        self.max_bytes = max_bytes
        self.held = 0
        # True once a record was dropped: the request's answer cannot be complete.
        self.spent = False
        self._message_limit = message_limit

    @classmethod
    def for_read(cls, limits: Limits, keys: int, replicas: int) -> ReadBudget | None:
        """The budget of a read of keys distinct keys, each asked of up to replicas nodes:
        one answer per replica. None when even the largest values could not exceed it."""
        if not may_exceed(limits, keys):
            return None
        return cls(replicas * answer_budget(limits), message_limit=limits.max_message_bytes)

    def watch(self, node_id: str, asks: Sequence[_Ask]) -> list[_Ask]:
        """The same asks, each delivering through this budget first."""
        return [(key, partial(self._deliver, node_id, deliver)) for key, deliver in asks]

    def take(self, node_id: str, answers: ReplicaAnswers) -> ReplicaAnswers | NodeFailure:
        """A chunk of answers (batch_read.py), held whole or dropped whole: past the bound
        the chunk's replica counts as failed with RESOURCE_EXHAUSTED for each of its keys."""
        size = answers.size
        if self.spent or self.held + size > self.max_bytes:
            self.spent = True
            return self._refusal(node_id)
        self.held += size
        return answers

    def _refusal(self, node_id: str) -> NodeFailure:
        return NodeFailure(
            node_id,
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"the request's records passed {self.max_bytes} bytes: its answer cannot"
            f" fit the message limit of {self._message_limit} bytes",
        )

    def _deliver(
        self,
        node_id: str,
        deliver: Deliver[replica_pb2.Record],
        result: replica_pb2.Record | NodeFailure,
    ) -> None:
        if not isinstance(result, NodeFailure):
            size = len(result.key) + len(result.value)
            if self.spent or self.held + size > self.max_bytes:
                self.spent = True
                result = self._refusal(node_id)
            else:
                self.held += size
        deliver(result)
