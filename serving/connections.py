"""Bounds on the connections a server keeps: its gRPC server options and descriptor limit.

Idle TCP connections once took every file descriptor of a router, after which new
clients' calls timed out (issue 14 item 7). So each server, router and shardd alike:

- raises its descriptor limit (``RLIMIT_NOFILE``) to the hard maximum at start
  (``raise_descriptor_limit``, called by each ``__main__``);
- holds at most ``max_connections`` connections over its two ports together. The default
  bound is the descriptor limit less a reserve for the process's own files and channels.
  gRPC counts its port's connections inside its core (``grpc.max_allowed_incoming_connections``,
  a number fixed at start, which nothing outside gRPC can add to), so the one bound is
  split once between the ports (``connection_shares``): half for the gRPC port, whose core
  closes any further connection as soon as it has accepted it, half for the exchange port
  (``exchange_listener.py``), which does the same. Counted apart, each with the whole bound,
  idle connections to both ports took every descriptor (README, Operations);
- closes a connection that has not finished the HTTP/2 handshake (or sent its exchange
  hello) within ``handshake_timeout_s`` (``grpc.server_handshake_timeout_ms``; gRPC's own
  default is 120 s), and one that has carried no call, or no frame, for ``idle_s``
  (``grpc.max_connection_idle_ms``, and the exchange listener's own timer);
- with ``max_age_s``, sends every client to a new connection once its connection is that
  old (``grpc.max_connection_age_ms``); calls still running on the old one are cut after
  ``age_grace_s`` (``grpc.max_connection_age_grace_ms``), or run to their end when it is
  unset.

A client that keeps opening connections can still hold every place of the bound; what the
bound protects is the process: descriptors for its node channels, store and logs, and the
calls of clients already connected. gRPC offers no per-peer bound.
"""

from __future__ import annotations

import argparse
import logging
import resource
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

# Descriptors kept back from the connection bound: at least this many, or an eighth.
RESERVE_MIN = 64
MIN_CONNECTIONS = 16
# gRPC refuses (aborts on) a bound of INT_MAX or more.
_INT_MAX = (1 << 31) - 1
_NR_OPEN = Path("/proc/sys/fs/nr_open")


@dataclass(frozen=True)
class ConnectionLimits:
    """How many connections a server holds and how long an unused one may live."""

    # Connections at once; None: the descriptor limit less a reserve (default_bound).
    max_connections: int | None = None
    # Closes connections that have not finished the HTTP/2 handshake by then.
    handshake_timeout_s: float = 10.0
    # Closes connections that carried no call (gRPC) or frame (exchange) for this long;
    # None: never.
    idle_s: float | None = 60.0
    # Sends clients to a new connection after this long; None: never.
    max_age_s: float | None = None
    # Calls still running on a connection past max_age_s get this long; None: no limit.
    age_grace_s: float | None = None


# Nodes: their callers are routers, whose channels are meant to live long.
DEFAULT_CONNECTIONS = ConnectionLimits()
# Routers: clients move to a new connection hourly; calls in flight run to their end.
ROUTER_CONNECTIONS = ConnectionLimits(max_age_s=3600.0)


