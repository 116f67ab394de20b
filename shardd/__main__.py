"""The `shardd` command: reads flags, sets up logging, serves until SIGTERM or SIGINT.

    shardd --id n1 --listen 127.0.0.1:7101 --data ./data/n1

Exits 0 after a graceful shutdown, 1 when the node cannot start (data directory or listen
address unusable, or a non-loopback address with neither a node token nor router
certificate names and no --insecure; one log line says why), 2 for a bad flag or a data
directory made for another node id (the line names both ids).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import signal
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from shardkv.common.hlc import DEFAULT_MAX_OFFSET_MS
from shardkv.common.limits import DEFAULT_LIMITS
from shardkv.common.logs import setup_logging
from shardkv.common.node_ids import NODE_ID_RULE, BadNodeId, check_node_id
from shardkv.serving import connections, event_loop, exchange_listener, telemetry
from shardkv.shardd.auth import NodeAuth, read_token
from shardkv.shardd.identity import WrongNode
from shardkv.shardd.server import ListenError, ServerConfig, ServerTls, ShardServer
from shardkv.shardd.store_env import DEFAULT_MAP_SIZE, DEFAULT_MAX_MAP_SIZE, StoreOpenError

log = logging.getLogger("shardkv.shardd")

_UNITS = {
    "": 1,
    "k": 1 << 10,
    "kib": 1 << 10,
    "m": 1 << 20,
    "mib": 1 << 20,
    "g": 1 << 30,
    "gib": 1 << 30,
    "t": 1 << 40,
    "tib": 1 << 40,
}


def _size(text: str) -> int:
    """A byte count such as 1048576, 64KiB, 512MiB or 2GiB."""
    match = re.fullmatch(r"\s*(\d+)\s*([a-zA-Z]*)\s*", text)
    unit = match and _UNITS.get(match.group(2).lower())
    if not match or not unit or int(match.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"not a positive size: {text!r} (e.g. 1048576, 64MiB)")
    return int(match.group(1)) * unit


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"not a positive integer: {text!r}")
    return value


def _address(text: str) -> str:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"not a host:port address: {text!r}")
    return text


def parse_args(argv: Sequence[str] | None) -> tuple[ServerConfig, str]:
    """The server config and the log level the flags ask for."""
    parser = argparse.ArgumentParser(prog="shardd", description="shardkv storage node")
    parser.add_argument(
        "--id", required=True, help=f"stable node id, as in cluster.toml ({NODE_ID_RULE})"
    )
    parser.add_argument(
        "--listen",
        type=_address,
        default="127.0.0.1:7101",
        help="host:port to serve on (port 0: any free port)",
    )
    exchange_listener.add_flags(parser, "Replica and KV calls", "routers and clients")
    parser.add_argument("--data", type=Path, required=True, help="data directory (LMDB)")
    parser.add_argument(
        "--no-sync",
        action="store_true",
        help="skip fsync on commit: faster, but acknowledged writes can be "
        "lost on a crash (benchmarks only)",
    )
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    parser.add_argument("--max-value-bytes", type=_size, default=DEFAULT_LIMITS.max_value_bytes)
    parser.add_argument(
        "--max-batch-items",
        type=_positive,
        default=DEFAULT_LIMITS.max_batch_items,
        help="most records or keys in one call; routers send calls of up to"
        f" {DEFAULT_LIMITS.max_batch_items}, so a node serving routers keeps the default",
    )
    parser.add_argument("--max-message-bytes", type=_size, default=DEFAULT_LIMITS.max_message_bytes)
    parser.add_argument(
        "--map-size",
        type=_size,
        default=DEFAULT_MAP_SIZE,
        help="initial LMDB map size; it doubles when full",
    )
    parser.add_argument(
        "--max-map-size",
        type=_size,
        default=DEFAULT_MAX_MAP_SIZE,
        help="the map never grows beyond this; writes then fail with "
        "RESOURCE_EXHAUSTED while reads keep working",
    )
    parser.add_argument(
        "--max-concurrent-rpcs",
        type=_positive,
        default=2048,
        help="calls beyond this many in flight get RESOURCE_EXHAUSTED (on the gRPC port, and"
        " counted apart, on the exchange port)",
    )
    parser.add_argument(
        "--max-pending-writes",
        type=_positive,
        default=65536,
        help="writes waiting for a commit beyond this many get RESOURCE_EXHAUSTED",
    )
    parser.add_argument("--tls-cert", type=Path, help="certificate chain (PEM); enables TLS")
    parser.add_argument("--tls-key", type=Path, help="private key (PEM) of --tls-cert")
    parser.add_argument(
        "--tls-client-ca",
        type=Path,
        help="CA (PEM) that callers' certificates must chain to: mutual TLS",
    )
    parser.add_argument(
        "--node-token-file",
        type=Path,
        help="file holding the node token every call but health and reflection must carry"
        " (routers send it: their --node-token-file)",
    )
    parser.add_argument(
        "--router-cert-names",
        type=lambda text: frozenset(n.strip() for n in text.split(",") if n.strip()),
        default=frozenset(),
        metavar="NAME[,NAME...]",
        help="with --tls-client-ca: admit only certificates whose subject CN or alternative"
        " name is one of these (the routers'), not every certificate of the CA",
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="serve a non-loopback --listen with neither --node-token-file nor"
        " --router-cert-names: anyone who reaches the node can read, write and wipe it",
    )
    parser.add_argument(
        "--grace", type=float, default=5.0, help="seconds in-flight calls get to finish on shutdown"
    )
    parser.add_argument(
        "--max-clock-offset-ms",
        type=_positive,
        default=DEFAULT_MAX_OFFSET_MS,
        help="records whose version is further ahead of this node's wall clock are refused"
        " (INVALID_ARGUMENT); keep it equal to the routers' [clock] max_offset_ms",
    )
    parser.add_argument(
        "--disk-stall-s",
        type=float,
        default=10.0,
        help="once a commit has waited this long for the disk, the node says NOT_SERVING"
        " (routers count it DOWN) until the commit completes",
    )
    telemetry.add_flags(parser)
    connections.add_flags(parser, connections.DEFAULT_CONNECTIONS)
    args = parser.parse_args(argv)
    try:
        check_node_id(args.id, "--id")
    except BadNodeId as err:
        parser.error(str(err))
    if args.map_size > args.max_map_size:
        parser.error(f"--map-size {args.map_size} exceeds --max-map-size {args.max_map_size}")
    tls = _tls(parser, args)
    limits = replace(
        DEFAULT_LIMITS,
        max_value_bytes=args.max_value_bytes,
        max_batch_items=args.max_batch_items,
        max_message_bytes=args.max_message_bytes,
    )
    return ServerConfig(
        node_id=args.id,
        data_dir=args.data,
        listen=args.listen,
        exchange_port=args.exchange_port,
        advertise_exchange_port=args.advertise_exchange_port,
        sync=not args.no_sync,
        limits=limits,
        map_size=args.map_size,
        max_map_size=args.max_map_size,
        max_concurrent_rpcs=args.max_concurrent_rpcs,
        max_pending_writes=args.max_pending_writes,
        grace_s=args.grace,
        tls=tls,
        auth=_auth(parser, args),
        max_clock_offset_ms=args.max_clock_offset_ms,
        disk_stall_s=args.disk_stall_s,
        observe=telemetry.from_flags(args),
        connections=connections.from_flags(args),
    ), args.log_level


def _auth(parser: argparse.ArgumentParser, args: argparse.Namespace) -> NodeAuth:
    """Who may call the node (shardkv.shardd.auth); the token file is read now (exit 2)."""
    if args.router_cert_names and not args.tls_client_ca:
        parser.error("--router-cert-names needs mutual TLS: --tls-client-ca")
    try:
        token = read_token(args.node_token_file) if args.node_token_file else None
    except ValueError as err:
        parser.error(str(err))
    return NodeAuth(token=token, cert_names=args.router_cert_names, insecure=args.insecure)


def _tls(parser: argparse.ArgumentParser, args: argparse.Namespace) -> ServerTls | None:
    """The TLS material the flags name, read now so a bad file fails at start (exit 2)."""
    if bool(args.tls_cert) != bool(args.tls_key):
        parser.error("--tls-cert and --tls-key must be given together")
    if args.tls_client_ca and not args.tls_cert:
        parser.error("--tls-client-ca needs --tls-cert and --tls-key")
    if not args.tls_cert:
        return None

    def pem(path: Path, flag: str) -> Path:
        try:
            data = path.read_bytes()
        except OSError as exc:
            parser.error(f"{flag} {path}: {exc.strerror or exc}")
        if b"-----BEGIN" not in data:
            parser.error(f"{flag} {path}: not a PEM file")
        return path

    return ServerTls(
        cert_chain=pem(args.tls_cert, "--tls-cert"),
        private_key=pem(args.tls_key, "--tls-key"),
        client_ca=pem(args.tls_client_ca, "--tls-client-ca") if args.tls_client_ca else None,
    )


async def serve(config: ServerConfig) -> None:
    """Serves until SIGTERM or SIGINT, then shuts down gracefully."""
    server = ShardServer(config)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop()


def main(argv: Sequence[str] | None = None) -> int:
    config, level = parse_args(argv)
    setup_logging(level, process=config.node_id)
    connections.raise_descriptor_limit()
    try:
        event_loop.run(serve(config))
    except (StoreOpenError, ListenError) as exc:
        log.error("cannot start node_id=%s error=%s", config.node_id, exc)
        return 1
    except WrongNode as exc:
        log.error("refusing to start node_id=%s error=%s", config.node_id, exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
