"""What happened inside the shardd nodes during a cell, from their Prometheus endpoints.

Scraped at both ends of the window (`--metrics-listen`), the counters give per node: group
commits per second and records per commit (the size of each LMDB transaction and fsync),
keys read per second (a read at R of N asks each node for a share of the keys only), and
per gRPC method the calls per second and mean time from arrival to answer (for
Replica/Apply that is queueing for, and waiting on, a group commit). Where durable writes
fall short of a target, these say whether the commits are too small or too slow.
"""

from __future__ import annotations

import asyncio
import re
import urllib.request
from collections.abc import Mapping
from typing import Any

SCRAPE_TIMEOUT_S = 5.0
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")
_LABEL = re.compile(r'(\w+)="([^"]*)"')
_COMMITS = "shardkv_node_commits_total"
_RECORDS = "shardkv_node_records_committed_total"
_KEYS_READ = "shardkv_node_keys_read_total"
_DURATION = "shardkv_grpc_request_duration_seconds"

Sample = dict[str, float]


def parse(text: str) -> Sample:
    """Prometheus text format -> {"name{labels}": value}; comments and NaN dropped."""
    samples: Sample = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match is None:
            continue
        try:
            value = float(match.group(3))
        except ValueError:
            continue
        if value == value:  # not NaN
            samples[match.group(1) + (match.group(2) or "")] = value
    return samples


def _scrape(url: str) -> Sample:
    with urllib.request.urlopen(url, timeout=SCRAPE_TIMEOUT_S) as reply:
        return parse(reply.read().decode("utf-8", errors="replace"))


class NodeProbe:
    """Reads the metrics endpoints of named nodes (name -> http://host:port/metrics)."""

    def __init__(self, urls: Mapping[str, str]) -> None:
        self.urls = dict(urls)

    async def snapshot(self) -> dict[str, Sample]:
        """Every node's samples now; a node that does not answer is left out."""
        names = list(self.urls)
        replies = await asyncio.gather(
            *(asyncio.to_thread(_scrape, self.urls[n]) for n in names), return_exceptions=True
        )
        return {n: r for n, r in zip(names, replies, strict=True) if isinstance(r, dict)}

    @staticmethod
    def compare(
        before: dict[str, Sample], after: dict[str, Sample], seconds: float
    ) -> dict[str, Any]:
        """Per node: commits/s, records per commit, keys read/s, and per method calls/s and
        mean ms."""
        return {
            node: _node_delta(before[node], after[node], seconds)
            for node in after
            if node in before
        }


def _node_delta(before: Sample, after: Sample, seconds: float) -> dict[str, Any]:
    def delta(key: str) -> float:
        return after.get(key, 0.0) - before.get(key, 0.0)

    commits, records = delta(_COMMITS), delta(_RECORDS)
    methods: dict[str, dict[str, float]] = {}
    for key in after:
        if not key.startswith(_DURATION + "_count{"):
            continue
        calls = delta(key)
        if calls <= 0:
            continue
        labels = dict(_LABEL.findall(key))
        name = f"{labels.get('service', '?').rsplit('.', 1)[-1]}/{labels.get('method', '?')}"
        total_s = delta(key.replace("_count{", "_sum{", 1))
        methods[name] = {
            "calls_per_s": round(calls / seconds, 1),
            "mean_ms": round(1000 * total_s / calls, 3),
        }
    return {
        "commits_per_s": round(commits / seconds, 1),
        "records_per_commit": round(records / commits, 1) if commits else 0.0,
        "keys_read_per_s": round(delta(_KEYS_READ) / seconds, 1),
        "methods": methods,
    }
