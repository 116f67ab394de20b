"""Raw TCP on an exchange port (exchange.proto), for tests that speak the wire themselves:
what anyone who can reach the port could send; and, for scripted servers, their side of
the wire and a caller's ExchangeConnection to them."""

from __future__ import annotations

import asyncio
import socket
import struct
import subprocess

from google.protobuf.message import Message
from shardkv.common.exchange_connection import ExchangeConnection
from shardkv.common.wire import LENGTH_PREFIX
from shardkv.v1 import exchange_pb2


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def send(sock: socket.socket, message: bytes) -> None:
    sock.sendall(struct.pack(">I", len(message)) + message)


def reply(sock: socket.socket) -> exchange_pb2.ExchangeReply | None:
    """The next reply, or None when the server closed the connection."""
    header = _exactly(sock, 4)
    if header is None:
        return None
    body = _exactly(sock, struct.unpack(">I", header)[0])
    assert body is not None, "the connection ended inside a reply"
    return exchange_pb2.ExchangeReply.FromString(body)


def hello(sock: socket.socket, authorization: str = "") -> exchange_pb2.ExchangeReply | None:
    send(sock, exchange_pb2.ExchangeHello(authorization=authorization).SerializeToString())
    return reply(sock)


def frame(frame_id: int, method: str, request: Message | bytes) -> bytes:
    body = request if isinstance(request, bytes) else request.SerializeToString()
    message = exchange_pb2.ExchangeFrame(id=frame_id, method=method, request=body, timeout_ms=5000)
    return message.SerializeToString()


def refused_for_good(sock: socket.socket, then: bytes) -> bool:
    """Whether the server closed the connection: then (a frame sent anyway) is not served."""
    try:
        send(sock, then)
        return reply(sock) is None
    except (BrokenPipeError, ConnectionResetError):
        return True


def _exactly(sock: socket.socket, count: int) -> bytes | None:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def keepalive_ends(port: int) -> tuple[int, int]:
    """Of the established TCP connections to port on this host, how many ends, the
    server's (local port = port) and the callers' (peer port = port), have a keepalive
    timer running (`ss -o`, as an operator would look)."""
    listing = subprocess.run(
        ["ss", "-tno", "state", "established"], capture_output=True, text=True, check=True
    ).stdout.splitlines()[1:]
    server = caller = 0
    for line in listing:
        fields = line.split()
        if len(fields) < 4 or "keepalive" not in line:
            continue
        local, peer = fields[2].rpartition(":")[2], fields[3].rpartition(":")[2]
        server += local == str(port)
        caller += peer == str(port)
    return server, caller


async def read_message(reader: asyncio.StreamReader) -> bytes:
    """A scripted server's next message from its caller."""
    (length,) = LENGTH_PREFIX.unpack(await reader.readexactly(LENGTH_PREFIX.size))
    return await reader.readexactly(length)


def framed(*replies: exchange_pb2.ExchangeReply) -> bytes:
    """Replies as a scripted server writes them, each after its length."""
    data = [reply.SerializeToString() for reply in replies]
    return b"".join(LENGTH_PREFIX.pack(len(d)) + d for d in data)


def caller(port: int, connect_timeout_s: float = 2.0) -> ExchangeConnection:
    """An ExchangeConnection to a scripted server on port (its port lookup answers port)."""

    async def lookup(timeout: float) -> tuple[int, dict[str, str]]:
        return port, {}

    return ExchangeConnection(
        "scripted server",
        "127.0.0.1:1",
        exchange_port=lookup,
        tls=None,
        authorization="",
        max_message_bytes=1 << 20,
        connect_timeout_s=connect_timeout_s,
    )
