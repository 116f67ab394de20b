"""The router as an object: wires ring, node clients, coordinator, health, hints and services.

``RouterServer(config).start()`` binds and returns the port; ``stop(grace)`` flips health
to NOT_SERVING, lets calls in flight finish, and stops the background loops. Only
``__main__`` reads flags; everything here comes from the frozen RouterConfig.
"""

from __future__ import annotations

import asyncio
import logging

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry
from shardkv.common.clock_state import ClockState
from shardkv.common.hlc import HybridClock, writer_number
from shardkv.router.api.admin_service import AdminService
from shardkv.router.api.exchange import KV_DESCRIPTOR, kv_exchange
from shardkv.router.api.kv_service import KVService
from shardkv.router.api.metrics import RouterCollector, router_registry
from shardkv.router.api.operations import Operations
from shardkv.router.api.security import (
    TokenInterceptor,
    channel_credentials,
    node_ssl_context,
    server_credentials,
)
from shardkv.router.config import BindError, RouterConfig
from shardkv.router.membership.fencing import RouterEpoch
from shardkv.router.membership.identity import IdentityGuard
from shardkv.router.membership.live_topology import Membership
from shardkv.router.membership.move_driver import Rebalancer
from shardkv.router.membership.move_lease import move_lease
from shardkv.router.membership.store_file import FileTopologyStore
from shardkv.router.membership.topology import NodeConfig
from shardkv.router.membership.writer_claim import ClaimedClock
from shardkv.router.repair.anti_entropy import AntiEntropy
from shardkv.router.repair.rebuild import Rebuilder
from shardkv.router.requests.coalescer import NodeFailure
from shardkv.router.requests.coordinator import Coordinator
from shardkv.router.requests.health import HealthMonitor, NodeHealth
from shardkv.router.requests.hint_handoff import HintHandoff
from shardkv.router.requests.node_client import NodeClient
from shardkv.serving.connections import server_options
from shardkv.serving.exchange_listener import ExchangeListener
from shardkv.serving.metrics_http import MetricsServer
from shardkv.serving.services import add_service
from shardkv.serving.telemetry import RequestInterceptor
from shardkv.v1 import admin_pb2, admin_pb2_grpc

log = logging.getLogger(__name__)

KV_SERVICE = KV_DESCRIPTOR.full_name
ADMIN_SERVICE = admin_pb2.DESCRIPTOR.services_by_name["Admin"].full_name
HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name


