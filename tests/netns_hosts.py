"""Hosts for multi-host tests: one network namespace per host, on a bridge the test creates.

Each host is a namespace with one veth pair: its end inside is ``eth0`` with an address of a
private /24 of 10.213.0.0/16 (a subnet no interface or route of this machine uses yet), its
other end is a port of the run's bridge in the root namespace. The bridge itself holds the
subnet's .254, so the test process (SDK clients, the checker, direct reads of a node) reaches
every host; hosts reach each other through the bridge. No default route, no NAT, no address
outside the subnet: nothing leaves the machine.

Faults are real network faults: ``cut`` sets a host's bridge port down (a black hole both
ways: no RST, only deadlines and keepalives notice), ``separate`` adds blackhole routes
between two sets of hosts (they stop reaching each other, everyone else still reaches both).

Every name carries the run's tag (namespaces ``skv-<tag>-<host>``, bridge ``skb<tag>``,
ports ``skp<tag><nn>``), so leftovers of a killed run never clash with a new one, and a
teardown removes this run's names only (``lan()`` does it in a ``finally``). A process runs
on a host through ``ip netns exec NS argv...``, which execs: the PID is the server's own.
"""

from __future__ import annotations

import fcntl
import os
import random
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

IP = shutil.which("ip") or "/usr/sbin/ip"
SUBNET = "10.213"
BRIDGE_HOST = 254  # the test's own address on the bridge: SUBNET.X.254
LOCK_PATH = "/tmp/shardkv-netns-subnets.lock"
NO_NETFILTER = ("nf_call_iptables", "0", "nf_call_ip6tables", "0", "nf_call_arptables", "0")


# /sys/class/net/<port>/brport/state of a bridge port that forwards (BR_STATE_FORWARDING).
BRIDGE_FORWARDING = "3"


class NetnsError(RuntimeError):
    """An `ip` command failed: carries the command and what it printed."""


def ip(*args: str, netns: str | None = None, check: bool = True) -> str:
    """Runs `ip args` (inside netns when given); returns stdout, raises NetnsError naming
    the command and its stderr when it fails and check is set."""
    argv = [IP, "-n", netns, *args] if netns else [IP, *args]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    if check and done.returncode != 0:
        raise NetnsError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def unavailable() -> str | None:
    """Why this machine cannot give a test network namespaces (None: it can). Creates and
    deletes a probe namespace, since root alone does not prove the kernel allows it."""
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns add)"
    if not os.access(IP, os.X_OK):
        return f"iproute2's ip is not installed ({IP})"
    probe = f"skv-probe-{secrets.token_hex(3)}"
    try:
        ip("netns", "add", probe)
    except NetnsError as err:
        return f"cannot create a network namespace: {err}"
    ip("netns", "del", probe, check=False)
    return None


@dataclass(frozen=True)
class Host:
    """One host: a namespace, its address on the LAN and its port on the bridge."""

    name: str
    netns: str
    address: str
    port: str  # the veth end on the bridge (root namespace): cut and restored

    def argv(self, argv: Sequence[str]) -> list[str]:
        """argv run on this host (`ip netns exec` execs it: the PID stays the program's)."""
        return [IP, "netns", "exec", self.netns, *argv]


