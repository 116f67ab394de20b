"""The asyncio SDK's KV calls as frames on each router's exchange port (exchange.proto).

A unary gRPC call costs the SDK about ten times the CPU of a frame on a plain connection
and the router about fourteen, and adds most of a millisecond to each call (README,
Performance). So ``AsyncClient`` sends its KV calls to a router that advertises an
exchange port (KV.ExchangePort) as frames on one connection per router, with the same TLS
and token as its gRPC channel, and falls back to gRPC calls for a while when the router
advertises none or the port cannot be reached (shardkv.common.exchange_connection). A
frame's outcome is the call's: the same status, details and retries. Calls stay on gRPC
when the client was given interceptors (they are to see every call) or frames=False (a
gRPC proxy in front of the routers), and for Admin calls and the blocking ``Client``.
"""

from __future__ import annotations

import logging
import os
import ssl
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from shardkv.common import requestid
from shardkv.common.exchange_connection import ExchangeConnection
from shardkv.common.limits import DEFAULT_LIMITS
from shardkv.v1 import kv_pb2

from .transport import PemSource, TLSConfig

log = logging.getLogger(__name__)

_KV = kv_pb2.DESCRIPTOR.services_by_name["KV"]
# The response message of each KV method, by method name.
_RESPONSES: dict[str, Callable[[bytes], Message]] = {
    method.name: GetMessageClass(method.output_type).FromString for method in _KV.methods
}
# Targets that are not a plain host:port (gRPC resolves them; a socket cannot).
_SCHEMES = ("dns:", "ipv4:", "ipv6:", "unix:", "unix-abstract:", "xds:")
# How long opening a connection, and asking a router for its port, may take.
CONNECT_TIMEOUT_S = 5.0


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
                    log.warning("TLS unusable for frames (%r): every call goes by gRPC", exc)
                    self._off = True
                    return None
            connection = self._connections[target] = self._open(stub, target)
        token = requestid.current.set(rid)
        try:
            body = request.SerializeToString()
            reply = await connection.send(f"/{_KV.full_name}/{method}", body, timeout, {})
        finally:
            requestid.current.reset(token)
        return None if reply is None else _RESPONSES[method](reply)

    @property
    def answered(self) -> int:
        return sum(connection.answered for connection in self._connections.values())

    async def close(self) -> None:
        connections, self._connections = list(self._connections.values()), {}
        for connection in connections:
            await connection.close()

    def _open(self, stub: Any, target: str) -> ExchangeConnection:
        async def port(timeout: float) -> int:
            request = kv_pb2.ExchangePortRequest()
            metadata = (("authorization", self._authorization),) if self._authorization else ()
            try:
                reply = await stub.ExchangePort(request, timeout=timeout, metadata=metadata)
            except grpc.aio.AioRpcError as err:
                if err.code() == grpc.StatusCode.UNIMPLEMENTED:
                    return 0  # an older router: gRPC only
                raise
            return int(reply.port)

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
    ca = _pem_text(tls.ca)
    context = ssl.create_default_context(cadata=ca) if ca else ssl.create_default_context()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if tls.cert is not None and tls.key is not None:
        _load_chain(context, tls.cert, tls.key)
    return context


def _pem_text(source: PemSource | None) -> str | None:
    if source is None:
        return None
    if isinstance(source, bytes):
        return source.decode("ascii")
    return Path(source).read_text(encoding="ascii")


def _load_chain(context: ssl.SSLContext, cert: PemSource, key: PemSource) -> None:
    """ssl loads a certificate and key from files only: PEM given as bytes goes through a
    private temporary directory, removed at once."""
    if not isinstance(cert, bytes) and not isinstance(key, bytes):
        context.load_cert_chain(cert, key)
        return
    with tempfile.TemporaryDirectory(prefix="shardkv-tls-") as directory:
        paths = []
        for name, source in (("cert.pem", cert), ("key.pem", key)):
            path = Path(directory) / name
            data = source if isinstance(source, bytes) else Path(source).read_bytes()
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            paths.append(path)
        context.load_cert_chain(paths[0], paths[1])
