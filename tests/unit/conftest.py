"""Fixtures the unit tests share: the node's store, and batch reads that ask in a known
order."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from shardkv.router.requests import replica_latency
from shardkv.shardd.store import Store


class FirstNodeFirst:
    """In place of the random module for replica_latency.AskOrders: every batch's order
    starts at the first node, the ring's first node id (among those not slow)."""

    @staticmethod
    def randrange(count: int) -> int:
        return 0

    @staticmethod
    def choice(positions: list[int]) -> int:
        return positions[0]


@pytest.fixture
def first_node_first(monkeypatch: pytest.MonkeyPatch) -> None:
    """Batch reads ask each key's owners in the order of their node ids (FakeCluster.asked),
    so that a test knows which owners a read asks."""
    monkeypatch.setattr(replica_latency, "random", FirstNodeFirst())


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    """A durable store in a fresh directory, closed after the test."""
    opened = Store(tmp_path / "db")
    try:
        yield opened
    finally:
        opened.close()
