"""TCP keepalive on the long-lived exchange connections (exchange.proto).

A peer whose host dies, or whose link drops everything, sends neither FIN nor RST: without
keepalive its connection stays ESTABLISHED forever, holding a place of the server's
connection bound and a descriptor, and the caller learns of it only when a frame's deadline
passes. With these settings the kernel probes a connection idle for IDLE_S and closes it
after PROBES unanswered probes INTERVAL_S apart, about a minute in all; a live peer
answers the probes itself, at no cost to either process.
"""

from __future__ import annotations

import socket
from typing import Any

IDLE_S = 30
INTERVAL_S = 10
PROBES = 3


def enable(transport: Any) -> None:
    """Turns keepalive on for the TCP socket under an asyncio transport (TLS or not)."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, IDLE_S)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, INTERVAL_S)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, PROBES)
