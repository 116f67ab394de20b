"""The router's side of fencing: the epoch it routes under, catching up when a node says
that epoch is gone, and installing an epoch on nodes (Replica.Fence).

Every call a router sends a node carries the topology epoch it was routed under
(``shardkv-epoch`` metadata, NodeClient). A node fenced at a higher epoch refuses it with
FAILED_PRECONDITION and its fence (``shardkv-fence`` trailing metadata, shardd/fence.py);
the NodeClient reports that here (``RouterEpoch.refused``), which reloads the topology from
the store in the background, and the coordinator waits (``catch_up``) until the router
serves an epoch above the refused one and at least the node's fence before it routes the
request again. A fence is only ever installed after the store holds its epoch (Fence
follows the compare-and-swap), so reloading the store always catches up.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, TypeVar

import grpc
from shardkv.common.deadlines import come
from shardkv.router.placement.current import Placement

if TYPE_CHECKING:
    from shardkv.router.requests.node_client import NodeClient

log = logging.getLogger(__name__)

# How long one wait for a newer epoch may poll the store, and how often.
CATCH_UP_S = 5.0
_POLL_S = 0.1
FENCE_TIMEOUT_S = 5.0

Reload = Callable[[], Awaitable[None]]


class FenceFailed(Exception):
    """Nodes that must hold an epoch could not be fenced (UNAVAILABLE / FAILED_PRECONDITION
    in the move's error); the step is retried when the move resumes."""


class RouterEpoch:
    """The epoch this router serves, and the highest fence nodes reported."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch
        self.fenced = 0
        self._reload: Reload | None = None
        self._reloading: asyncio.Task[None] | None = None

    def bind(self, reload: Reload) -> None:
        """reload: reads the store and adopts what it holds if newer (Membership.reload)."""
        self._reload = reload

    def refused(self, node_id: str, fence: int) -> None:
        """A node refused a call routed under an older epoch: note its fence, and reload
        the topology in the background (one reload at a time)."""
        if fence > self.fenced:
            log.info(
                "node %s is fenced at epoch %d; this router serves %d", node_id, fence, self.epoch
            )
            self.fenced = fence
        if fence > self.epoch:
            self._start_reload()

    def _start_reload(self) -> asyncio.Task[None] | None:
        if self._reload is None:
            return None
        if self._reloading is None or self._reloading.done():
            self._reloading = asyncio.create_task(self._reload_once(self._reload))
        return self._reloading

    @staticmethod
    async def _reload_once(reload: Reload) -> None:
        try:
            await reload()
        except Exception as err:  # the store is away: the next refusal tries again
            log.warning("reloading the topology after a fence refusal failed: %r", err)

    async def catch_up(self, routed: int, timeout_s: float) -> bool:
        """Waits until this router serves an epoch above routed and at least the highest
        fence seen, reloading the store meanwhile; False when timeout_s passed first."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(timeout_s, CATCH_UP_S)
        while self.epoch <= routed or self.epoch < self.fenced:
            if come(deadline, loop.time()):
                return False  # before starting a reload nobody would wait for
            task = self._start_reload()
            if task is None:
                return False
            await asyncio.wait({task}, timeout=max(0.0, deadline - loop.time()))
            if self.epoch <= routed or self.epoch < self.fenced:
                await asyncio.sleep(min(_POLL_S, max(0.0, deadline - loop.time())))
        return True


async def fence_nodes(
    clients: Mapping[str, NodeClient], node_ids: Iterable[str], epoch: int, *, skip: set[str]
) -> None:
    """Installs epoch on every node of node_ids (Replica.Fence, in parallel), except those
    in skip; raises FenceFailed naming each node that did not take it. A node already
    fenced higher refuses: another change is ahead of this one."""
    wanted = sorted(set(node_ids) - skip)

    async def fence(node_id: str) -> str | None:
        client = clients.get(node_id)
        if client is None:
            return f"{node_id} (no channel: not in this router's topology)"
        try:
            await client.fence(epoch, FENCE_TIMEOUT_S)
        except grpc.aio.AioRpcError as err:
            return f"{node_id} ({err.code().name}: {err.details()})"
        return None

    problems = [p for p in await asyncio.gather(*(fence(n) for n in wanted)) if p]
    if problems:
        raise FenceFailed(f"fencing epoch {epoch} failed on {', '.join(problems)}")
    if skip:
        log.warning(
            "epoch %d fenced on %s; not on %s (down)",
            epoch,
            ", ".join(wanted),
            ", ".join(sorted(skip)),
        )


T = TypeVar("T")
Outcome = TypeVar("Outcome")
# How many times one request is routed again after fence refusals.
REROUTES = 3


async def rerouted(
    items: Sequence[T],
    attempt: Callable[[Sequence[T], int], Awaitable[list[Outcome]]],
    failed: Callable[[Outcome], bool],
    *,
    placement: Placement,
    epochs: RouterEpoch | None,
    deadline: float,
) -> list[Outcome]:
    """attempt's outcomes for items, routed under the placement's epoch; the items that
    failed (failed says which) while a node reported a fence above that epoch are routed
    again once this router serves a newer epoch (at most REROUTES times, within deadline,
    loop time). Outcomes that still fail keep their error, which names the epochs."""
    epoch = placement.layout.epoch
    outcomes = await attempt(items, epoch)
    loop = asyncio.get_running_loop()
    for _ in range(REROUTES):
        if epochs is None or epochs.fenced <= epoch:
            break
        again = [i for i, outcome in enumerate(outcomes) if failed(outcome)]
        if not again or not await epochs.catch_up(epoch, deadline - loop.time()):
            break
        log.info("routing %d item(s) again: epoch %d -> %d", len(again), epoch, epochs.epoch)
        epoch = placement.layout.epoch
        retried = await attempt([items[i] for i in again], epoch)
        for index, outcome in zip(again, retried, strict=True):
            outcomes[index] = outcome
    return outcomes
