"""Who may talk to the router: TLS / mutual TLS credentials and the bearer-token check.

The token check is an aio server interceptor. A call must carry gRPC metadata
``authorization: Bearer <token>``; the token is compared in constant time
(hmac.compare_digest), and a refusal is logged with the peer and the method, never with
what the caller sent. KV calls need the client token; Admin calls need the admin token
when one is configured (the client token does not open them), else the client token.
Health and reflection stay open so that load balancers and grpcurl ``list`` work without
credentials.

The router is also a client of its nodes: ``channel_credentials`` builds the TLS (or
mutual TLS) credentials of its node channels.
"""

from __future__ import annotations

import hmac
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeAlias

import grpc

log = logging.getLogger(__name__)
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
Context = grpc.aio.ServicerContext[Any, Any]

ADMIN_PREFIX = "/shardkv.v1.Admin/"
EXEMPT_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)


class SecurityError(ValueError):
    """A certificate, key or token file is unusable; the message names the file."""


def _read(path: Path, what: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as err:
        raise SecurityError(f"cannot read {what} {path}: {err.strerror or err}") from err
    if not data.strip():
        raise SecurityError(f"{what} {path} is empty")
    return data


def server_credentials(
    cert: Path, key: Path, client_ca: Path | None = None
) -> grpc.ServerCredentials:
    """TLS with cert/key; mutual TLS (client certificates required) when client_ca is set."""
    return grpc.ssl_server_credentials(
        [(_read(key, "TLS key"), _read(cert, "TLS certificate"))],
        root_certificates=_read(client_ca, "client CA") if client_ca else None,
        require_client_auth=client_ca is not None,
    )


def channel_credentials(
    ca: Path, cert: Path | None = None, key: Path | None = None
) -> grpc.ChannelCredentials:
    """TLS to the nodes, verified against ca; with cert and key, the router presents them
    (mutual TLS, for nodes started with --tls-client-ca)."""
    return grpc.ssl_channel_credentials(
        root_certificates=_read(ca, "node CA"),
        private_key=_read(key, "node TLS key") if key else None,
        certificate_chain=_read(cert, "node TLS certificate") if cert else None,
    )


def node_ssl_context(ca: Path, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    """The same TLS as channel_credentials, for the nodes' exchange ports: their
    certificates verified against ca and their host names, cert and key presented."""
    try:
        context = ssl.create_default_context(cafile=str(ca))
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if cert and key:
            context.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as err:
        raise SecurityError(f"cannot load node TLS ({ca}, {cert}, {key}): {err}") from err
    return context


def read_token(path: Path) -> str:
    """The bearer token in path (surrounding whitespace ignored)."""
    bearer_token = _read(path, "token file").decode("utf-8", errors="strict").strip()
    if any(c.isspace() for c in bearer_token):
        raise SecurityError(f"token file {path} must hold one token without spaces")
    return bearer_token


def client_admission(
    client_token: str | None, authorization: str, shown: list[str]
) -> tuple[grpc.StatusCode, str] | None:
    """Whether a connection to the router's exchange port (KV calls only) that sent this
    authorization may send frames: None if so, else the status and reason a KV call would
    have been refused with (TokenInterceptor). Under mutual TLS the handshake has already
    required a client certificate, as on the gRPC port."""
    if client_token is None:
        return None
    if hmac.compare_digest(authorization.encode(), f"Bearer {client_token}".encode()):
        return None
    reason = "wrong bearer token" if authorization else "no bearer token"
    return (
        grpc.StatusCode.UNAUTHENTICATED,
        f"{reason}: send 'authorization: Bearer <token>' with the token",
    )


class TokenInterceptor(grpc.aio.ServerInterceptor):
    """Refuses every non-exempt call without the bearer token its service needs."""

    def __init__(self, client_token: str | None, admin_token: str | None = None) -> None:
        self._client = f"Bearer {client_token}".encode() if client_token else None
        self._admin = f"Bearer {admin_token}".encode() if admin_token else self._client

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = await continuation(details)
        if handler is None or details.method.startswith(EXEMPT_PREFIXES):
            return handler
        admin = details.method.startswith(ADMIN_PREFIX)
        expected = self._admin if admin else self._client
        if expected is None:
            return handler
        sent = [v for k, v in details.invocation_metadata or () if k == "authorization"]
        code = grpc.StatusCode.UNAUTHENTICATED
        if len(sent) == 1 and isinstance(sent[0], str):
            given = sent[0].encode()
            if hmac.compare_digest(given, expected):
                return handler
            if admin and self._client and hmac.compare_digest(given, self._client):
                code, reason = grpc.StatusCode.PERMISSION_DENIED, "client token on an Admin call"
            else:
                reason = "wrong bearer token"
        else:
            reason = "no bearer token" if not sent else "malformed authorization metadata"
        return _refusal(handler, details.method, reason, code, admin)


def _refusal(
    handler: Handler, method: str, reason: str, code: grpc.StatusCode, admin: bool
) -> Handler:
    """A handler of the same shape as handler that logs and answers code."""
    needed = "the admin token" if admin else "the token"

    async def refuse(context: Context) -> None:
        log.warning("refused %s from %s: %s", method, context.peer(), reason)
        await context.abort(code, f"{reason}: send 'authorization: Bearer <token>' with {needed}")

    async def unary(request: Any, context: Context) -> Any:
        await refuse(context)

    async def streaming(request: Any, context: Context) -> AsyncIterator[Any]:
        await refuse(context)
        yield  # pragma: no cover - makes this an async generator

    codec = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(unary, **codec)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(streaming, **codec)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(unary, **codec)
    return grpc.stream_stream_rpc_method_handler(streaming, **codec)
