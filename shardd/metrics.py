"""A node's figures: its Prometheus metrics and the answer of Replica.Stats.

Both read the same sources at the moment they are asked (a scrape, a Stats call): the
store's header counters (``Store.stats()``, a few microseconds) and the plain-integer
tallies the committer and NodeStorage keep. Nothing here runs per request; requests are
counted and timed by ``shardkv.serving.telemetry.RequestInterceptor``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from shardkv.serving.telemetry import size_histogram
from shardkv.shardd.gate import StoreClosed
from shardkv.shardd.node import NodeStorage
from shardkv.v1 import replica_pb2


class NodeCollector(Collector):
    """Metrics of one node's store and group committer, computed at scrape time."""

    def __init__(self, storage: NodeStorage) -> None:
        self._storage = storage

    def describe(self) -> list[Metric]:
        return []  # computed at scrape time; nothing to read when registering

    def collect(self) -> Iterator[Metric]:
        storage, committer = self._storage, self._storage.committer
        yield CounterMetricFamily(
            "shardkv_node_commits",
            "Group commits (one journal append and fsync, or one LMDB transaction, each).",
            value=committer.commits,
        )
        yield CounterMetricFamily(
            "shardkv_node_records_committed",
            "Records and hints written by group commits.",
            value=committer.items,
        )
        yield CounterMetricFamily(
            "shardkv_node_writes_shed",
            "Write requests refused because the commit queue was full.",
            value=committer.shed,
        )
        yield size_histogram(
            "shardkv_node_commit_batch_items",
            "Records and hints per group commit.",
            [],
            [([], committer.batch_sizes)],
        )
        yield CounterMetricFamily(
            "shardkv_node_keys_read",
            "Keys read (Replica.Read and KV reads).",
            value=storage.keys_read,
        )
        yield CounterMetricFamily(
            "shardkv_node_read_disk_waits",
            "Reads on the event loop that waited for the disk (a store larger than memory);"
            " each sends reads to the read threads for a while.",
            value=storage.read_place.disk_waits,
        )
        try:
            stats = storage.store.stats()
        except StoreClosed:
            return  # shutting down: the store's figures are gone
        gauges = (
            ("shardkv_node_store_records", "Records stored, tombstones included.", stats.entries),
            ("shardkv_node_store_hints", "Hints parked here for other nodes.", stats.hints),
            ("shardkv_node_store_used_bytes", "Bytes of the LMDB file in use.", stats.used_bytes),
            ("shardkv_node_store_map_size_bytes", "Current LMDB map size.", stats.map_size),
            (
                "shardkv_node_store_max_map_size_bytes",
                "Largest size the LMDB map may grow to.",
                stats.max_map_size,
            ),
            (
                "shardkv_node_store_map_fill_ratio",
                "Used bytes over the current map size (the map doubles when full).",
                stats.used_bytes / stats.map_size if stats.map_size else 0.0,
            ),
        )
        for name, documentation, value in gauges:
            yield GaugeMetricFamily(name, documentation, value=value)
        yield GaugeMetricFamily(
            "shardkv_node_journal_records",
            "Records journaled and not yet checkpointed into LMDB (replayed at a restart).",
            value=stats.journal.records,
        )
        yield CounterMetricFamily(
            "shardkv_node_checkpoints",
            "Checkpoints of the journal into LMDB (one LMDB transaction and fsync each).",
            value=stats.journal.checkpoints,
        )


def node_registry(storage: NodeStorage) -> CollectorRegistry:
    """A registry with the node's own metrics and the process's (CPU, memory, files)."""
    registry = CollectorRegistry(auto_describe=True)
    ProcessCollector(registry=registry)
    registry.register(NodeCollector(storage))
    return registry


async def stats_response(storage: NodeStorage) -> replica_pb2.StatsResponse:
    """The answer of Replica.Stats (the store is read on a worker thread)."""
    stats = await asyncio.to_thread(storage.store.stats)
    return replica_pb2.StatsResponse(
        node_id=storage.node_id,
        records=stats.entries,
        hints=stats.hints,
        used_bytes=stats.used_bytes,
        map_size_bytes=stats.map_size,
        max_map_size_bytes=stats.max_map_size,
        keys_read=storage.keys_read,
        records_written=storage.committer.items,
        uptime_seconds=time.monotonic() - storage.started,
        purge_watermark=stats.purge_watermark,
    )
