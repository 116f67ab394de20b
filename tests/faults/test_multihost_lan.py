"""The multi-host harness itself (tests/netns_hosts.py): hosts reach each other and the test
through the bridge and nothing else, a cut or a separation really stops their traffic and
heals, and a block that fails leaves nothing of its run behind. The fault tests of
test_multihost.py rest on all three.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from netns_hosts import Host, Lan, ip, lan, unavailable

PORT = 9000
# Accepts connections until killed: the far end of every reachability probe.
LISTENER = (
    "import socket, sys\n"
    "server = socket.create_server((sys.argv[1], int(sys.argv[2])))\n"
    "while True:\n"
    "    server.accept()[0].close()\n"
)
PROBE = "import socket, sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1)"


@pytest.fixture(scope="module", autouse=True)
def _namespaces() -> None:
    reason = unavailable()
    if reason:
        pytest.skip(f"multi-host tests need network namespaces: {reason}")


@contextmanager
def listening(host: Host) -> Iterator[None]:
    """A TCP listener on host's address, stopped by its PID afterwards."""
    argv = host.argv([sys.executable, "-c", LISTENER, host.address, str(PORT)])
    proc = subprocess.Popen(argv)
    try:
        deadline = time.monotonic() + 10
        while not reaches(None, host):
            assert proc.poll() is None and time.monotonic() < deadline, "no listener"
            time.sleep(0.1)
        yield
    finally:
        proc.kill()
        proc.wait(10)


def reaches(source: Host | None, target: Host) -> bool:
    """Whether a TCP connection from source (None: the test, on the bridge) to target's
    listener is accepted within a second."""
    if source is None:
        try:
            socket.create_connection((target.address, PORT), timeout=1).close()
        except OSError:
            return False
        return True
    argv = source.argv([sys.executable, "-c", PROBE, target.address, str(PORT)])
    return subprocess.run(argv, capture_output=True, timeout=30, check=False).returncode == 0


@pytest.mark.timeout(60)
def test_hosts_reach_each_other_until_cut_or_separated() -> None:
    with lan(["a", "b", "c"]) as network:
        a, b, c = (network.host(name) for name in "abc")
        assert ip("route", "show", "default", netns=a.netns).strip() == "", "a default route"
        with listening(b):
            assert reaches(None, b) and reaches(a, b) and reaches(c, b)

            network.cut(b)
            assert not reaches(None, b) and not reaches(a, b), "b's link is down"
            network.restore(b)
            assert reaches(None, b) and reaches(a, b)

            network.separate([a], [b])
            assert not reaches(a, b), "a is separated from b"
            assert reaches(c, b) and reaches(None, b), "only a and b are separated"
            network.rejoin()
            assert reaches(a, b)


@pytest.mark.timeout(60)
def test_a_failing_block_leaves_nothing_of_its_run() -> None:
    made: list[Lan] = []
    with pytest.raises(RuntimeError, match="the test failed"):
        with lan(["a", "b"]) as network:
            made.append(network)
            network.separate([network.host("a")], [network.host("b")])
            assert len(network.leftovers()) == 5  # 2 namespaces, 2 bridge ports, the bridge
            raise RuntimeError("the test failed")
    assert made[0].leftovers() == []
    assert made[0].gateway not in ip("-4", "addr", "show"), "the test's address stayed"
