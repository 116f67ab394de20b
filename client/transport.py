"""How the SDK reaches routers: target lists, round robin with fail-over, TLS and the token.

Shared by both shells; nothing here opens a connection. ``Targets`` spreads calls over
several router addresses and steers away from one that just failed; the shells build
one gRPC channel per address with ``channel_options`` and ``credentials``.
"""

from __future__ import annotations

import ipaddress
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import grpc.aio
from shardkv.common.limits import DEFAULT_LIMITS

# How long a router that answered UNAVAILABLE, or held a call until its time ran out
# (DEADLINE_EXCEEDED: a hung router), is passed over by the round robin (it is still used
# when every router is in that state). gRPC reconnects in the background, so for a router
# that is down this saves the calls that would fail fast in the meantime; for a hung one
# the calls that would wait out their whole timeout on it.
FAILED_TARGET_COOLDOWN_S = 2.0

PemSource = str | Path | bytes


def channel_options() -> list[tuple[str, int]]:
    """Options every SDK channel gets: message caps that fit the largest batch or page, and
    a reconnect back-off bounded at 1 s. gRPC's default grows to 120 s and channels with
    the same target and options share the backed-off subchannel, so after a long outage
    even a new Client kept failing for seconds once the router was back; now it reconnects
    within about a second of it (tests/integration/test_client_reconnect.py). Not
    ``grpc.min_reconnect_backoff_ms``: despite its name it is the connect timeout (gRPC's
    MIN_CONNECT_TIMEOUT, 20 s), which a TLS handshake over a slow link needs."""
    return [
        ("grpc.max_send_message_length", DEFAULT_LIMITS.max_message_bytes),
        ("grpc.max_receive_message_length", DEFAULT_LIMITS.max_message_bytes),
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 1000),
    ]


def sync_channel(address: str, credentials: grpc.ChannelCredentials | None) -> grpc.Channel:
    """A blocking channel to address (not yet connected): TLS with credentials, else plain."""
    if credentials is None:
        return grpc.insecure_channel(address, options=channel_options())
    return grpc.secure_channel(address, credentials, options=channel_options())


def aio_channel(
    address: str,
    credentials: grpc.ChannelCredentials | None,
    interceptors: Sequence[grpc.aio.ClientInterceptor],
) -> grpc.aio.Channel:
    """An asyncio channel to address, bound to the running loop on its first call."""
    options, wrap = channel_options(), list(interceptors)
    if credentials is None:
        return grpc.aio.insecure_channel(address, options=options, interceptors=wrap)
    return grpc.aio.secure_channel(address, credentials, options=options, interceptors=wrap)


def split_targets(targets: str | Sequence[str]) -> list[str]:
    """Router addresses from "h:p", "h:p,h:p" or a sequence of those; at least one."""
    items = [targets] if isinstance(targets, str) else list(targets)
    parsed = [part.strip() for item in items for part in item.split(",") if part.strip()]
    if not parsed:
        raise ValueError("at least one router address (host:port) is required")
    return list(dict.fromkeys(parsed))


def read_pem(source: PemSource | None, what: str) -> bytes | None:
    """PEM bytes as given, or read from the file a str/Path names."""
    if source is None or isinstance(source, bytes):
        return source
    try:
        return Path(source).read_bytes()
    except OSError as err:
        raise ValueError(f"cannot read TLS {what} from {source}: {err.strerror}") from err


@dataclass(frozen=True, slots=True)
class TLSConfig:
    """TLS to the routers: ``ca`` verifies the server (None = the system roots); ``cert``
    and ``key`` (both or neither) present a client certificate for mutual TLS. Each is PEM
    bytes or the path of a PEM file."""

    ca: PemSource | None = None
    cert: PemSource | None = None
    key: PemSource | None = None

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise ValueError("TLS cert and key must be given together (mutual TLS needs both)")

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=read_pem(self.ca, "CA"),
            private_key=read_pem(self.key, "key"),
            certificate_chain=read_pem(self.cert, "certificate"),
        )


def auth_metadata(bearer_token: str | None) -> tuple[tuple[str, str], ...] | None:
    """The per-call metadata carrying the bearer token.

    Sent as plain metadata rather than call credentials because gRPC refuses call
    credentials on plaintext channels, and plaintext on loopback is the default.
    """
    if bearer_token is None:
        return None
    if not bearer_token or any(ch in bearer_token for ch in "\r\n"):
        raise ValueError("bearer_token must be a non-empty single line")
    return (("authorization", f"Bearer {bearer_token}"),)


def is_loopback(target: str) -> bool:
    """Whether a gRPC target ("host:port", "[v6]:port", "dns:///host:port", "unix:path")
    stays on this machine: a Unix socket, "localhost" or a loopback address."""
    if target.startswith(("unix:", "unix-abstract:")):
        return True
    for scheme in ("dns:///", "dns:", "ipv4:", "ipv6:"):
        target = target.removeprefix(scheme)
    host = target.rpartition(":")[0] if target.count(":") == 1 or "]" in target else target
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name other than localhost: it may resolve anywhere


def plaintext_token_targets(
    targets: Sequence[str], tls: TLSConfig | None, bearer_token: str | None
) -> list[str]:
    """The targets a bearer token would cross the network to in plaintext (readable by
    anyone on the path): every non-loopback one when there is a token and no TLS."""
    if bearer_token is None or tls is not None:
        return []
    return [target for target in targets if not is_loopback(target)]


class Targets:
    """Round robin over router addresses that skips, for a while, one that failed.

    Thread-safe; the state is two small fields behind a lock, so one instance serves
    every thread of a ``Client`` and every task of an ``AsyncClient``.
    """

    def __init__(self, addresses: Sequence[str], *, cooldown_s: float = FAILED_TARGET_COOLDOWN_S):
        self.addresses = list(addresses)
        self._cooldown_s = cooldown_s
        self._next = 0
        self._failed_until: dict[str, float] = {}
        self._lock = threading.Lock()

    def pick(self, tried: Sequence[str] = (), *, in_order: bool = False) -> str:
        """The next address, preferring ones not in tried and not recently failed; with
        in_order the first such in the order given, rather than the next round robin."""
        if len(self.addresses) == 1:
            return self.addresses[0]
        now = time.monotonic()
        with self._lock:
            count = len(self.addresses)
            if in_order:
                order = list(self.addresses)
            else:
                order = [self.addresses[(self._next + i) % count] for i in range(count)]
                self._next = (self._next + 1) % count
            candidates = [a for a in order if a not in tried] or order
            healthy = [a for a in candidates if self._failed_until.get(a, 0.0) <= now]
            return (healthy or candidates)[0]

    def untried(self, tried: Sequence[str]) -> bool:
        """Whether some address is not in tried (a fail-over target exists)."""
        return any(address not in tried for address in self.addresses)

    def failed(self, address: str) -> None:
        with self._lock:
            self._failed_until[address] = time.monotonic() + self._cooldown_s

    def succeeded(self, address: str) -> None:
        if address in self._failed_until:
            with self._lock:
                self._failed_until.pop(address, None)