@dataclass
class Lan:
    """A bridge and the hosts on it, all named after one run's tag (see the module doc)."""

    tag: str
    octet: int  # the subnet is SUBNET.octet.0/24
    hosts: dict[str, Host] = field(default_factory=dict)
    # Blackhole routes in force: (netns, destination address).
    _blackholes: set[tuple[str, str]] = field(default_factory=set)

    @property
    def bridge(self) -> str:
        return f"skb{self.tag}"

    @property
    def gateway(self) -> str:
        """The test's own address on the LAN (on the bridge, in the root namespace)."""
        return f"{SUBNET}.{self.octet}.{BRIDGE_HOST}"

    def host(self, name: str) -> Host:
        return self.hosts[name]

    def add_host(self, name: str) -> Host:
        """A new namespace wired to the bridge, with lo and eth0 up."""
        index = len(self.hosts) + 1
        assert index < BRIDGE_HOST, "a /24 LAN holds at most 253 hosts"
        netns, port = f"skv-{self.tag}-{name}", f"skp{self.tag}{index:02d}"
        host = Host(name, netns, f"{SUBNET}.{self.octet}.{index}", port)
        self.hosts[name] = host  # recorded first: teardown removes what was half made
        ip("netns", "add", host.netns)
        ip("link", "add", host.port, "type", "veth", "peer", "name", "eth0", "netns", host.netns)
        ip("link", "set", host.port, "master", self.bridge, "up")
        ip("addr", "add", f"{host.address}/24", "dev", "eth0", netns=host.netns)
        ip("link", "set", "lo", "up", netns=host.netns)
        ip("link", "set", "eth0", "up", netns=host.netns)
        return host

    def cut(self, host: Host) -> None:
        """The host's link goes down: nothing reaches it and nothing leaves it."""
        ip("link", "set", host.port, "down")

    def restore(self, host: Host) -> None:
        """The host's link comes back; returns once its bridge port forwards again (a SYN
        sent before that is lost, and TCP retries it only a second later)."""
        ip("link", "set", host.port, "up")
        port = Path("/sys/class/net") / host.port
        deadline = time.monotonic() + 10
        while (port / "operstate").read_text().strip() != "up" or (
            port / "brport" / "state"
        ).read_text().strip() != BRIDGE_FORWARDING:
            if time.monotonic() > deadline:
                raise NetnsError(f"bridge port {host.port} did not come back up within 10 s")
            time.sleep(0.02)

    def separate(self, side: Sequence[Host], other: Sequence[Host]) -> None:
        """Hosts of side and hosts of other stop reaching each other (blackhole routes on
        both sides: packets vanish, connections hang); the rest of the LAN is untouched."""
        for a, b in ((a, b) for a in side for b in other):
            for netns, destination in ((a.netns, b.address), (b.netns, a.address)):
                ip("route", "add", "blackhole", f"{destination}/32", netns=netns)
                self._blackholes.add((netns, destination))

    def rejoin(self) -> None:
        """Removes every blackhole route separate() added."""
        for netns, destination in sorted(self._blackholes):
            ip("route", "del", "blackhole", f"{destination}/32", netns=netns)
            self._blackholes.discard((netns, destination))

    def leftovers(self) -> list[str]:
        """This run's namespaces and links that still exist."""
        found = [ns for ns in ip("netns", "list").split() if ns.startswith(f"skv-{self.tag}-")]
        for line in ip("-o", "link", "show").splitlines():
            name = line.split(":")[1].strip().split("@")[0]
            if name == self.bridge or name.startswith(f"skp{self.tag}"):
                found.append(name)
        return found

    def teardown(self) -> None:
        """Deletes this run's namespaces (their veths go with them), ports and bridge (its
        address goes with it); raises NetnsError listing whatever is still there."""
        for host in self.hosts.values():
            ip("netns", "del", host.netns, check=False)
            ip("link", "del", host.port, check=False)
        ip("link", "del", self.bridge, check=False)
        left = self.leftovers()
        if left:
            raise NetnsError(f"could not remove {left} of run {self.tag}")


@contextmanager
def _subnet_lock() -> Iterator[None]:
    """Holds an exclusive lock shared by every run on this machine (released on close)."""
    with open(LOCK_PATH, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _free_octet() -> int:
    """An X whose SUBNET.X.0/24 no address or route of the root namespace uses (a run
    killed before its teardown may have left one behind)."""
    used = ip("-4", "route", "show") + ip("-4", "addr", "show")
    candidates = list(range(1, 254))
    random.shuffle(candidates)
    for octet in candidates:
        if f"{SUBNET}.{octet}." not in used:
            return octet
    raise NetnsError(f"every /24 of {SUBNET}.0.0/16 is in use")


@contextmanager
def lan(names: Sequence[str]) -> Iterator[Lan]:
    """A bridge with one host per name; everything is removed afterwards, however the block
    ends (the caller stops its processes on the hosts first)."""
    with _subnet_lock():  # two runs at once never pick the same subnet
        network = Lan(secrets.token_hex(3), _free_octet())
        try:
            # Bridged frames skip iptables (br_netfilter), whatever the machine's firewall
            # does with forwarded traffic: the LAN's own hosts always reach each other.
            ip("link", "add", network.bridge, "type", "bridge", *NO_NETFILTER)
            ip("addr", "add", f"{network.gateway}/24", "dev", network.bridge)
        except BaseException:
            network.teardown()
            raise
    try:
        ip("link", "set", network.bridge, "up")
        for name in names:
            network.add_host(name)
        yield network
    finally:
        network.teardown()
