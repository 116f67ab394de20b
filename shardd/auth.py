"""Who may call a node: routers only, shown by the node token, a router certificate, or both.

A node's Replica API can wipe, dump and rewrite its store, so a node serves it (and its own
KV service, which a node serving alone answers) only to callers that show what
``NodeAuth`` asks for:

- ``token``: gRPC metadata ``authorization: Bearer <node token>`` on every call (routers
  send it with ``--node-token-file``), compared in constant time (hmac.compare_digest);
- ``cert_names``: under mutual TLS, the caller's certificate must name one of these as its
  subject CN or a subject alternative name; chaining to the client CA is not enough.

``NodeAuthInterceptor`` refuses any other call before its handler runs: UNAUTHENTICATED
without the token or with a wrong one, PERMISSION_DENIED for a certificate that names no
router. A refusal is logged with the method, the peer and the reason, never with what the
caller sent. Health and reflection stay open so that probes and ``grpcurl list`` work.

``exposure`` is the rule for where a node may listen without either: loopback only,
unless told ``insecure`` (``--insecure``), and then with a warning.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

import grpc
import grpc.aio
from shardkv.common.loopback import is_loopback

log = logging.getLogger(__name__)

Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"
# Runs before a handler; aborts the call to refuse it.
Check = Callable[[Context], Awaitable[None]]

EXEMPT_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)
# Where gRPC puts the names of a TLS peer's certificate in the call's auth context.
_CERT_NAME_KEYS = ("x509_common_name", "x509_subject_alternative_name")


@dataclass(frozen=True)
class NodeAuth:
    """What a caller must show a node; with neither token nor cert_names, nothing."""

    # The bearer token routers send (--node-token-file); None: no token is asked for.
    token: str | None = None
    # Under mutual TLS, the subject CN or alternative names that admit a certificate.
    cert_names: frozenset[str] = frozenset()
    # Serve a non-loopback address with neither token nor cert_names (--insecure).
    insecure: bool = False

    @property
    def required(self) -> bool:
        return bool(self.token or self.cert_names)

    def describe(self) -> str:
        """For the start-up log line: which checks run (never the token itself)."""
        parts = ["token"] if self.token else []
        parts += ["router-certs"] if self.cert_names else []
        return "+".join(parts) or ("none (insecure)" if self.insecure else "none")


OPEN = NodeAuth()


def read_token(path: Path) -> str:
    """The node token in path (surrounding whitespace ignored); ValueError names the file."""
    try:
        text = path.read_text("utf-8").strip()
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"cannot read node token file {path}: {err}") from err
    if not text or any(c.isspace() for c in text):
        raise ValueError(f"node token file {path} must hold one token without spaces")
    return text


def exposure(
    listen: str, auth: NodeAuth, *, tls: bool, mutual: bool
) -> tuple[str | None, list[str]]:
    """Whether a node may serve listen with auth: the reason it may not (None: it may) and
    what to warn about. tls: the node serves TLS; mutual: it asks callers for certificates."""
    if auth.cert_names and not mutual:
        return "--router-cert-names needs mutual TLS (--tls-client-ca)", []
    if is_loopback(listen.rsplit(":", 1)[0]):
        return None, []
    if not auth.required:
        if not auth.insecure:
            plain = "mutual TLS admits any certificate of --tls-client-ca; " if mutual else ""
            return (
                f"refusing to serve {listen} without authentication: {plain}a node on a"
                " non-loopback address needs --node-token-file or --router-cert-names (with"
                " --tls-client-ca), so that only routers can call it; --insecure serves it"
                " to anyone who can reach it",
                [],
            )
        return None, [
            f"INSECURE: {listen} is not loopback and the node asks callers for neither a"
            " node token nor a router certificate: anyone who can reach it can read, write"
            " and wipe its store (--insecure)"
        ]
    if auth.token and not tls:
        return None, [f"the node token crosses the network in clear text on {listen}: use TLS"]
    return None, []


def node_interceptors(auth: NodeAuth) -> list[grpc.aio.ServerInterceptor]:
    """The node's auth interceptor, or none when auth asks for nothing."""
    return [NodeAuthInterceptor(auth)] if auth.required else []


