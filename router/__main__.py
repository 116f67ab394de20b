"""The shardkv-router command: read flags and cluster.toml, run a RouterServer until SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import signal
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from shardkv.common.hlc import ClockStateError
from shardkv.common.logs import setup_logging
from shardkv.router.api.security import SecurityError, read_token
from shardkv.router.config import BindError, NodeTlsConfig, RouterConfig, TlsConfig
from shardkv.router.membership.etcd_client import EtcdClient
from shardkv.router.membership.etcd_security import EtcdAccessError, EtcdSecurity, read_password
from shardkv.router.membership.store_etcd import EtcdTarget, open_etcd_store, parse_etcd_url
from shardkv.router.membership.topology import TopologyError, load_topology
from shardkv.router.membership.topology_store import StoreUnavailable
from shardkv.router.membership.writer_claim import LEASE_TTL_S, WriterClaim, WriterIdTaken
from shardkv.router.requests.node_client import MAX_QUEUED
from shardkv.router.server import RouterServer
from shardkv.serving import connections, event_loop, exchange_listener, telemetry

log = logging.getLogger("shardkv.router")

# Calls in flight get this long to finish after SIGTERM.
SHUTDOWN_GRACE_S = 5.0
# Cyclic-GC thresholds once serving (CPython's default is 700, 10, 10). A batch of 1000 keys
# allocates tens of thousands of short-lived containers that are freed by reference
# counting, yet at the default the collector ran every ~700 of them and took over half of
# the router's CPU under batch load (py-spy --native: gc_collect_main 57%).
GC_THRESHOLDS = (100_000, 20, 10)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shardkv-router",
        description="Routes shardkv reads and writes to the replicas of each key, by quorum.",
    )
    parser.add_argument("--id", required=True, help="this router's id (its writer tie-break)")
    parser.add_argument("--config", required=True, type=Path, help="cluster.toml topology file")
    parser.add_argument(
        "--topology",
        metavar="etcd://HOST:PORT[,HOST:PORT...]/PREFIX",
        help="keep the topology in etcd under PREFIX, shared by routers on several hosts: an"
        " empty PREFIX is seeded from --config, otherwise --config's topology is not used"
        " (default: the --config file, for the routers of one host)",
    )
    parser.add_argument(
        "--etcd-lease-s",
        type=int,
        default=LEASE_TTL_S,
        help="TTL of the etcd lease holding this router's writer id: a router that dies frees"
        " its id this late, and one that cannot reach etcd this long stops writing"
        f" (default {LEASE_TTL_S})",
    )
    parser.add_argument(
        "--etcd-cacert", type=Path, help="CA (PEM) of etcd's certificates: TLS to etcd"
    )
    parser.add_argument(
        "--etcd-cert", type=Path, help="client certificate (PEM) for etcd's --client-cert-auth"
    )
    parser.add_argument("--etcd-key", type=Path, help="private key (PEM) of --etcd-cert")
    parser.add_argument("--etcd-user", help="etcd user to authenticate as (etcd auth enabled)")
    parser.add_argument(
        "--etcd-password-file",
        type=Path,
        help="file holding --etcd-user's password (one line; never give it on the command line)",
    )
    parser.add_argument("--listen", default="127.0.0.1:7100", help="host:port to serve on")
    exchange_listener.add_flags(parser, "KV calls", "clients")
    parser.add_argument("--tls-cert", type=Path, help="server certificate (PEM); enables TLS")
    parser.add_argument("--tls-key", type=Path, help="server private key (PEM)")
    parser.add_argument(
        "--tls-client-ca", type=Path, help="CA (PEM) client certificates must chain to (mTLS)"
    )
    parser.add_argument(
        "--token-file", type=Path, help="file holding the bearer token clients must send"
    )
    parser.add_argument(
        "--admin-token-file",
        type=Path,
        help="file holding the bearer token Admin calls must send (the client token then"
        " does not open them)",
    )
    parser.add_argument(
        "--node-tls-ca", type=Path, help="CA (PEM) of the nodes' certificates: TLS to nodes"
    )
    parser.add_argument(
        "--node-tls-cert", type=Path, help="certificate (PEM) the router shows nodes (mTLS)"
    )
    parser.add_argument("--node-tls-key", type=Path, help="private key (PEM) of --node-tls-cert")
    parser.add_argument(
        "--node-token-file",
        type=Path,
        help="file holding the node token, sent with every call to a node (shardd"
        " --node-token-file)",
    )
    parser.add_argument(
        "--max-concurrent-rpcs",
        type=int,
        default=4096,
        help="calls beyond this many in flight get RESOURCE_EXHAUSTED (on the gRPC port, and"
        " counted apart, on the exchange port)",
    )
    parser.add_argument(
        "--max-queued-per-node",
        type=int,
        default=MAX_QUEUED,
        help="items waiting for one node beyond this many get RESOURCE_EXHAUSTED",
    )
    parser.add_argument(
        "--clock-offset-ms", type=int, default=0, help="skew this router's clock (tests)"
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        help="directory of the routers' clock reservations and writer-id locks, shared by"
        " the routers of this host (default: router-state/ beside --config)",
    )
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    telemetry.add_flags(parser)
    connections.add_flags(parser, connections.ROUTER_CONNECTIONS)
    return parser


def _config(parser: argparse.ArgumentParser, args: argparse.Namespace) -> RouterConfig:
    """Builds the RouterConfig, or exits through parser.error naming the bad input."""
    if bool(args.tls_cert) != bool(args.tls_key):
        parser.error("--tls-cert and --tls-key must be given together")
    if args.tls_client_ca and not args.tls_cert:
        parser.error("--tls-client-ca needs --tls-cert and --tls-key")
    if bool(args.node_tls_cert) != bool(args.node_tls_key):
        parser.error("--node-tls-cert and --node-tls-key must be given together")
    if args.node_tls_cert and not args.node_tls_ca:
        parser.error("--node-tls-cert needs --node-tls-ca")
    if args.max_queued_per_node < 1:
        parser.error(f"--max-queued-per-node must be positive, got {args.max_queued_per_node}")
    if args.etcd_lease_s < 2:
        parser.error(
            f"--etcd-lease-s must be at least 2 (etcd's shortest), got {args.etcd_lease_s}"
        )
    if args.max_concurrent_rpcs < 1:
        parser.error(f"--max-concurrent-rpcs must be positive, got {args.max_concurrent_rpcs}")
    try:
        topology = load_topology(args.config)
        client_token = read_token(args.token_file) if args.token_file else None
        admin_token = read_token(args.admin_token_file) if args.admin_token_file else None
        node_token = read_token(args.node_token_file) if args.node_token_file else None
    except (TopologyError, SecurityError) as err:
        parser.error(str(err))
    tls = TlsConfig(args.tls_cert, args.tls_key, args.tls_client_ca) if args.tls_cert else None
    node_tls = (
        NodeTlsConfig(args.node_tls_ca, args.node_tls_cert, args.node_tls_key)
        if args.node_tls_ca
        else None
    )
    return RouterConfig(
        router_id=args.id,
        topology=topology,
        config_path=args.config,
        listen=args.listen,
        exchange_port=args.exchange_port,
        advertise_exchange_port=args.advertise_exchange_port,
        tls=tls,
        client_token=client_token,
        admin_token=admin_token,
        node_token=node_token,
        node_tls=node_tls,
        clock_offset_ms=args.clock_offset_ms,
        state_dir=args.state_dir or args.config.resolve().parent / "router-state",
        max_concurrent_rpcs=args.max_concurrent_rpcs,
        max_queued_per_node=args.max_queued_per_node,
        observe=telemetry.from_flags(args),
        connections=connections.from_flags(args),
    )


def _etcd_security(parser: argparse.ArgumentParser, args: argparse.Namespace) -> EtcdSecurity:
    """The --etcd-* flags checked and read, or exits through parser.error."""
    if bool(args.etcd_cert) != bool(args.etcd_key):
        parser.error("--etcd-cert and --etcd-key must be given together")
    if args.etcd_cert and not args.etcd_cacert:
        parser.error("--etcd-cert needs --etcd-cacert (TLS to etcd)")
    if bool(args.etcd_user) != bool(args.etcd_password_file):
        parser.error("--etcd-user and --etcd-password-file must be given together")
    for flag in ("etcd_cacert", "etcd_cert", "etcd_key", "etcd_user"):
        if getattr(args, flag) and not args.topology:
            parser.error(f"--{flag.replace('_', '-')} needs --topology etcd://...")
    try:
        password = read_password(args.etcd_password_file) if args.etcd_password_file else ""
    except EtcdAccessError as err:
        parser.error(str(err))
    return EtcdSecurity(args.etcd_cacert, args.etcd_cert, args.etcd_key, args.etcd_user, password)


async def _serve(
    config: RouterConfig, etcd: EtcdTarget | None, security: EtcdSecurity, lease_s: int
) -> int:
    if etcd is not None:
        try:
            store, topology = await open_etcd_store(
                etcd, seed=config.topology, seed_source=str(config.config_path), security=security
            )
        except (StoreUnavailable, TopologyError) as err:
            log.error("%s", err)
            return 1
        client = EtcdClient(etcd.endpoints, security=security)
        claim = WriterClaim(client, etcd.prefix, config.router_id, ttl_s=lease_s)
        config = replace(config, topology=topology, store=store, writer_claim=claim)
    server = RouterServer(config)
    try:
        await server.start()
    except (
        BindError,
        SecurityError,
        ClockStateError,
        WriterIdTaken,
        StoreUnavailable,
    ) as err:
        log.error("%s", err)
        await server.stop(0)
        return 1
    _tune_gc()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await stopping.wait()
    log.info("signal received: shutting down (grace %.0f s)", SHUTDOWN_GRACE_S)
    await server.stop(SHUTDOWN_GRACE_S)
    return 0


def _tune_gc() -> None:
    """Moves everything alive after start-up out of the collector's sight (gc.freeze) and
    collects less often: the collector's work is proportional to what it scans, and the
    router's own garbage is almost all acyclic."""
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def main(argv: Sequence[str] | None = None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    setup_logging(args.log_level, process=args.id)
    connections.raise_descriptor_limit()
    config = _config(parser, args)
    try:
        etcd = parse_etcd_url(args.topology) if args.topology else None
    except ValueError as err:
        parser.error(f"--topology: {err}")
    security = _etcd_security(parser, args)
    for warning in security.clear_text_warnings(etcd.endpoints if etcd else ()):
        log.warning("%s", warning)
    sys.exit(event_loop.run(_serve(config, etcd, security, args.etcd_lease_s)))


if __name__ == "__main__":
    main()
