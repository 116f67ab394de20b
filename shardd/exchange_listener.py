"""The node's exchange port: routers' frames on plain TCP connections, TLS when the node
serves TLS (replica.proto, ExchangeHello, for the wire).

Why not a gRPC stream: on this 2-core machine a message on an open gRPC stream cost each
end about 180 µs of CPU at 8 requests in flight, a length-prefixed frame on an asyncio
connection about 21, and the router's every request is such a hop (README, Performance).

What the port admits is what the gRPC port admits for Replica calls: the connection's
first message is an ExchangeHello checked by NodeAuth once for the connection (the node
token in constant time; under mutual TLS the router certificate's names), refused with the
status a call would get, logged with the peer and never with what it sent. Bounds, so that
no peer can take the node down: the node's connection bound (--max-connections) at once
(others are closed at once); the TLS handshake and the hello within the node's handshake
timeout; a hello at most MAX_HELLO_BYTES and a frame at most the node's message limit plus
FRAME_OVERHEAD (a longer one, or one that is not a frame, is answered with a status naming
the problem and the connection closed); MAX_RUNNING frames
served at once per connection (more are refused with RESOURCE_EXHAUSTED, as calls beyond
maximum_concurrent_rpcs); replies wait for a slow reader (the transport's flow control),
which holds its own connection's frames back, no one else's.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import ssl
from typing import TypeVar

import grpc
from google.protobuf.message import DecodeError
from shardkv.common.wire import FRAME_OVERHEAD, LENGTH_PREFIX
from shardkv.shardd.auth import NodeAuth, admission
from shardkv.shardd.exchange import FrameServer, Refusal, status_reply
from shardkv.v1 import replica_pb2

log = logging.getLogger(__name__)

M = TypeVar("M", replica_pb2.ExchangeHello, replica_pb2.ExchangeFrame)

# The hello: a token, nothing more, and sent before the peer is known.
MAX_HELLO_BYTES = 8 * 1024
# The welcome's trailing metadata naming this node (routers check it).
NODE_ID_KEY = "shardkv-node-id"
# Frames served at once on one connection; a router keeps a few per node in flight.
MAX_RUNNING = 256


class ExchangeListener:
    """Serves frames to routers on one TCP port of the node's host."""

    def __init__(
        self,
        frames: FrameServer,
        *,
        node_id: str,
        auth: NodeAuth,
        tls: ssl.SSLContext | None,
        max_message_bytes: int,
        handshake_timeout_s: float,
        max_connections: int,
    ) -> None:
        """max_connections: connections at once, admitted or not (as the gRPC port's
        bound: a peer that keeps opening connections can hold the ones not admitted yet
        for the handshake timeout each, no longer)."""
        self._frames = frames
        welcome = replica_pb2.ExchangeReply(trailing={NODE_ID_KEY: node_id})
        self._welcome = welcome.SerializeToString()
        self._max_connections = max_connections
        self._auth = auth
        self._tls = tls
        self._max_bytes = max_message_bytes + FRAME_OVERHEAD
        self._handshake_timeout_s = handshake_timeout_s
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
        """Stops accepting and reading; frames already running get up to grace seconds to
        be answered, then every connection is closed."""
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
        try:
            await self._serve(reader, writer)
        finally:
            self._connections.discard(task)
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = _peer(writer)
        running: set[asyncio.Task[None]] = set()
        try:
            async with asyncio.timeout(self._handshake_timeout_s):
                hello_bytes = await self._message(reader, MAX_HELLO_BYTES)
                hello = _parse(replica_pb2.ExchangeHello, hello_bytes, "hello")
            refusal = admission(self._auth, hello.authorization, _certificate_names(writer))
            if refusal is not None:
                log.warning("refused exchange connection from %s: %s", peer, refusal[1])
                raise Refusal(*refusal)
            await _send(writer, self._welcome)  # id 0, code OK: admitted
            loop = asyncio.get_running_loop()
            while True:
                frame_bytes = await self._message(reader, self._max_bytes)
                frame = _parse(replica_pb2.ExchangeFrame, frame_bytes, "frame")
                if frame.id == 0:
                    raise Refusal(grpc.StatusCode.INVALID_ARGUMENT, "frame id 0 is reserved")
                if len(running) >= MAX_RUNNING:
                    message = f"{MAX_RUNNING} frames already running on this connection"
                    reply = status_reply(frame.id, grpc.StatusCode.RESOURCE_EXHAUSTED, message)
                    await _send(writer, reply)
                    continue
                task = loop.create_task(self._answer(frame, writer, peer))
                for group in (running, self._running):
                    group.add(task)
                    task.add_done_callback(group.discard)
        except Refusal as refused:
            log.warning("exchange connection from %s closed: %s", peer, refused.details)
            await _send(writer, status_reply(0, refused.code, refused.details))
        except TimeoutError:
            log.warning("exchange connection from %s sent no hello in time", peer)
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass  # the router went away (or stopped mid-message): nobody is left to answer
        finally:
            if running:  # answered while the connection lasts; stop() bounds the wait
                await asyncio.wait(running)

    async def _message(self, reader: asyncio.StreamReader, limit: int) -> bytes:
        (length,) = LENGTH_PREFIX.unpack(await reader.readexactly(LENGTH_PREFIX.size))
        if length > limit:
            raise Refusal(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"message of {length} bytes exceeds the node's limit of {limit}",
            )
        return await reader.readexactly(length)

    async def _answer(
        self,
        frame: replica_pb2.ExchangeFrame,
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


async def _send(writer: asyncio.StreamWriter, message: bytes) -> None:
    """Writes one message and waits while the peer is slow to read. A connection that
    closed meanwhile has nobody to answer: the message is dropped."""
    if writer.is_closing():
        return
    writer.write(LENGTH_PREFIX.pack(len(message)) + message)
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