class NodeAuthInterceptor(grpc.aio.ServerInterceptor):
    """Refuses every non-exempt call that does not show what NodeAuth asks for."""

    def __init__(self, auth: NodeAuth) -> None:
        self._expected = f"Bearer {auth.token}".encode() if auth.token else None
        self._names = auth.cert_names

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = await continuation(details)
        if handler is None or details.method.startswith(EXEMPT_PREFIXES):
            return handler
        method = details.method
        if self._expected is not None:
            metadata = details.invocation_metadata or ()
            sent = [value for key, value in metadata if key == "authorization"]
            reason = token_problem(self._expected, sent)
            if reason is not None:
                return _guarded(handler, _refuse(method, grpc.StatusCode.UNAUTHENTICATED, reason))
        if self._names:
            return _guarded(handler, self._check_certificate(method))
        return handler

    def _check_certificate(self, method: str) -> Check:
        names = self._names

        async def check(context: Context) -> None:
            auth_context = context.auth_context()
            shown = [
                name.decode("utf-8", errors="replace")
                for key in _CERT_NAME_KEYS
                for name in auth_context.get(key, ())
            ]
            reason = certificate_problem(names, shown)
            if reason is not None:
                await _refuse(method, grpc.StatusCode.PERMISSION_DENIED, reason)(context)

        return check


def token_problem(expected: bytes, sent: Sequence[str | bytes]) -> str | None:
    """Why the authorization values sent are not exactly expected ("Bearer <token>");
    None when they are. Compared in constant time."""
    if not sent:
        return "no node token: send 'authorization: Bearer <node token>'"
    if len(sent) > 1 or not isinstance(sent[0], str):
        return "malformed authorization metadata"
    if not hmac.compare_digest(sent[0].encode(), expected):
        return "wrong node token"
    return None


def certificate_problem(names: frozenset[str], shown: Sequence[str]) -> str | None:
    """Why a peer certificate showing these names (subject CN and alternative names) is
    not a router's; None when it names one of names."""
    if not names.isdisjoint(shown):
        return None
    if shown:
        return f"certificate names {sorted(set(shown))} are not router names (--router-cert-names)"
    return "no client certificate"


def admission(
    auth: NodeAuth, authorization: str, shown: Sequence[str]
) -> tuple[grpc.StatusCode, str] | None:
    """Whether a connection to the node's exchange port (shardkv.serving.exchange_listener)
    that sent this authorization and whose certificate shows these names may send frames:
    None if so, else the status and reason a call would have been refused with."""
    if auth.token:
        reason = token_problem(
            f"Bearer {auth.token}".encode(), [authorization] if authorization else []
        )
        if reason is not None:
            return grpc.StatusCode.UNAUTHENTICATED, f"{reason}; this node serves routers only"
    if auth.cert_names:
        reason = certificate_problem(auth.cert_names, shown)
        if reason is not None:
            return grpc.StatusCode.PERMISSION_DENIED, f"{reason}; this node serves routers only"
    return None


def _refuse(method: str, code: grpc.StatusCode, reason: str) -> Check:
    async def refuse(context: Context) -> None:
        log.warning("refused %s from %s: %s", method, context.peer(), reason)
        await context.abort(code, f"{reason}; this node serves routers only")

    return refuse


def _guarded(handler: Handler, check: Check) -> Handler:
    """A handler of the same shape as handler that runs check (which may abort) first."""

    def unary(behavior: Callable[..., Any]) -> Callable[..., Awaitable[Any]]:
        async def call(request: Any, context: Context) -> Any:
            await check(context)
            return await behavior(request, context)

        return call

    def streaming(behavior: Callable[..., Any]) -> Callable[..., AsyncIterator[Any]]:
        async def call(request: Any, context: Context) -> AsyncIterator[Any]:
            await check(context)
            result = behavior(request, context)
            if not hasattr(result, "__aiter__"):  # a handler that writes with context.write
                await result
                return
            async for item in result:
                yield item

        return call

    codec = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(unary(handler.unary_unary), **codec)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(streaming(handler.unary_stream), **codec)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(unary(handler.stream_unary), **codec)
    assert handler.stream_stream is not None
    return grpc.stream_stream_rpc_method_handler(streaming(handler.stream_stream), **codec)
