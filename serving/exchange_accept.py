"""The exchange port's accept loop: connections taken one at a time within a bound, each
counted from its accept to its close.

asyncio's own server accepts up to its backlog (100) connections in one go before any of
them reaches code that could count it, and a TLS connection reaches that code only once
its handshake is done: with the bound full, a burst of connections took a router started
with 256 descriptors to none left (gRPC's accept loop logged "File descriptor limit
reached"). Here a connection beyond the bound is closed as soon as it is accepted, as
gRPC's max_allowed_incoming_connections closes one on the gRPC port, so the port's
connections hold at most one descriptor more than the bound.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable

from shardkv.serving.exchange_frames import FrameReader

log = logging.getLogger(__name__)


# Serves one accepted connection (its TLS handshake done), read by the FrameReader the
# acceptor made for it; the acceptor closes it after.
Handler = Callable[[asyncio.Transport, FrameReader], Awaitable[None]]
# The kernel's queue of connections not accepted yet (asyncio's default).
BACKLOG = 100
# How long accepting pauses when it fails for want of descriptors (asyncio's own pause).
ACCEPT_RETRY_S = 1.0


class Acceptor:
    """Listens on a host's port and serves each connection with a handler, holding at
    most bound connections at once (connections: their tasks)."""

    def __init__(
        self,
        handler: Handler,
        protocol: Callable[[], FrameReader],
        *,
        bound: int,
        tls: ssl.SSLContext | None,
        handshake_timeout_s: float,
    ) -> None:
        self._handler = handler
        self._protocol = protocol
        self._bound = bound
        self._tls = tls
        self._handshake_timeout_s = handshake_timeout_s
        self._listening: list[tuple[socket.socket, asyncio.Task[None]]] = []
        self.connections: set[asyncio.Task[None]] = set()

    async def start(self, host: str, port: int) -> int:
        """Listens on every address host names (as asyncio.start_server does); returns the
        port bound (the first address's, when port is 0)."""
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        try:
            for family, _, _, _, address in dict.fromkeys(infos):
                sock = socket.create_server(address, family=family, backlog=BACKLOG)
                sock.setblocking(False)
                self._listening.append((sock, loop.create_task(self._accept(sock))))
        except BaseException:
            self.close()
            raise
        return int(self._listening[0][0].getsockname()[1])

    def close(self) -> None:
        """Stops accepting and closes the listening sockets (connections stay open)."""
        for sock, accepting in self._listening:
            accepting.cancel()
            sock.close()
        self._listening.clear()

    async def _accept(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, address = await loop.sock_accept(sock)
            except OSError as err:  # out of descriptors (EMFILE), or the like
                log.warning("exchange port cannot accept a connection: %s", err)
                await asyncio.sleep(ACCEPT_RETRY_S)
                continue
            if len(self.connections) >= self._bound:
                log.warning(
                    "exchange connection from %s closed: %d open (the exchange port's share"
                    " of the connection bound)",
                    peer_name(address),
                    self._bound,
                )
                conn.close()
                continue
            task = loop.create_task(self._connection(conn, peer_name(address)))
            self.connections.add(task)
            task.add_done_callback(self.connections.discard)

    async def _connection(self, conn: socket.socket, peer: str) -> None:
        """The TLS handshake (within the handshake timeout), then the handler."""
        loop = asyncio.get_running_loop()
        # The protocol made here is the one handed on: uvloop's loop returns its own TLS
        # protocol in its place.
        protocol = self._protocol()
        try:
            transport, _ = await loop.connect_accepted_socket(
                lambda: protocol,
                conn,
                ssl=self._tls,
                ssl_handshake_timeout=self._handshake_timeout_s if self._tls else None,
            )
        except OSError as err:  # the handshake failed or took too long; SSLError included
            log.warning("exchange connection from %s failed its TLS handshake: %s", peer, err)
            conn.close()
            return
        except BaseException:
            conn.close()
            raise
        try:
            await self._handler(transport, protocol)
        finally:
            transport.close()


def peer_name(address: object) -> str:
    """A peer as gRPC names one ("ipv4:127.0.0.1:50000"), for logs and telemetry."""
    if not isinstance(address, tuple) or len(address) < 2:
        return "unknown"
    host, port = address[0], address[1]
    return f"ipv6:[{host}]:{port}" if ":" in str(host) else f"ipv4:{host}:{port}"
