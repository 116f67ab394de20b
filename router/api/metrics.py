"""A router's Prometheus metrics beyond per-request counts, computed at scrape time.

The coordinator, the coalescers, hinted hand-off and the health tracker keep plain
integers (``shardkv.serving.tally``); this collector turns them into metric families when
Prometheus scrapes, so the request path never touches prometheus-client. Requests
themselves are counted and timed by ``shardkv.serving.telemetry.RequestInterceptor``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from shardkv.router.membership.move_driver import Rebalancer
from shardkv.router.repair.anti_entropy import AntiEntropy
from shardkv.router.requests.coordinator import Coordinator
from shardkv.router.requests.health import NodeHealth
from shardkv.router.requests.hint_handoff import HintHandoff
from shardkv.router.requests.node_client import NodeClient
from shardkv.serving.telemetry import size_histogram


class RouterCollector(Collector):
    """Quorums, repairs, hints, node states, coalesced batch sizes, anti-entropy and move
    progress of one router."""

    def __init__(
        self,
        *,
        coordinator: Coordinator,
        clients: Mapping[str, NodeClient],
        health: NodeHealth,
        handoff: HintHandoff,
        antientropy: AntiEntropy,
        rebalancer: Rebalancer,
    ) -> None:
        self._coordinator = coordinator
        self._clients = clients
        self._health = health
        self._handoff = handoff
        self._antientropy = antientropy
        self._rebalancer = rebalancer

    def describe(self) -> list[Metric]:
        return []  # computed at scrape time

    def collect(self) -> Iterator[Metric]:
        yield from self._quorums()
        yield from self._repair_pass()
        yield from self._move()
        coordinator, handoff = self._coordinator, self._handoff
        yield CounterMetricFamily(
            "shardkv_router_read_repairs",
            "Stale replicas sent the newest record after a read (read repair).",
            value=coordinator.repairs,
        )
        yield CounterMetricFamily(
            "shardkv_router_hints_stored",
            "Writes parked as hints on a fallback node for an owner that was down.",
            value=coordinator.hints_stored,
        )
        yield CounterMetricFamily(
            "shardkv_router_hints_delivered",
            "Hints handed back to their owner by this router.",
            value=handoff.handed_off,
        )
        pending = GaugeMetricFamily(
            "shardkv_router_hints_pending",
            "Hints waiting on other nodes for this node, as last counted.",
            labels=["node"],
        )
        up = GaugeMetricFamily(
            "shardkv_router_node_up", "1 when this router sees the node UP.", labels=["node"]
        )
        # A snapshot: the event loop's thread may add or drop nodes meanwhile.
        clients = sorted(self._clients.items())
        for node_id, _ in clients:
            pending.add_metric([node_id], handoff.pending.get(node_id, 0))
            up.add_metric([node_id], 1 if self._is_up(node_id) else 0)
        yield pending
        yield up
        yield size_histogram(
            "shardkv_router_node_batch_items",
            "Items per coalesced internal call to a node, by node and call (apply, read).",
            ["node", "call"],
            (
                ([node_id, call], histogram)
                for node_id, client in clients
                for call, histogram in client.batch_sizes().items()
            ),
        )

    def _is_up(self, node_id: str) -> bool:
        try:
            return self._health.is_up(node_id)
        except KeyError:  # a node being added, not checked yet
            return False

    def _quorums(self) -> Iterator[Metric]:
        families = {
            "required": CounterMetricFamily(
                "shardkv_router_replicas_required",
                "Replica replies the quorums of decided keys required (R, W or the level).",
                labels=["op"],
            ),
            "acknowledged": CounterMetricFamily(
                "shardkv_router_replicas_acknowledged",
                "Replica replies received when each key was decided (writes acknowledged,"
                " reads answered); compare with shardkv_router_replicas_required_total.",
                labels=["op"],
            ),
            "failures": CounterMetricFamily(
                "shardkv_router_quorum_failures",
                "Keys whose read or write quorum was not reached.",
                labels=["op"],
            ),
        }
        for op, tally in (("read", self._coordinator.reads), ("write", self._coordinator.writes)):
            families["required"].add_metric([op], tally.required)
            families["acknowledged"].add_metric([op], tally.acknowledged)
            families["failures"].add_metric([op], tally.failures)
        yield from families.values()

    def _move(self) -> Iterator[Metric]:
        """Whether a node add or remove is in progress (every router reads it from the
        topology), and the keys streamed by the one this router drives."""
        moving = self._rebalancer.moving
        yield GaugeMetricFamily(
            "shardkv_router_moves_in_progress",
            "1 while the topology is in transition (a node joining or leaving: its move"
            " streaming, failed or waiting to resume), else 0.",
            value=int(moving),
        )
        # None unless this router drives the move (a FAILED one it drove stays current).
        current = self._rebalancer.current if moving else None
        yield GaugeMetricFamily(
            "shardkv_router_move_keys_total",
            "Keys the move this router drives has to stream, as counted (0: none).",
            value=current.keys_total if current is not None else 0,
        )
        yield GaugeMetricFamily(
            "shardkv_router_move_keys_moved",
            "Keys the move this router drives has streamed so far (0: none); it stays put"
            " while the move is stalled or FAILED.",
            value=current.keys_moved if current is not None else 0,
        )

    def _repair_pass(self) -> Iterator[Metric]:
        """The anti-entropy pass running now, or the last one (its counters restart with
        every pass, so they are gauges)."""
        status = self._antientropy.status
        gauges = (
            (
                "pass",
                "Number of the current or last pass since the router started.",
                status.pass_number,
            ),
            ("running", "1 while a pass runs.", int(self._antientropy.running)),
            ("segments_total", "Token segments the pass compares.", status.segments_total),
            (
                "segments_covered",
                "Segments whose replicas matched or were reconciled.",
                status.segments_covered,
            ),
            ("segments_differing", "Segments whose digests differed.", status.segments_differing),
            (
                "segments_skipped",
                "Segments left out (a replica down or failing).",
                status.segments_skipped,
            ),
            (
                "records_compared",
                "Record versions compared in differing segments.",
                status.records_compared,
            ),
            (
                "records_repaired",
                "Record copies written to replicas that lacked them.",
                status.records_repaired,
            ),
            ("tombstones_purged", "Tombstones purged after the pass.", status.tombstones_purged),
            (
                "last_finished_timestamp_seconds",
                "When the last pass finished (0: none yet).",
                status.finished_ms / 1000,
            ),
        )
        for name, documentation, value in gauges:
            yield GaugeMetricFamily(
                f"shardkv_router_antientropy_{name}", documentation, value=value
            )


def router_registry(collector: RouterCollector) -> CollectorRegistry:
    """A registry with the router's own metrics and the process's (CPU, memory, files)."""
    registry = CollectorRegistry(auto_describe=True)
    ProcessCollector(registry=registry)
    registry.register(collector)
    return registry
