"""Fixtures the unit tests of the node's store share."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from shardkv.shardd.store import Store


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    """A durable store in a fresh directory, closed after the test."""
    opened = Store(tmp_path / "db")
    try:
        yield opened
    finally:
        opened.close()
