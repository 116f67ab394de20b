"""Idle connections cannot shut the metrics endpoint (security review): 32 connections that
never send a request took every slot of a router's endpoint, and scrapes got 503 for as
long as they were held. Now a connection gets 2 s for its first request head, and a new
connection takes the slot of the oldest connection with no request in flight."""

from __future__ import annotations

import re
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from harness import Cluster, start_cluster, stopped_after

HELD = 32  # the endpoint's bound (serving/metrics_http.py, MAX_CONNECTIONS)


@pytest.fixture
def observed(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Cluster]:
    """One node and a router serving metrics."""
    base = tmp_path_factory.mktemp("metrics-idle")
    running = start_cluster(
        base,
        nodes=1,
        replication=1,
        read_quorum=1,
        write_quorum=1,
        router_extra=["--metrics-listen", "127.0.0.1:0"],
    )
    with stopped_after(running, request) as cluster:
        yield cluster


def scrape(address: str) -> int | str:
    """The status of one GET /metrics on a new connection, or what went wrong."""
    try:
        with urllib.request.urlopen(f"http://{address}/metrics", timeout=3) as reply:
            reply.read()
            return int(reply.status)
    except urllib.error.HTTPError as err:
        return err.code
    except OSError as err:
        return repr(err)


def closed(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


@pytest.mark.timeout(60)
def test_idle_connections_do_not_shut_out_scrapes(observed: Cluster) -> None:
    address = re.findall(r"metrics_serving url=http://(\S+)/metrics", observed.router.log())[-1]
    host, _, port = address.rpartition(":")
    assert scrape(address) == 200
    held: list[socket.socket] = []
    results: list[int | str] = []
    lifetimes: list[float] = []
    opened: dict[socket.socket, float] = {}
    try:
        started = time.monotonic()
        while time.monotonic() - started < 6:
            for sock in [s for s in held if closed(s)]:
                lifetimes.append(time.monotonic() - opened.pop(sock))
                sock.close()
                held.remove(sock)
            while len(held) < HELD:  # the attacker keeps the bound full, reopening
                sock = socket.create_connection((host, int(port)))
                opened[sock] = time.monotonic()
                held.append(sock)
            time.sleep(0.2)
            results.append(scrape(address))
    finally:
        for sock in held:
            sock.close()
    print(f"scrapes while {HELD} idle connections were held: {results}")
    # Before: every scrape 503 (all 32 slots held by connections that sent nothing).
    assert results and all(status == 200 for status in results), results
    # Connections that sent nothing are closed: evicted by a newer one, or after 2 s.
    assert lifetimes and max(lifetimes) < 3, lifetimes
    assert scrape(address) == 200
