"""The suite's tiers, and fixtures that start real processes and always stop them, printing
their logs on failure.

Tiers are directories: ``unit/`` runs in-process (no server started), ``integration/``
starts real shardd, router and grpcurl processes, ``faults/`` kills, pauses and cuts them.
Each test is marked with its tier, and the two process tiers also ``slow``, so
``-m "not slow"`` is the fast tier.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import Cluster, Proc, failed, shardd_proc, start_cluster, stopped_after

TIERS = {"unit": (), "integration": ("slow",), "faults": ("slow",)}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    tests_dir = Path(__file__).parent
    for item in items:
        tier = item.path.relative_to(tests_dir).parts[0]
        if tier not in TIERS:
            raise pytest.UsageError(f"{item.nodeid}: tests live in one of {sorted(TIERS)}/")
        for marker in (tier, *TIERS[tier]):
            item.add_marker(marker)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture
def node(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Proc]:
    """One running shardd with its data in a temp dir."""
    proc = shardd_proc(tmp_path, "n1").start()
    try:
        yield proc
    finally:
        proc.stop()
        if failed(request):
            print(f"===== {proc.name} log =====\n{proc.log()[-20000:]}")


@pytest.fixture
def cluster(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """Three nodes (N=3, R=W=2) and one router, as real processes."""
    with stopped_after(start_cluster(tmp_path), request) as running:
        yield running