class RouterServer:
    """One router process's gRPC server and background loops."""

    def __init__(self, config: RouterConfig) -> None:
        self._config = config
        topology = config.topology
        timeouts = topology.timeouts
        self._call_timeout_s = timeouts.node_call_ms / 1000
        self.health = NodeHealth(node.id for node in topology.nodes)
        self._server: grpc.aio.Server | None = None
        self._clients: dict[str, NodeClient] = {}
        self._health_servicer = health.aio.HealthServicer()
        self._monitor: HealthMonitor | None = None
        self._handoff: HintHandoff | None = None
        self._membership: Membership | None = None
        self._rebalancer: Rebalancer | None = None
        self._antientropy: AntiEntropy | None = None
        self._guard: IdentityGuard | None = None
        self._rebuilder: Rebuilder | None = None
        self._metrics: MetricsServer | None = None
        self._exchange: ExchangeListener | None = None
        self._clock: HybridClock | None = None
        # host:port of the metrics endpoint; empty when it is off.
        self.metrics_address = ""

    def _open_clock(self) -> HybridClock:
        """The router's clock, above its reservation and holding its writer id; raises
        ClockStateError when another router runs with the same writer id."""
        config = self._config
        state = ClockState.open(config.state_dir, config.router_id) if config.state_dir else None
        offset_s, max_offset_ms = config.clock_offset_ms / 1000, config.topology.clock.max_offset_ms
        if config.writer_claim is not None:
            return ClaimedClock(
                config.writer_claim, offset_s=offset_s, max_offset_ms=max_offset_ms, state=state
            )
        return HybridClock(offset_s=offset_s, max_offset_ms=max_offset_ms, state=state)

    async def start(self) -> int:
        """Takes the writer id (on this host, then in etcd), binds, checks every node once,
        starts serving; returns the bound port."""
        config, topology = self._config, self._config.topology
        clock = self._clock = await asyncio.to_thread(self._open_clock)
        if config.writer_claim is not None:
            await config.writer_claim.acquire()
        timeouts = topology.timeouts
        node_tls = config.node_tls
        credentials = (
            channel_credentials(node_tls.ca, node_tls.cert, node_tls.key) if node_tls else None
        )
        tls = node_ssl_context(node_tls.ca, node_tls.cert, node_tls.key) if node_tls else None
        # The epoch this router routes under; fence refusals reload it (fencing.py).
        epochs = RouterEpoch(topology.epoch)

        def new_client(node: NodeConfig) -> NodeClient:
            return NodeClient(
                node,
                limits=config.limits,
                call_timeout_s=self._call_timeout_s,
                on_failure=self._on_call_failure,
                write_timeout_s=max(self._call_timeout_s, timeouts.request_ms / 1000),
                credentials=credentials,
                tls=tls,
                max_queued=config.max_queued_per_node,
                token=config.node_token,
                epochs=epochs,
            )

        self._clients = {node.id: new_client(node) for node in topology.nodes}
        store = config.store
        if store is None and config.config_path is not None:
            store = FileTopologyStore(
                config.config_path, interval_s=timeouts.watch_interval_ms / 1000
            )
        membership = self._membership = Membership(
            topology,
            store=store,
            clients=self._clients,
            health=self.health,
            new_client=new_client,
            epochs=epochs,
        )
        handoff = self._handoff = HintHandoff(
            self._clients,
            self.health,
            placement=membership.placement,
            replication=topology.replication,
            interval_s=timeouts.hint_interval_ms / 1000,
        )
        antientropy = self._antientropy = AntiEntropy(
            membership=membership,
            health=self.health,
            moving=lambda: membership.topology.move is not None,
            hints_placed=handoff.placed,
        )
        rebalancer = self._rebalancer = Rebalancer(
            router_id=config.router_id,
            membership=membership,
            health=self.health,
            probe_client=new_client,
            pause_repair=antientropy.pause,
            lease=move_lease(store, config.router_id),
        )

        coordinator = Coordinator(
            ring=membership.placement,
            replication=topology.replication,
            clients=self._clients,
            health=self.health,
            clock=clock,
            writer=writer_number(config.router_id),
            repair_timeout_s=self._call_timeout_s,
            epochs=epochs,
        )
        health_interval_s = timeouts.health_interval_ms / 1000
        self._monitor = HealthMonitor(
            {node_id: client.check for node_id, client in self._clients.items()},
            self.health,
            interval_s=health_interval_s,
            timeout_s=min(self._call_timeout_s, max(0.5, health_interval_s)),
        )
        # Which nodes count toward quorums (their data directories), and their rebuilds.
        guard = self._guard = IdentityGuard(
            membership=membership,
            health=self.health,
            interval_s=health_interval_s,
            timeout_s=self._call_timeout_s,
        )
        rebuilder = self._rebuilder = Rebuilder(
            router_id=config.router_id,
            membership=membership,
            health=self.health,
            guard=guard,
            max_records_per_s=topology.rebalance.max_records_per_s,
        )
        registry = router_registry(
            RouterCollector(
                coordinator=coordinator,
                clients=self._clients,
                health=self.health,
                handoff=handoff,
                antientropy=antientropy,
                rebalancer=rebalancer,
            )
        )
        # Outermost first: refused calls are counted and logged too.
        telemetry = RequestInterceptor(registry, config.observe, make_ids=True)
        interceptors: list[grpc.aio.ServerInterceptor] = [telemetry]
        if config.client_token or config.admin_token:
            interceptors.append(TokenInterceptor(config.client_token, config.admin_token))
        server = grpc.aio.server(
            interceptors=interceptors,
            maximum_concurrent_rpcs=config.max_concurrent_rpcs,
            options=[
                ("grpc.so_reuseport", 0),
                ("grpc.max_send_message_length", config.limits.max_message_bytes),
                ("grpc.max_receive_message_length", config.limits.max_message_bytes),
                *server_options(config.connections),
            ],
        )
        kv = KVService(
            coordinator,
            self._clients,
            self.health,
            topology=topology,
            limits=config.limits,
            router_id=config.router_id,
        )
        add_service(server, KV_DESCRIPTOR, kv)  # BatchGet answers bytes (services.py)
        self._exchange = kv_exchange(
            kv,
            router_id=config.router_id,
            observe=telemetry.observe,
            client_token=config.client_token,
            tls=config.tls,
            max_message_bytes=config.limits.max_message_bytes,
            connections=config.connections,
            max_running=config.max_concurrent_rpcs,
        )
        admin_pb2_grpc.add_AdminServicer_to_server(  # type: ignore[no-untyped-call]
            AdminService(
                router_id=config.router_id,
                membership=membership,
                health=self.health,
                handoff=self._handoff,
                rebalancer=rebalancer,
                antientropy=antientropy,
                guard=guard,
                rebuilder=rebuilder,
                operations=Operations(
                    coordinator=coordinator,
                    membership=membership,
                    limits=config.limits,
                    call_timeout_s=self._call_timeout_s,
                    request_timeout_s=timeouts.request_ms / 1000,
                ),
            ),
            server,
        )
        health_pb2_grpc.add_HealthServicer_to_server(self._health_servicer, server)
        reflection.enable_server_reflection(
            (KV_SERVICE, ADMIN_SERVICE, HEALTH_SERVICE, reflection.SERVICE_NAME), server
        )
        port = self._bind(server)
        self._server = server
        bound = await self._bind_exchange()
        kv.exchange_port = config.advertise_exchange_port or bound
        await self._start_metrics(registry)
        await self._monitor.check_all()
        await guard.check_all()
        await server.start()
        for name in ("", KV_SERVICE, ADMIN_SERVICE):
            await self._health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        self._monitor.start()
        self._handoff.start()
        membership.start(self._monitor)
        rebalancer.start()
        antientropy.start()
        guard.start()
        log.info(
            "router %s serving on port %d: %d nodes, N=%d R=%d W=%d, epoch %d",
            config.router_id,
            port,
            len(topology.nodes),
            topology.replication,
            topology.read_quorum,
            topology.write_quorum,
            topology.epoch,
        )
        return port

    def _bind(self, server: grpc.aio.Server) -> int:
        tls = self._config.tls
        listen = self._config.listen
        try:
            if tls is None:
                port = server.add_insecure_port(listen)
            else:
                creds = server_credentials(tls.cert, tls.key, tls.client_ca)
                port = server.add_secure_port(listen, creds)
        except RuntimeError as err:
            raise BindError(f"cannot listen on {listen}: {err}") from err
        if not port:
            raise BindError(f"cannot listen on {listen}: address in use or not local")
        return int(port)

    async def _bind_exchange(self) -> int:
        assert self._exchange is not None
        host, port = self._config.listen.rsplit(":", 1)[0], self._config.exchange_port
        try:
            return await self._exchange.start(host, port)
        except OSError as err:
            raise BindError(f"cannot listen for exchange on {host}:{port}: {err}") from err

    async def _start_metrics(self, registry: CollectorRegistry) -> None:
        listen = self._config.observe.metrics_listen
        if listen is None:
            return
        metrics = MetricsServer(registry, listen)
        try:
            self.metrics_address = await metrics.start()
        except OSError as err:
            raise BindError(str(err)) from err
        self._metrics = metrics

    def _on_call_failure(self, failure: NodeFailure, timeout_s: float) -> None:
        """A node that refuses calls is marked DOWN. One that lets a call use its whole
        budget is checked at once, and DOWN only if the check fails too: a node whose disk
        stalls still answers its checks and its reads, and marking it DOWN would fail every
        request sent to it meanwhile (a hung node fails the check)."""
        if failure.code == grpc.StatusCode.UNAVAILABLE:
            self.health.mark_down(failure.node_id, f"call failed: {failure}")
        elif (
            failure.code == grpc.StatusCode.DEADLINE_EXCEEDED
            and self._monitor is not None
            and timeout_s >= self._call_timeout_s * 0.99
        ):
            self._monitor.check_soon(failure.node_id)

    async def wait_for_termination(self) -> None:
        assert self._server is not None, "start() first"
        await self._server.wait_for_termination()

    async def stop(self, grace: float | None = 5.0) -> None:
        """Stops accepting calls, finishes those in flight (up to grace), stops the loops."""
        await self._health_servicer.enter_graceful_shutdown()
        if self._server is not None:  # frames running are answered, within the grace
            exchange = self._exchange.stop(grace or 0) if self._exchange else asyncio.sleep(0)
            await asyncio.gather(exchange, self._server.stop(grace))
        for loop in (
            self._rebuilder,
            self._guard,
            self._rebalancer,
            self._antientropy,
            self._membership,
        ):
            if loop is not None:
                await loop.stop()
        if self._monitor is not None:
            await self._monitor.stop()
        if self._handoff is not None:
            await self._handoff.stop()
        await asyncio.gather(*(client.close() for client in self._clients.values()))
        if self._metrics is not None:
            await self._metrics.stop()
        if self._config.writer_claim is not None:
            await self._config.writer_claim.release()
        if self._clock is not None:
            await asyncio.to_thread(self._clock.close)
        log.info("router %s stopped", self._config.router_id)
