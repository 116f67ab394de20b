"""The SDK reconnects within about two seconds of a router serving again, however long the
router was away (issue 15, multi-host tests).

The router is stopped for 20 s while an SDK client keeps calling it (every call refused),
then started again on the same port. gRPC backs a subchannel off between connection
attempts, by 1.6 times per failure up to ``grpc.max_reconnect_backoff_ms`` (120 s by
default), and channels with the same target and options share the subchannel: before the
SDK bounded the back-off, the old client's calls and a brand-new client's kept failing for
seconds after the router was back (7.5 s in the multi-host run). Both must now succeed
within RECONNECT_S of the router answering its health check.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import Cluster, start_cluster, stopped_after, wait_serving
from shardkv.client import Client, RetryPolicy, ShardKVError

log = logging.getLogger(__name__)

OUTAGE_S = 20.0
# The SDK's max reconnect back-off (1 s) with gRPC's jitter (20 %), and a connect.
RECONNECT_S = 2.0
ONCE = RetryPolicy(max_attempts=1)


@pytest.fixture
def cluster(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    with stopped_after(start_cluster(tmp_path), request) as running:
        yield running


def answers(client: Client) -> bool:
    """Whether one call through client succeeds (a quick failure otherwise)."""
    try:
        client.get(b"reconnect", timeout=0.5)
    except ShardKVError:
        return False
    return True


def seconds_until_answered(client: Client, since: float, limit_s: float = 30.0) -> float:
    """Calls through client until one succeeds; the seconds from since to that success."""
    while not answers(client):
        assert time.monotonic() - since < limit_s, f"no answer {limit_s} s after the restart"
        time.sleep(0.02)
    return time.monotonic() - since


@pytest.mark.timeout(120)
def test_the_sdk_reconnects_soon_after_a_long_router_outage(cluster: Cluster) -> None:
    router = cluster.router
    with Client(router.address, retry=ONCE) as old:
        old.put(b"reconnect", b"v")
        router.stop()
        until = time.monotonic() + OUTAGE_S
        while time.monotonic() < until:
            assert not answers(old), "the router is stopped"
            time.sleep(0.2)
        router.start(wait=False)
        wait_serving(router.address)
        serving = time.monotonic()
        with Client(router.address, retry=ONCE) as new:
            new_s = seconds_until_answered(new, serving)
        old_s = seconds_until_answered(old, serving)
    print(f"answered {new_s:.2f} s (new client), {old_s:.2f} s (old client) after serving")
    assert new_s < RECONNECT_S, f"a new client answered {new_s:.2f} s after the router served"
    assert old_s < RECONNECT_S, f"the old client answered {old_s:.2f} s after the router served"
