"""The asyncio SDK's KV calls as frames on each router's exchange port (exchange.proto).

A unary gRPC call costs the SDK about ten times the CPU of a frame on a plain connection
and the router about fourteen, and adds most of a millisecond to each call (README,
Performance). So ``AsyncClient`` sends its KV calls to a router that advertises an
exchange port (KV.ExchangePort) as frames on one connection per router, with the same TLS
and token as its gRPC channel. The router serves a frame with the call's own handler, so
it answers what the call would (values, versions, item errors, refusals), and the SDK
retries it as the call. A call goes by gRPC instead, for UNARY_S at a time
(shardkv.common.exchange_connection), when the router advertises no port, refuses to name
it, cannot be reached on it, or answers it with anything but a welcome naming that router
(another router on that port: a stale advertised port, a host name standing for several
routers); and, one call at a time, when its request is over the message limit (gRPC fails
it alone) or 256 frames are already in flight on the connection. Every call stays on gRPC
when the client was given interceptors (they are to see every call), frames=False (a gRPC
proxy in front of the routers) or a client certificate or key as PEM bytes (ssl loads keys
from files only, and the SDK does not write a key to disk); so do Admin calls and the
blocking ``Client``.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable, Mapping
from typing import Any

import grpc
import grpc.aio
from google.protobuf.message import DecodeError, Message
from google.protobuf.message_factory import GetMessageClass
from shardkv.common import requestid
from shardkv.common.exchange_connection import ExchangeConnection
from shardkv.common.limits import DEFAULT_LIMITS
from shardkv.common.rpc_status import rpc_error
from shardkv.common.wire import ROUTER_ID_KEY
from shardkv.v1 import kv_pb2

from .transport import TLSConfig, read_pem

log = logging.getLogger(__name__)

_KV = kv_pb2.DESCRIPTOR.services_by_name["KV"]
# The response message of each KV method, by method name.
_RESPONSES: dict[str, Callable[[bytes], Message]] = {
    method.name: GetMessageClass(method.output_type).FromString for method in _KV.methods
}
# Targets that are not a plain host:port (gRPC resolves them; a socket cannot).
_SCHEMES = ("dns:", "ipv4:", "ipv6:", "unix:", "unix-abstract:", "xds:")
# Why asking a router for its port may fail where its calls would fail too (a lookup that
# only ran out of its own time sends the calls by gRPC instead: exchange_connection).
_UNREACHABLE = (
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
)
# How long opening a connection, and asking a router for its port, may take: a port a
# firewall drops costs the calls waiting meanwhile this much, once per UNARY_S.
CONNECT_TIMEOUT_S = 1.0


class KVFrames:
    """One exchange connection per router address, opened on first use."""

    def __init__(self, tls: TLSConfig | None, metadata: tuple[tuple[str, str], ...]) -> None:
        """metadata: the client's token metadata (its hello carries the authorization)."""
        self._tls = tls
        # Built on first use: what the gRPC channel would refuse on its first call too.
        self._ssl: ssl.SSLContext | None = None
        self._off = False
        self._authorization = dict(metadata).get("authorization", "")
        self._connections: dict[str, ExchangeConnection] = {}

    async def call(
        self,
        stub: Any,
        target: str,
        method: str,
        request: Message,
        timeout: float,
        rid: str,
    ) -> Message | None:
        """The answer of KV.method to request, sent to target as a frame; raises the
        AioRpcError the call would have raised; None: send it by gRPC (stub)."""
        connection = self._connections.get(target)
        if connection is None:
            if self._off or target.startswith(_SCHEMES):  # a name gRPC resolves: gRPC it is
                return None
            if self._tls is not None and self._ssl is None:
                try:
                    self._ssl = ssl_context(self._tls)
                except (ssl.SSLError, OSError, ValueError) as exc:
                    log.warning("TLS unusable for frames (%r): calls go by gRPC", exc)
                    self._off = True
                    return None
            connection = self._connections[target] = self._open(stub, target)
        name = f"/{_KV.full_name}/{method}"
        token = requestid.current.set(rid)
        try:
            reply = await connection.send(name, request.SerializeToString(), timeout, {})
        finally:
            requestid.current.reset(token)
        if reply is None:
            return None
        try:
            return _RESPONSES[method](reply)
        except DecodeError as exc:
            raise rpc_error(grpc.StatusCode.INTERNAL, f"{name}: unreadable reply: {exc}") from exc

    @property
    def answered(self) -> int:
        return sum(connection.answered for connection in self._connections.values())

    async def close(self) -> None:
        self._off = True  # a call already past the client's check opens no new connection
        connections, self._connections = list(self._connections.values()), {}
        for connection in connections:
            await connection.close()

    def _open(self, stub: Any, target: str) -> ExchangeConnection:
        async def port(timeout: float) -> tuple[int, Mapping[str, str]]:
            request = kv_pb2.ExchangePortRequest()
            metadata = (("authorization", self._authorization),) if self._authorization else ()
            try:
                reply = await stub.ExchangePort(request, timeout=timeout, metadata=metadata)
            except grpc.aio.AioRpcError as err:
                if err.code() in _UNREACHABLE:
                    raise  # the call fails (and is retried) as its gRPC call would
                return 0, {}  # an older router, or one refusing this call: gRPC answers
            # Frames go only where the router asked answers (else by gRPC, to it).
            return int(reply.port), {ROUTER_ID_KEY: reply.router_id} if reply.router_id else {}

        return ExchangeConnection(
            f"router {target}",
            target,
            exchange_port=port,
            tls=self._ssl,
            authorization=self._authorization,
            max_message_bytes=DEFAULT_LIMITS.max_message_bytes,
            connect_timeout_s=CONNECT_TIMEOUT_S,
        )


def ssl_context(tls: TLSConfig) -> ssl.SSLContext:
    """The TLS of tls for a plain connection, as its gRPC credentials: the router's
    certificate checked against ca (None: the system roots) and its host name, and the
    client certificate presented for mutual TLS."""
    ca = read_pem(tls.ca, "CA")
    # cadata takes PEM as text (bytes would be DER).
    context = ssl.create_default_context(cadata=ca.decode("ascii") if ca else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if isinstance(tls.cert, bytes) or isinstance(tls.key, bytes):
        raise ValueError("client certificate or key as PEM bytes: ssl loads them from files")
    if tls.cert is not None and tls.key is not None:
        context.load_cert_chain(tls.cert, tls.key, password=_no_password)
    return context


def _no_password() -> str:
    """An encrypted key is not asked a passphrase for on the terminal (as gRPC would
    not): ssl fails, and calls go by gRPC."""
    return ""
