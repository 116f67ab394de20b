"""Who may talk to the router: TLS / mutual TLS credentials and the bearer-token check.

The token check is an aio server interceptor. A call must carry gRPC metadata
``authorization: Bearer <token>``; the token is compared in constant time
(hmac.compare_digest), and a refusal is logged with the peer and the method, never with
what the caller sent. Health and reflection stay open so that load balancers and grpcurl
``list`` work without credentials.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeAlias

import grpc

log = logging.getLogger(__name__)
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
Context = grpc.aio.ServicerContext[Any, Any]

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


def read_token(path: Path) -> str:
    """The bearer token in path (surrounding whitespace ignored)."""
    token = _read(path, "token file").decode("utf-8", errors="strict").strip()
    if any(c.isspace() for c in token):
        raise SecurityError(f"token file {path} must hold one token without spaces")
    return token


class TokenInterceptor(grpc.aio.ServerInterceptor):
    """Refuses every non-exempt call without ``authorization: Bearer <token>``."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = await continuation(details)
        if handler is None or details.method.startswith(EXEMPT_PREFIXES):
            return handler
        sent = [v for k, v in details.invocation_metadata or () if k == "authorization"]
        if len(sent) == 1 and isinstance(sent[0], str):
            if hmac.compare_digest(sent[0].encode(), self._expected):
                return handler
            reason = "wrong bearer token"
        else:
            reason = "no bearer token" if not sent else "malformed authorization metadata"
        return _refusal(handler, details.method, reason)


def _refusal(handler: Handler, method: str, reason: str) -> Handler:
    """A handler of the same shape as handler that logs and answers UNAUTHENTICATED."""

    async def refuse(context: Context) -> None:
        log.warning("refused %s from %s: %s", method, context.peer(), reason)
        await context.abort(
            grpc.StatusCode.UNAUTHENTICATED, f"{reason}: send 'authorization: Bearer <token>'"
        )

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
