"""The exchange port: unary calls as frames on plain TCP connections, TLS when the server
serves TLS (exchange.proto, for the wire), for routers and nodes alike.

Why not gRPC: on this 2-core machine a unary gRPC call cost its server about 470 µs of
CPU and its client 340 at 8 calls in flight, a length-prefixed frame on an asyncio
connection 33 and 36 (README, Performance), and every request crosses such hops.

What the port admits is what the gRPC port admits for the same calls: the connection's
first message is an ExchangeHello checked once for the connection by the server's
admission rule (a token in constant time; under mutual TLS the certificate's names),
refused with the status a call would get, logged with the peer and never with what it
sent. Bounds, so that no peer can take the server down: the port's share of the server's
connection bound (--max-connections, shared with the gRPC port: connections.py) at once
(others are closed at once); the TLS handshake and the hello within its handshake timeout;
no frame for the idle time (--max-connection-idle-s: nothing read and nothing running)
closes the connection, saying which frame was read last (last_id), as gRPC's
max_connection_idle sends a GOAWAY; a hello at most MAX_HELLO_BYTES and a frame at most the
message limit plus FRAME_OVERHEAD (a longer one, or one that is not a frame, is answered
with a status naming the problem and the connection closed); MAX_FRAMES_RUNNING frames
served at once per connection (more are refused with RESOURCE_EXHAUSTED; callers send
what is beyond by gRPC, where maximum_concurrent_rpcs bounds it); a caller slow to read
its replies is not read meanwhile (the transport's flow control: exchange_frames.py),
which holds its own connection's frames back, no one else's.

A caller that ends its half of the stream between two messages (a TCP half-close) may
still read: it is told the last frame read, its frames run and are answered, then the
connection closes. A caller gone for good is noticed by the reset that answers that: its
frames are cancelled, as gRPC cancels the calls of a connection that ends; so are those
of a connection that ends inside a message, or whose reply cannot be written.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import socket
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import grpc
from google.protobuf.message import DecodeError
from shardkv.common import keepalive
from shardkv.common.deadlines import come
from shardkv.common.wire import FRAME_OVERHEAD, MAX_FRAMES_RUNNING, framed
from shardkv.serving.connections import ConnectionLimits, connection_shares
from shardkv.serving.exchange_accept import Acceptor, peer_name
from shardkv.serving.exchange_frames import FrameReader
from shardkv.serving.exchange_server import FrameServer, Refusal, status_reply
from shardkv.v1 import exchange_pb2

log = logging.getLogger(__name__)

M = TypeVar("M", exchange_pb2.ExchangeHello, exchange_pb2.ExchangeFrame)
# Whether a connection is admitted: (its hello's authorization, the names of its TLS
# certificate) -> None, or the status and reason of the refusal.
Admission = Callable[[str, list[str]], tuple[grpc.StatusCode, str] | None]

# The hello: a token, nothing more, and sent before the peer is known.
MAX_HELLO_BYTES = 8 * 1024
# How often a connection whose caller ended its stream is checked for a reset (the caller
# gone), while its frames run.
GONE_POLL_S = 0.1


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
        """connections: the server's bound on connections at once (this port holds its
        share, admitted or not), its handshake timeout and idle time, as on its gRPC port
        (a peer that keeps opening connections can hold the ones not admitted yet for the
        handshake timeout each, admitted ones for the idle time; the age limit is gRPC's
        alone, and TCP keepalive drops dead peers here); max_running: frames served at once
        over all connections (the server's --max-concurrent-rpcs, as on its gRPC port);
        welcome: the trailing metadata of the answer to an admitted hello (naming the
        server, which callers may check)."""
        self._frames = frames
        self._welcome = exchange_pb2.ExchangeReply(trailing=welcome).SerializeToString()
        self._idle_s = connections.idle_s
        self._max_running = max_running
        self._admission = admission
        self._max_bytes = max_message_bytes + FRAME_OVERHEAD
        self._handshake_timeout_s = connections.handshake_timeout_s
        self._acceptor = Acceptor(
            self._serve,
            lambda: FrameReader(MAX_HELLO_BYTES, self._max_bytes),
            bound=connection_shares(connections).exchange,
            tls=tls,
            handshake_timeout_s=connections.handshake_timeout_s,
        )
        self._serving = False
        self._running: set[asyncio.Task[None]] = set()

    async def start(self, host: str, port: int = 0) -> int:
        """Listens on host:port (0: a port the OS picks); returns the bound port."""
        bound = await self._acceptor.start(host.strip("[]"), port)
        self._serving = True
        return bound

    async def stop(self, grace: float) -> None:
        """Stops accepting and reading, telling each caller the last frame read (the
        others may go elsewhere); frames already running get up to grace seconds to be
        answered, then every connection is closed."""
        if not self._serving:
            return
        self._serving = False
        self._acceptor.close()
        connections = list(self._acceptor.connections)
        for connection in connections:
            connection.cancel()
        if self._running:
            await asyncio.wait(set(self._running), timeout=grace)
        for task in list(self._running):
            task.cancel()
        await asyncio.gather(*connections, *self._running, return_exceptions=True)

    async def _serve(self, transport: asyncio.Transport, reader: FrameReader) -> None:
        keepalive.enable(transport)
        caller = _Caller(transport, reader)
        try:
            async with asyncio.timeout(self._handshake_timeout_s):
                hello_bytes = await reader.hello
                if hello_bytes is None:
                    return  # gone before its hello
                hello = _parse(exchange_pb2.ExchangeHello, hello_bytes, "hello")
            refusal = self._admission(hello.authorization, _certificate_names(transport))
            if refusal is not None:
                raise Refusal(*refusal)
            caller.send(self._welcome)  # id 0, code OK: admitted
            if await self._read_frames(reader, caller):
                await self._finish(caller)
            else:
                idle = f"no frame for {self._idle_s:g}s"
                log.info("exchange connection from %s closed: %s", caller.peer, idle)
                caller.tell(idle)
        except asyncio.CancelledError:
            # The server stops (stop()): the caller learns which frames were read, which
            # are answered within the grace, and sends the others elsewhere.
            reader.stop()
            caller.tell("server stopping")
            if caller.running:
                await asyncio.wait(caller.running)
            raise
        except Refusal as refused:
            log.warning("refused exchange connection from %s: %s", caller.peer, refused.details)
            caller.send(status_reply(0, refused.code, refused.details))
        except TimeoutError:
            log.warning("exchange connection from %s sent no hello in time", caller.peer)
        except (ConnectionError, ssl.SSLError):
            pass  # the caller went away mid-message, or reset: nobody is left to answer
        # Nobody is left to take the answers of the frames still running: they are
        # cancelled, as gRPC cancels the calls of a connection that ends. (A server
        # stopping cancels this task instead, and stop() gives them the grace.)
        for task in caller.running:
            task.cancel()
        if caller.running:
            await asyncio.wait(caller.running)

    async def _read_frames(self, reader: FrameReader, caller: _Caller) -> bool:
        """Starts each frame as it arrives, until the caller ends its stream between two
        messages (True) or the connection carries no frame for the idle time, none read
        and none running (False; a frame that arrives as it ends stays unread)."""
        loop = asyncio.get_running_loop()
        running, server_running = caller.running, self._running
        idle = asyncio.timeout(None)
        active_at = loop.time()  # when a frame was last read or answered
        timer: asyncio.TimerHandle | None = None

        def answered(task: asyncio.Task[None]) -> None:  # one callback, not one per set
            nonlocal active_at
            active_at = loop.time()
            running.discard(task)
            server_running.discard(task)

        def check(idle_s: float) -> None:  # once per idle time at most, not once per frame
            nonlocal timer
            now = loop.time()
            if running or not come(active_at + idle_s, now):  # uvloop fires a timer early
                timer = loop.call_at((now if running else active_at) + idle_s, check, idle_s)
            else:
                reader.stop()
                idle.reschedule(now)  # the wait ends with TimeoutError

        def start(frame_bytes: bytes) -> None:
            nonlocal active_at
            if not self._serving:  # stop() began this turn: left unread, as after it
                return
            active_at = loop.time()
            frame = _parse(exchange_pb2.ExchangeFrame, frame_bytes, "frame")
            if frame.id == 0:
                raise Refusal(grpc.StatusCode.INVALID_ARGUMENT, "frame id 0 is reserved")
            caller.last_id = max(caller.last_id, frame.id)
            if not frame.method:  # a ping: answered now, never refused for load
                caller.send(_pong(frame.id))
                return
            busy = self._busy(len(running))
            if busy is not None:
                caller.send(status_reply(frame.id, grpc.StatusCode.RESOURCE_EXHAUSTED, busy))
                return
            task = loop.create_task(self._answer(frame, caller))
            running.add(task)
            server_running.add(task)
            task.add_done_callback(answered)

        if self._idle_s:
            timer = loop.call_at(active_at + self._idle_s, check, self._idle_s)
        try:
            async with idle:
                reader.deliver(start)
                return await reader.ended
        except TimeoutError:
            if not idle.expired():
                raise
            return False
        finally:
            if timer is not None:
                timer.cancel()

    async def _finish(self, caller: _Caller) -> None:
        """The caller ended its stream between two messages (a TCP half-close) and may
        still read: it is told the last frame read, and the frames running write their
        replies. Returns at once when it turns out to be gone (the socket reset, as a
        closed socket answers what is sent to it, or a reply failed to be written): the
        frames left are then cancelled."""
        if not caller.running:
            return
        caller.tell("the caller ended its stream")
        sock = caller.transport.get_extra_info("socket")
        while caller.running and not caller.transport.is_closing():
            await asyncio.wait(set(caller.running), timeout=GONE_POLL_S)
            if sock is not None and gone(sock):
                return

    def _busy(self, running: int) -> str | None:
        """Why a frame is refused for load (RESOURCE_EXHAUSTED, as gRPC refuses calls
        beyond maximum_concurrent_rpcs); None when it may run."""
        if running >= MAX_FRAMES_RUNNING:
            return f"{MAX_FRAMES_RUNNING} frames already running on this connection"
        if len(self._running) >= self._max_running:
            return f"{self._max_running} frames already running on this server"
        return None

    async def _answer(self, frame: exchange_pb2.ExchangeFrame, caller: _Caller) -> None:
        """Runs the frame and writes its reply; it counts as running (for the idle time,
        the load bounds and a stop's grace) until the transport took the reply but for
        its high-water mark of unsent bytes (as a StreamWriter's drain)."""
        caller.send(await self._frames.answer(frame, caller.peer))
        await caller.reader.drained()


class _Caller:
    """One connection: its transport and reader, the frames running and the newest frame
    read."""

    def __init__(self, transport: asyncio.Transport, reader: FrameReader) -> None:
        self.transport = transport
        self.reader = reader
        self.peer = peer_name(transport.get_extra_info("peername"))
        self.running: set[asyncio.Task[None]] = set()
        self.last_id = 0
        self._told = False

    def send(self, message: bytes) -> None:
        """Writes one message; a connection that closed meanwhile has nobody to answer.
        (A caller slow to read its replies is not read meanwhile: FrameReader.)"""
        if not self.transport.is_closing():
            self.transport.write(framed(message))

    def tell(self, why: str) -> None:
        """Tells the caller (once) that no frame after last_id is read, and why: the frames
        up to it are answered, later ones may go elsewhere (gRPC's GOAWAY)."""
        if not self._told:
            self.send(_going_away(self.last_id, why))
        self._told = True


def _parse(kind: type[M], data: bytes, what: str) -> M:
    try:
        return kind.FromString(data)
    except DecodeError as exc:
        raise Refusal(grpc.StatusCode.INVALID_ARGUMENT, f"not an exchange {what}: {exc}") from exc


def _going_away(last_id: int, message: str) -> bytes:
    code = grpc.StatusCode.UNAVAILABLE.value[0]
    return exchange_pb2.ExchangeReply(
        code=code, message=message, last_id=last_id
    ).SerializeToString()


def _pong(frame_id: int) -> bytes:
    return exchange_pb2.ExchangeReply(id=frame_id).SerializeToString()


def _certificate_names(transport: asyncio.Transport) -> list[str]:
    """The subject CN and the DNS, IP, URI and email alternative names of the peer's
    certificate (none without TLS or a client certificate), as gRPC lists them for a call
    (an IPv6 address as ::1, where Python spells it out)."""
    certificate = transport.get_extra_info("peercert") or {}
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


def gone(sock: socket.socket) -> bool:
    """Whether a caller's socket reset (a closed socket answers what is sent to it with
    one) or was closed meanwhile (a reply that failed to be written closes it: EBADF from
    asyncio's socket, ValueError from uvloop's, whose descriptor is then -1)."""
    try:
        return bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR))
    except (OSError, ValueError):
        return True
