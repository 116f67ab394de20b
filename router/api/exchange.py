"""The router's exchange port: its KV calls as frames (exchange.proto), for the asyncio SDK.

The port admits what the gRPC port admits for KV calls (the client token; under mutual
TLS a client certificate from the client CA) and serves the same KVService handlers, so a
call answered there and one answered on gRPC cannot differ; Admin calls stay on gRPC.
"""

from __future__ import annotations

import ssl
from functools import partial

from shardkv.common.wire import ROUTER_ID_KEY
from shardkv.router.api.kv_service import KVService
from shardkv.router.api.security import SecurityError, client_admission
from shardkv.router.config import TlsConfig
from shardkv.serving.connections import ConnectionLimits
from shardkv.serving.exchange_listener import ExchangeListener, server_ssl_context
from shardkv.serving.exchange_server import FrameServer, Observe, unary_methods
from shardkv.v1 import kv_pb2

KV_DESCRIPTOR = kv_pb2.DESCRIPTOR.services_by_name["KV"]


def kv_exchange(
    kv: KVService,
    *,
    router_id: str,
    observe: Observe,
    client_token: str | None,
    tls: TlsConfig | None,
    max_message_bytes: int,
    connections: ConnectionLimits,
    max_running: int,
) -> ExchangeListener:
    """The listener serving kv's calls, with the router's own TLS (as its gRPC port)."""
    try:
        context = server_ssl_context(tls.cert, tls.key, tls.client_ca) if tls else None
    except (ssl.SSLError, OSError) as err:
        raise SecurityError(f"cannot load the TLS certificate and key {tls}: {err}") from err
    return ExchangeListener(
        FrameServer(unary_methods((KV_DESCRIPTOR, kv)), observe=observe),
        admission=partial(client_admission, client_token),
        welcome={ROUTER_ID_KEY: router_id},
        tls=context,
        max_message_bytes=max_message_bytes,
        connections=connections,
        max_running=max_running,
    )
