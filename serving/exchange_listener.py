"""The exchange port: unary calls as frames on plain TCP connections, TLS when the server
serves TLS (exchange.proto, for the wire), for routers and nodes alike.

Why not gRPC: on this 2-core machine a unary gRPC call cost its server about 470 µs of
CPU and its client 340 at 8 calls in flight, a length-prefixed frame on an asyncio
connection 33 and 36 (README, Performance), and every request crosses such hops.

What the port admits is what the gRPC port admits for the same calls: the connection's
first message is an ExchangeHello checked once for the connection by the server's
admission rule (a token in constant time; under mutual TLS the certificate's names),
refused with the status a call would get, logged with the peer and never with what it
sent. Bounds, so that no peer can take the server down: its connection bound
(--max-connections) at once (others are closed at once); the TLS handshake and the hello
within its handshake timeout; a hello at most MAX_HELLO_BYTES and a frame at most the
message limit plus FRAME_OVERHEAD (a longer one, or one that is not a frame, is answered
with a status naming the problem and the connection closed); MAX_FRAMES_RUNNING frames
served at once per connection (more are refused with RESOURCE_EXHAUSTED; callers send
what is beyond by gRPC, where maximum_concurrent_rpcs bounds it); replies wait for a slow
reader (the transport's flow control), which holds its own connection's frames back, no
one else's.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import grpc
from google.protobuf.message import DecodeError
from shardkv.common import keepalive
from shardkv.common.wire import FRAME_OVERHEAD, LENGTH_PREFIX, MAX_FRAMES_RUNNING
from shardkv.serving.connections import ConnectionLimits, connection_bound
from shardkv.serving.exchange_server import FrameServer, Refusal, status_reply
from shardkv.v1 import exchange_pb2

log = logging.getLogger(__name__)

M = TypeVar("M", exchange_pb2.ExchangeHello, exchange_pb2.ExchangeFrame)
# Whether a connection is admitted: (its hello's authorization, the names of its TLS
# certificate) -> None, or the status and reason of the refusal.
Admission = Callable[[str, list[str]], tuple[grpc.StatusCode, str] | None]

# The hello: a token, nothing more, and sent before the peer is known.
MAX_HELLO_BYTES = 8 * 1024


def add_flags(parser: argparse.ArgumentParser, calls: str, callers: str) -> None:
    """--exchange-port and --advertise-exchange-port, for a server whose callers (e.g.
    "routers") send these calls (e.g. "Apply and Read") as frames."""
    parser.add_argument(
        "--exchange-port",
        type=_port,
        default=0,
        help=f"TCP port, on the --listen host, for {callers}' frames ({calls}); with TLS and"
        f" the same credentials as the gRPC port. Default 0: any free port, which {callers}"
        " learn from the server (set one to open it in a firewall)",
    )
    parser.add_argument(
        "--advertise-exchange-port",
        type=_port,
        default=0,
        help=f"the port {callers} are told to reach the exchange port at, when a proxy or a"
        " port mapping stands in front of it (default: the port bound)",
    )


def _port(text: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"not a port: {text!r}")
    return int(text)


def server_ssl_context(cert: Path, key: Path, client_ca: Path | None) -> ssl.SSLContext:
    """The exchange port's TLS: the server's certificate and key, and with client_ca
    callers must present a certificate that chains to it (mutual TLS), as on gRPC."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    if client_ca is not None:
        context.load_verify_locations(cafile=client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


class ExchangeListener:
    """Serves frames on one TCP port of the server's host."""

    def __init__(
        self,
        frames: FrameServer,
        *,
        admission: Admission,
        welcome: dict[str, str],
        tls: ssl.SSLContext | None,
        max_message_bytes: int,
        connections: ConnectionLimits,
        max_running: int,
    ) -> None:
        """connections: the server's bound on connections at once, admitted or not, and
        its handshake timeout, as on its gRPC port (a peer that keeps opening connections
        can hold the ones not admitted yet for the handshake timeout each, no longer; idle
        and age limits are gRPC's, and TCP keepalive's here); max_running: frames served at once
        over all connections (the server's --max-concurrent-rpcs, as on its gRPC port);
        welcome: the trailing metadata of the
        answer to an admitted hello (naming the server, which callers may check)."""
        self._frames = frames
        self._welcome = exchange_pb2.ExchangeReply(trailing=welcome).SerializeToString()
        self._max_connections = connection_bound(connections)
        self._max_running = max_running
        self._admission = admission
        self._tls = tls
        self._max_bytes = max_message_bytes + FRAME_OVERHEAD
        self._handshake_timeout_s = connections.handshake_timeout_s
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._running: set[asyncio.Task[None]] = set()

    async def start(self, host: str, port: int = 0) -> int:
        """Listens on host:port (0: a port the OS picks); returns the bound port."""
        server = await asyncio.start_server(
            self._accept,
            host.strip("[]"),
            port,
            ssl=self._tls,
            ssl_handshake_timeout=self._handshake_timeout_s if self._tls else None,
        )
        self._server = server
        return int(server.sockets[0].getsockname()[1])

    async def stop(self, grace: float) -> None:
        """Stops accepting and reading, telling each caller the last frame read (the
        others may go elsewhere); frames already running get up to grace seconds to be
        answered, then every connection is closed."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for connection in list(self._connections):
            connection.cancel()
        if self._running:
            await asyncio.wait(set(self._running), timeout=grace)
        for task in list(self._running):
            task.cancel()
        await asyncio.gather(*self._connections, *self._running, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self._connections) >= self._max_connections or self._server is None:
            peer = _peer(writer)
            bound = self._max_connections
            log.warning("exchange connection from %s closed: %d open", peer, bound)
            writer.close()
            return
        self._connections.add(task)
        keepalive.enable(writer.transport)
        try:
            await self._serve(reader, writer)
        finally:
            self._connections.discard(task)
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = _peer(writer)
        running: set[asyncio.Task[None]] = set()
        last_id = 0  # the newest frame read
        try:
            async with asyncio.timeout(self._handshake_timeout_s):
                hello_bytes = await self._message(reader, MAX_HELLO_BYTES)
                hello = _parse(exchange_pb2.ExchangeHello, hello_bytes, "hello")
            refusal = self._admission(hello.authorization, _certificate_names(writer))
            if refusal is not None:
                raise Refusal(*refusal)
            await _send(writer, self._welcome)  # id 0, code OK: admitted
            loop = asyncio.get_running_loop()
            while True:
                frame_bytes = await self._message(reader, self._max_bytes)
                frame = _parse(exchange_pb2.ExchangeFrame, frame_bytes, "frame")
                if frame.id == 0:
                    raise Refusal(grpc.StatusCode.INVALID_ARGUMENT, "frame id 0 is reserved")
                last_id = max(last_id, frame.id)
                busy = self._busy(len(running))
                if busy is not None:
                    reply = status_reply(frame.id, grpc.StatusCode.RESOURCE_EXHAUSTED, busy)
                    await _send(writer, reply)
                    continue
                task = loop.create_task(self._answer(frame, writer, peer))
                for group in (running, self._running):
                    group.add(task)
                    task.add_done_callback(group.discard)
        except asyncio.CancelledError:
            # The server stops (stop()): the caller learns which frames were read, which
            # are answered within the grace, and sends the others elsewhere.
            if not writer.is_closing():
                writer.write(_framed(_going_away(last_id)))
            if running:
                await asyncio.wait(running)
            raise
        except Refusal as refused:
            log.warning("refused exchange connection from %s: %s", peer, refused.details)
            await _send(writer, status_reply(0, refused.code, refused.details))
        except TimeoutError:
            log.warning("exchange connection from %s sent no hello in time", peer)
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass  # the caller went away (or stopped mid-message): nobody is left to answer
        # Nobody is left to take the answers of the frames still running: they are
        # cancelled, as gRPC cancels the calls of a connection that ends. (A server
        # stopping cancels this task instead, and stop() gives them the grace.)
        for task in running:
            task.cancel()
        if running:
            await asyncio.wait(running)

    def _busy(self, running: int) -> str | None:
        """Why a frame is refused for load (RESOURCE_EXHAUSTED, as gRPC refuses calls
        beyond maximum_concurrent_rpcs); None when it may run."""
        if running >= MAX_FRAMES_RUNNING:
            return f"{MAX_FRAMES_RUNNING} frames already running on this connection"
        if len(self._running) >= self._max_running:
            return f"{self._max_running} frames already running on this server"
        return None

    async def _message(self, reader: asyncio.StreamReader, limit: int) -> bytes:
        (length,) = LENGTH_PREFIX.unpack(await reader.readexactly(LENGTH_PREFIX.size))
        if length > limit:
            raise Refusal(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"message of {length} bytes exceeds this server's limit of {limit}",
            )
        return await reader.readexactly(length)

    async def _answer(
        self,
        frame: exchange_pb2.ExchangeFrame,
        writer: asyncio.StreamWriter,
        peer: str,
    ) -> None:
        reply = await self._frames.answer(frame, peer)
        await _send(writer, reply)


def _parse(kind: type[M], data: bytes, what: str) -> M:
    try:
        return kind.FromString(data)
    except DecodeError as exc:
        raise Refusal(grpc.StatusCode.INVALID_ARGUMENT, f"not an exchange {what}: {exc}") from exc


def _going_away(last_id: int) -> bytes:
    code = grpc.StatusCode.UNAVAILABLE.value[0]
    message = "server stopping"
    return exchange_pb2.ExchangeReply(
        code=code, message=message, last_id=last_id
    ).SerializeToString()


def _framed(message: bytes) -> bytes:
    return LENGTH_PREFIX.pack(len(message)) + message


async def _send(writer: asyncio.StreamWriter, message: bytes) -> None:
    """Writes one message and waits while the peer is slow to read. A connection that
    closed meanwhile has nobody to answer: the message is dropped."""
    if writer.is_closing():
        return
    writer.write(_framed(message))
    try:
        await writer.drain()
    except ConnectionError:
        pass


def _peer(writer: asyncio.StreamWriter) -> str:
    """The peer as gRPC names one ("ipv4:127.0.0.1:50000"), for logs and telemetry."""
    address = writer.get_extra_info("peername")
    if not address:
        return "unknown"
    host, port = address[0], address[1]
    return f"ipv6:[{host}]:{port}" if ":" in host else f"ipv4:{host}:{port}"


def _certificate_names(writer: asyncio.StreamWriter) -> list[str]:
    """The subject CN and the DNS, IP, URI and email alternative names of the peer's
    certificate (none without TLS or a client certificate), as gRPC lists them for a call
    (an IPv6 address as ::1, where Python spells it out)."""
    certificate = writer.get_extra_info("peercert") or {}
    names = [
        value
        for rdn in certificate.get("subject", ())
        for key, value in rdn
        if key == "commonName" and isinstance(value, str)
    ]
    for kind, value in certificate.get("subjectAltName", ()):
        if kind == "IP Address" and isinstance(value, str):
            try:
                names.append(str(ipaddress.ip_address(value.strip())))
            except ValueError:
                continue
        elif kind in ("DNS", "URI", "email") and isinstance(value, str):
            names.append(value)
    return names
