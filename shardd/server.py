"""The shardd server: gRPC (KV, Replica, health and reflection) and the exchange port
(their unary calls as frames: routers', and the SDK's to a node serving alone;
shardkv.serving.exchange_listener) over one node's store.

`ShardServer(config).start()` opens the store, binds and serves, returning the bound port
(listen on port 0 to let the OS pick one); `stop(grace)` turns health to NOT_SERVING, lets
in-flight calls finish for up to grace seconds, commits pending writes and closes the store.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import grpc
import grpc.aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry
from shardkv.common.hlc import DEFAULT_MAX_OFFSET_MS, HybridClock
from shardkv.common.limits import DEFAULT_LIMITS, Limits
from shardkv.common.wire import NODE_ID_KEY
from shardkv.serving.connections import (
    DEFAULT_CONNECTIONS,
    ConnectionLimits,
    server_options,
)
from shardkv.serving.exchange_listener import ExchangeListener, server_ssl_context
from shardkv.serving.exchange_server import FrameServer, unary_methods
from shardkv.serving.metrics_http import MetricsServer
from shardkv.serving.telemetry import DEFAULT_OBSERVABILITY, Observability, RequestInterceptor
from shardkv.shardd.auth import OPEN, NodeAuth, admission, exposure, node_interceptors
from shardkv.shardd.disk_watch import DiskWatch
from shardkv.shardd.identity import DirectoryIdentity
from shardkv.shardd.kv_service import KVServicer
from shardkv.shardd.metrics import node_registry
from shardkv.shardd.node import NodeStorage
from shardkv.shardd.replica_service import ReplicaServicer
from shardkv.shardd.snapshot import remove_leftovers
from shardkv.shardd.store import Store
from shardkv.shardd.store_env import DEFAULT_MAP_SIZE, DEFAULT_MAX_MAP_SIZE
from shardkv.v1 import kv_pb2, kv_pb2_grpc, replica_pb2, replica_pb2_grpc

log = logging.getLogger(__name__)

KV_DESCRIPTOR = kv_pb2.DESCRIPTOR.services_by_name["KV"]
REPLICA_DESCRIPTOR = replica_pb2.DESCRIPTOR.services_by_name["Replica"]
KV_SERVICE = KV_DESCRIPTOR.full_name
REPLICA_SERVICE = REPLICA_DESCRIPTOR.full_name
HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name


class ListenError(RuntimeError):
    """The listen address could not be bound (in use, or not a valid host:port)."""


@dataclass(frozen=True)
class ServerTls:
    """PEM files of the node's certificate chain and key; with client_ca, callers (routers)
    must present a certificate that chains to it (mutual TLS). The same on the gRPC port
    and the exchange port."""

    cert_chain: Path
    private_key: Path
    client_ca: Path | None = None

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials(
            [(self.private_key.read_bytes(), self.cert_chain.read_bytes())],
            root_certificates=self.client_ca.read_bytes() if self.client_ca else None,
            require_client_auth=self.client_ca is not None,
        )

    def ssl_context(self) -> ssl.SSLContext:
        return server_ssl_context(self.cert_chain, self.private_key, self.client_ca)


@dataclass(frozen=True)
class ServerConfig:
    """Everything a node needs to serve; __main__ builds it from flags."""

    node_id: str
    data_dir: Path
    listen: str = "127.0.0.1:7101"
    # The exchange port, on the listen address's host; 0: one the OS picks (routers learn
    # it from Identity).
    exchange_port: int = 0
    # The port routers are told (Identity), when a proxy or port mapping fronts the
    # exchange port; 0: the bound one.
    advertise_exchange_port: int = 0
    # fsync every commit; False is for benchmarks only (acknowledged writes may be lost).
    sync: bool = True
    limits: Limits = DEFAULT_LIMITS
    map_size: int = DEFAULT_MAP_SIZE
    max_map_size: int = DEFAULT_MAX_MAP_SIZE
    # Calls beyond this many in flight are refused with RESOURCE_EXHAUSTED (load shedding).
    max_concurrent_rpcs: int = 2048
    # Seconds in-flight calls get to finish on shutdown.
    grace_s: float = 5.0
    read_workers: int = 4
    commit_max_items: int = 4096
    # Writes queued for a commit beyond this many are refused with RESOURCE_EXHAUSTED.
    max_pending_writes: int = 65536
    # TLS (mutual TLS with a client CA); None serves plaintext, meant for loopback.
    tls: ServerTls | None = None
    # Who may call the node (shardkv.shardd.auth); the default asks for nothing, which
    # only a loopback address allows.
    auth: NodeAuth = OPEN
    # Versions further ahead of this node's wall clock are refused (Replica.Apply).
    max_clock_offset_ms: int = DEFAULT_MAX_OFFSET_MS
    # A commit waiting this long makes the node say NOT_SERVING until it completes.
    disk_stall_s: float = 10.0
    # The metrics endpoint and request logging.
    observe: Observability = DEFAULT_OBSERVABILITY
    # How many connections the node holds, and how long unused ones live.
    connections: ConnectionLimits = DEFAULT_CONNECTIONS


class ShardServer:
    """One storage node's gRPC server and the store behind it."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self._server: grpc.aio.Server | None = None
        self._storage: NodeStorage | None = None
        self._health = health.aio.HealthServicer()
        self._metrics: MetricsServer | None = None
        self._exchange: ExchangeListener | None = None
        self._disk_watch: DiskWatch | None = None
        self.address = ""
        # host:port of the metrics endpoint; empty when it is off.
        self.metrics_address = ""

    @property
    def storage(self) -> NodeStorage:
        assert self._storage is not None, "the server is not started"
        return self._storage

    async def start(self) -> int:
        """Opens the store, binds the listen address and serves; returns the bound port."""
        config = self.config
        self._check_exposure()
        exchange_tls = _exchange_tls(config.tls)
        store = await asyncio.to_thread(
            Store,
            config.data_dir,
            sync=config.sync,
            map_size=config.map_size,
            max_map_size=config.max_map_size,
        )
        # Copies of the store a crash left behind would count against the bound.
        await asyncio.to_thread(remove_leftovers, config.data_dir)
        try:
            directory = await asyncio.to_thread(DirectoryIdentity.open, store, config.node_id)
        except BaseException:  # WrongNode: another node's directory
            await asyncio.to_thread(store.close)
            raise
        self._storage = NodeStorage(
            store,
            node_id=config.node_id,
            clock=HybridClock(max_offset_ms=config.max_clock_offset_ms),
            read_workers=config.read_workers,
            commit_max_items=config.commit_max_items,
            max_pending_writes=config.max_pending_writes,
            page_bytes=config.limits.max_message_bytes // 4,
        )
        registry = node_registry(self._storage)
        telemetry = RequestInterceptor(registry, config.observe, make_ids=False)
        server = grpc.aio.server(
            # Outermost first: refused calls are counted and logged too.
            interceptors=[telemetry, *node_interceptors(config.auth)],
            options=[
                ("grpc.so_reuseport", 0),
                ("grpc.max_send_message_length", config.limits.max_message_bytes),
                ("grpc.max_receive_message_length", config.limits.max_message_bytes),
                *server_options(config.connections),
            ],
            maximum_concurrent_rpcs=config.max_concurrent_rpcs,
        )
        kv = KVServicer(self._storage, limits=config.limits)
        kv_pb2_grpc.add_KVServicer_to_server(kv, server)  # type: ignore[no-untyped-call]
        replica = ReplicaServicer(self._storage, limits=config.limits, directory=directory)
        replica_pb2_grpc.add_ReplicaServicer_to_server(replica, server)  # type: ignore[no-untyped-call]
        methods = unary_methods((KV_DESCRIPTOR, kv), (REPLICA_DESCRIPTOR, replica))
        exchange = ExchangeListener(
            FrameServer(methods, observe=telemetry.observe),
            admission=partial(admission, config.auth),
            welcome={NODE_ID_KEY: config.node_id},
            tls=exchange_tls,
            max_message_bytes=config.limits.max_message_bytes,
            connections=config.connections,
            max_running=config.max_concurrent_rpcs,
        )
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            (
                KV_SERVICE,
                REPLICA_SERVICE,
                HEALTH_SERVICE,
                reflection.SERVICE_NAME,
            ),
            server,
        )
        host = config.listen.rsplit(":", 1)[0]
        try:
            port = _bind(server, config.listen, config.tls)
            exchange_port = await _bind_exchange(exchange, host, config.exchange_port)
            replica.exchange_port = config.advertise_exchange_port or exchange_port
            kv.exchange_port = replica.exchange_port
            await server.start()
            await self._start_metrics(registry)
        except BaseException:
            await exchange.stop(0)
            await server.stop(None)
            await self._storage.close()
            raise
        self._server = server
        self._exchange = exchange
        services = ("", KV_SERVICE, REPLICA_SERVICE)
        for service in services:
            await self._health.set(service, health_pb2.HealthCheckResponse.SERVING)
        self._disk_watch = DiskWatch(
            self.storage.committer, self._health, services, stall_s=config.disk_stall_s
        )
        self._disk_watch.start()
        self.address = f"{host}:{port}"
        log.info(
            "serving node_id=%s address=%s exchange_port=%d advertised=%d data=%s sync=%s"
            " tls=%s auth=%s",
            config.node_id,
            self.address,
            exchange_port,
            replica.exchange_port,
            config.data_dir,
            config.sync,
            "off" if config.tls is None else "mutual" if config.tls.client_ca else "on",
            config.auth.describe(),
        )
        return port

    def _check_exposure(self) -> None:
        """Raises ListenError when the node would serve a non-loopback address to anyone."""
        config = self.config
        mutual = config.tls is not None and config.tls.client_ca is not None
        refusal, warnings = exposure(
            config.listen, config.auth, tls=config.tls is not None, mutual=mutual
        )
        if refusal is not None:
            raise ListenError(refusal)
        for warning in warnings:
            log.warning("%s", warning)

    async def _start_metrics(self, registry: CollectorRegistry) -> None:
        listen = self.config.observe.metrics_listen
        if listen is None:
            return
        metrics = MetricsServer(registry, listen)
        try:
            self.metrics_address = await metrics.start()
        except OSError as exc:
            raise ListenError(str(exc)) from exc
        self._metrics = metrics

    async def wait(self) -> None:
        """Returns when the server has stopped."""
        if self._server is not None:
            await self._server.wait_for_termination()

    async def stop(self, grace: float | None = None) -> None:
        """Drains in-flight calls (up to grace seconds), then pending commits, then closes
        the store. Safe to call twice."""
        server, self._server = self._server, None
        if server is None:
            return
        grace = self.config.grace_s if grace is None else grace
        log.info("stopping node_id=%s grace_s=%s", self.config.node_id, grace)
        if self._disk_watch is not None:
            await self._disk_watch.stop()
        await self._health.enter_graceful_shutdown()
        if self._exchange is not None:  # frames running are answered, within the grace
            await asyncio.gather(self._exchange.stop(grace), server.stop(grace))
        else:
            await server.stop(grace)
        if self._metrics is not None:
            await self._metrics.stop()
        await self.storage.close()
        log.info("stopped node_id=%s", self.config.node_id)


def _exchange_tls(tls: ServerTls | None) -> ssl.SSLContext | None:
    try:
        return tls.ssl_context() if tls else None
    except (ssl.SSLError, OSError) as exc:
        raise ListenError(f"cannot load the TLS certificate and key: {exc}") from exc


async def _bind_exchange(exchange: ExchangeListener, host: str, port: int) -> int:
    try:
        return await exchange.start(host, port)
    except OSError as exc:
        raise ListenError(f"cannot listen for exchange on {host}:{port}: {exc}") from exc


def _bind(server: grpc.aio.Server, listen: str, tls: ServerTls | None) -> int:
    """Binds listen; grpc raises or answers port 0 on failure, turned into one clear error."""
    try:
        if tls is None:
            port = server.add_insecure_port(listen)
        else:
            port = server.add_secure_port(listen, tls.credentials())
    except RuntimeError as exc:
        raise ListenError(f"cannot listen on {listen}: address in use or invalid ({exc})") from exc
    if not port:
        raise ListenError(f"cannot listen on {listen}: address in use or invalid")
    return int(port)