def descriptor_limit() -> int:
    """This process's soft limit on open file descriptors."""
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def default_bound(descriptors: int) -> int:
    """The connection bound a descriptor limit leaves room for."""
    reserve = max(RESERVE_MIN, descriptors // 8)
    return min(_INT_MAX - 1, max(MIN_CONNECTIONS, descriptors - reserve))


def connection_bound(limits: ConnectionLimits) -> int:
    """The connections a server holds at once over both its ports: the configured bound,
    else what the descriptor limit leaves room for (default_bound)."""
    return limits.max_connections or default_bound(descriptor_limit())


@dataclass(frozen=True)
class ConnectionShares:
    """The one connection bound, split between a server's two ports."""

    grpc: int
    exchange: int


def connection_shares(limits: ConnectionLimits) -> ConnectionShares:
    """Half of the bound for each port (the gRPC port gets the odd one; each at least one).
    Most callers hold one connection to each: a router's channel and exchange connection
    to a node, the asyncio SDK's to a router."""
    bound = connection_bound(limits)
    exchange = max(1, bound // 2)
    return ConnectionShares(grpc=max(1, bound - exchange), exchange=exchange)


def server_options(limits: ConnectionLimits) -> list[tuple[str, int]]:
    """gRPC server options enforcing limits on the gRPC port (its share of the bound read
    from the descriptor limit now); logs what they are."""
    descriptors = descriptor_limit()
    shares = connection_shares(limits)
    options = [
        ("grpc.max_allowed_incoming_connections", shares.grpc),
        ("grpc.server_handshake_timeout_ms", _ms(limits.handshake_timeout_s)),
    ]
    if limits.idle_s:
        options.append(("grpc.max_connection_idle_ms", _ms(limits.idle_s)))
    if limits.max_age_s:
        options.append(("grpc.max_connection_age_ms", _ms(limits.max_age_s)))
        if limits.age_grace_s is not None:
            options.append(("grpc.max_connection_age_grace_ms", _ms(limits.age_grace_s)))
    log.info(
        "connection_limits max_connections=%d grpc=%d exchange=%d descriptors=%d"
        " handshake_timeout_s=%g idle_s=%s max_age_s=%s age_grace_s=%s",
        shares.grpc + shares.exchange,
        shares.grpc,
        shares.exchange,
        descriptors,
        limits.handshake_timeout_s,
        f"{limits.idle_s:g}" if limits.idle_s else "off",
        f"{limits.max_age_s:g}" if limits.max_age_s else "off",
        "unlimited" if limits.age_grace_s is None else f"{limits.age_grace_s:g}",
    )
    return options


def _ms(seconds: float) -> int:
    return max(1, min(_INT_MAX, round(seconds * 1000)))


def raise_descriptor_limit() -> int:
    """Raises the soft descriptor limit to the hard one (or the kernel's nr_open when the
    hard limit is unlimited); logs and returns the limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else _nr_open()
    if soft >= target:
        log.info("descriptor_limit soft=%d hard=%s (already the maximum)", soft, _text(hard))
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (OSError, ValueError) as err:
        log.warning("descriptor_limit soft=%d not raised to %d: %s", soft, target, err)
        return soft
    log.info("descriptor_limit raised from=%d to=%d hard=%s", soft, target, _text(hard))
    return target


def _nr_open() -> int:
    try:
        return int(_NR_OPEN.read_text())
    except (OSError, ValueError):
        return 1 << 20


def _text(limit: int) -> str:
    return "unlimited" if limit == resource.RLIM_INFINITY else str(limit)


def add_flags(parser: argparse.ArgumentParser, defaults: ConnectionLimits) -> None:
    """The flags of ConnectionLimits, the same for shardd and the router (defaults differ)."""
    group = parser.add_argument_group("connections")
    group.add_argument(
        "--max-connections",
        type=_count,
        default=defaults.max_connections,
        help="connections held at once over the gRPC and exchange ports, half each; more are"
        " closed when accepted (default: the descriptor limit less an eighth of it, or less"
        f" {RESERVE_MIN} if that is more)",
    )
    group.add_argument(
        "--handshake-timeout-s",
        type=_positive_seconds,
        default=defaults.handshake_timeout_s,
        help="close connections that have not finished the HTTP/2 handshake (or sent their"
        " exchange hello) by then"
        f" (default {defaults.handshake_timeout_s:g})",
    )
    group.add_argument(
        "--max-connection-idle-s",
        type=_seconds,
        default=defaults.idle_s or 0,
        help="close connections that carried no call (gRPC) or frame (exchange port) for this"
        " long; 0: never"
        f" (default {defaults.idle_s or 0:g})",
    )
    group.add_argument(
        "--max-connection-age-s",
        type=_seconds,
        default=defaults.max_age_s or 0,
        help="send clients to a new connection after this long; 0: never"
        f" (default {defaults.max_age_s or 0:g})",
    )
    group.add_argument(
        "--max-connection-age-grace-s",
        type=_seconds,
        help="cut calls still running this long after their connection's maximum age"
        " (default: let them finish)",
    )


def from_flags(args: argparse.Namespace) -> ConnectionLimits:
    return ConnectionLimits(
        max_connections=args.max_connections,
        handshake_timeout_s=args.handshake_timeout_s,
        idle_s=args.max_connection_idle_s or None,
        max_age_s=args.max_connection_age_s or None,
        age_grace_s=args.max_connection_age_grace_s,
    )


def _count(text: str) -> int:
    value = int(text) if text.isdigit() else 0
    if not 1 <= value < _INT_MAX:
        raise argparse.ArgumentTypeError(f"not a connection count: {text!r}")
    return value


def _positive_seconds(text: str) -> float:
    value = _seconds(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"not a positive number of seconds: {text!r}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= _INT_MAX / 1000:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}")
    return value
