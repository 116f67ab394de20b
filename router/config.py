"""What a router is told to do: RouterConfig (built by __main__ from flags, or by tests)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from shardkv.common.limits import DEFAULT_LIMITS, Limits
from shardkv.router.membership.topology import Topology
from shardkv.router.membership.topology_store import TopologyStore
from shardkv.router.membership.writer_claim import WriterClaim
from shardkv.router.requests.node_client import MAX_QUEUED
from shardkv.serving.connections import ROUTER_CONNECTIONS, ConnectionLimits
from shardkv.serving.telemetry import DEFAULT_OBSERVABILITY, Observability


class BindError(OSError):
    """The listen address could not be bound (in use, or not a local address)."""


@dataclass(frozen=True)
class TlsConfig:
    """Server certificate and key; with client_ca, clients must present a certificate."""

    cert: Path
    key: Path
    client_ca: Path | None = None


@dataclass(frozen=True)
class NodeTlsConfig:
    """TLS on the router's channels to its nodes: the CA their certificates chain to, and
    the router's own certificate and key for nodes that require mutual TLS."""

    ca: Path
    cert: Path | None = None
    key: Path | None = None


@dataclass(frozen=True)
class RouterConfig:
    """Everything a router needs; built by __main__ from flags, or by tests directly."""

    router_id: str
    topology: Topology
    # cluster.toml: topology changes are written back to it, and changes other routers
    # write to it are picked up. None (tests) refuses topology changes.
    config_path: Path | None = None
    # Where the topology is kept when not in config_path (etcd; __main__ opens it, and
    # the router closes it when it stops).
    store: TopologyStore | None = None
    listen: str = "127.0.0.1:0"
    # The exchange port (KV calls as frames), on the listen host; 0: one the OS picks
    # (clients learn it from KV.ExchangePort), and the port clients are told (0: that one).
    exchange_port: int = 0
    advertise_exchange_port: int = 0
    tls: TlsConfig | None = None
    client_token: str | None = None
    # Admin calls need this token when set (the client token does not open them).
    admin_token: str | None = None
    node_tls: NodeTlsConfig | None = None
    # Sent with every call to a node, for nodes started with --node-token-file.
    node_token: str | None = None
    clock_offset_ms: int = 0
    # Where the clock reservation of this router's writer id lives, held under a lock while
    # the router runs (shared by the routers of a host); None (tests) keeps neither.
    state_dir: Path | None = None
    # The writer id held in etcd, across hosts (with an etcd store; __main__ makes it, the
    # router claims it at start and releases it when it stops).
    writer_claim: WriterClaim | None = None
    limits: Limits = DEFAULT_LIMITS
    # Calls beyond this many in flight are refused with RESOURCE_EXHAUSTED (load shedding).
    max_concurrent_rpcs: int = 4096
    # Items queued for one node (per kind of call) beyond this fail with RESOURCE_EXHAUSTED.
    max_queued_per_node: int = MAX_QUEUED
    # The metrics endpoint and request logging.
    observe: Observability = DEFAULT_OBSERVABILITY
    # How many connections the router holds, and how long unused or old ones live.
    connections: ConnectionLimits = ROUTER_CONNECTIONS
