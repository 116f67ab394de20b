"""``shardctl``: the command line for one-off reads, writes, scans and cluster status.

    shardctl [--addr HOST:PORT ...] get KEY
    shardctl put KEY [VALUE]          # VALUE omitted or "-": read it from stdin
    shardctl delete KEY
    shardctl scan [--prefix P | --start S --end E] [--limit N]
    shardctl topology | health        # Admin service: routers only
    shardctl node add|remove|rebuild, moves, repair   # topology changes (see topology.py)
    shardctl status [--watch] | backup DIR | restore DIR   # see operations.py

Global options go before or after the subcommand: ``--addr`` (repeatable or
comma-separated; default $SHARDKV_ADDR, else 127.0.0.1:7100), ``--consistency
one|quorum|all``, ``--timeout``, ``--json``, ``--token-file`` (or $SHARDKV_TOKEN; ``--token``
also works, but any user can read it in ``ps``), ``--tls-ca``/``--tls-cert``/``--tls-key``.
A token about to cross the network in plaintext (no TLS, not loopback) gets a warning.

Output. ``get`` writes the value's raw bytes, followed by a newline only when stdout is a
terminal, so ``shardctl get k > file`` stores exactly the value. ``put`` and ``delete``
print the version written. ``scan`` prints ``key<TAB>value`` lines with tab, newline,
backslash and undecodable bytes escaped, and on a terminal every other control or format
character too (``\x1b``, ``\u202e``), so no key can drive the terminal: for people; scripts
use ``--json``.

``--json``: one JSON object per record, one per line (JSON Lines), so a large scan
streams and ``jq`` reads it directly. A key or value is UTF-8 text when it decodes,
otherwise base64 with ``"key_base64": true`` / ``"value_base64": true`` beside it.
``get`` prints ``{"key", "found", "value", "version"}``; ``put``/``delete``
``{"key", "version"}``; ``topology``/``health`` the Admin reply with proto field names.

Exit codes: 0 done; 1 a negative answer (``get`` of a missing key, ``health`` of a
cluster with a node down); 2 any error, with one line on stderr naming it.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import re
import sys
import unicodedata
from collections.abc import Sequence
from typing import Any, BinaryIO, TextIO

import grpc
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from shardkv.client.core import Consistency, Record
from shardkv.client.errors import ShardKVError
from shardkv.client.sync import Client
from shardkv.client.transport import TLSConfig
from shardkv.v1 import admin_pb2

from . import CommandError
from . import operations as operations_cli
from . import topology as topology_cli

DEFAULT_ADDR = "127.0.0.1:7100"
EXIT_OK, EXIT_NEGATIVE, EXIT_ERROR = 0, 1, 2
_LEVELS = {"one": Consistency.ONE, "quorum": Consistency.QUORUM, "all": Consistency.ALL}
# How gRPC words a connection this client could not make or keep, as opposed to a server
# answering UNAVAILABLE itself (e.g. a router that could not reach enough replicas, whose
# message may quote its own connection errors further on).
_UNREACHABLE_SIGNS = (
    "failed to connect",
    "connection refused",
    "connection reset",
    "socket closed",
    "connect failed",
    "dns resolution failed",
)
_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
# On a terminal: what is not printable ASCII is checked against the categories that do
# not print (controls, formats such as bidi overrides, line separators, unassigned).
_MAYBE_UNPRINTABLE = re.compile(r"[^\x20-\x7e]")
_UNPRINTABLE = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}


class _Failure(Exception):
    """A usage problem found before any call (unreadable file, bad option combination)."""


def _global_options(*, suppress: bool) -> argparse.ArgumentParser:
    """The global options; repeated on every subcommand (defaults suppressed there) so
    they may be written before or after it."""
    parser = argparse.ArgumentParser(add_help=False)

    def default(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    parser.add_argument(
        "--addr",
        action="append",
        default=default(None),
        metavar="HOST:PORT",
        help=f"router address; repeat or comma-separate for several "
        f"(default $SHARDKV_ADDR or {DEFAULT_ADDR})",
    )
    parser.add_argument(
        "--consistency",
        choices=sorted(_LEVELS),
        default=default(None),
        help="replicas that must answer (default: the cluster's R and W)",
    )
    parser.add_argument(
        "--timeout", type=float, default=default(5.0), help="seconds per call (default 5)"
    )
    parser.add_argument(
        "--json", action="store_true", default=default(False), help="machine-readable output"
    )
    parser.add_argument(
        "--token",
        default=default(None),
        help="bearer token; other users see it in ps: prefer --token-file or $SHARDKV_TOKEN",
    )
    parser.add_argument(
        "--token-file",
        default=default(None),
        metavar="PATH",
        help="file holding the bearer token (default: $SHARDKV_TOKEN)",
    )
    parser.add_argument("--tls-ca", default=default(None), help="CA bundle (PEM): turns on TLS")
    parser.add_argument("--tls-cert", default=default(None), help="client certificate (PEM)")
    parser.add_argument("--tls-key", default=default(None), help="client private key (PEM)")
    return parser


def build_parser() -> argparse.ArgumentParser:
    common = _global_options(suppress=True)
    parser = argparse.ArgumentParser(
        prog="shardctl",
        parents=[_global_options(suppress=False)],
        description="Read, write and inspect a shardkv cluster.",
        epilog="Exit codes: 0 ok, 1 not found / not healthy, 2 error.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    get = commands.add_parser("get", parents=[common], help="print a key's value")
    get.add_argument("key")
    put = commands.add_parser("put", parents=[common], help="write a key")
    put.add_argument("key")
    put.add_argument("value", nargs="?", default="-", help='the value; "-" or none: stdin')
    delete = commands.add_parser("delete", parents=[common], help="delete a key")
    delete.add_argument("key")
    scan = commands.add_parser("scan", parents=[common], help="list records in key order")
    scan.add_argument("--prefix", default="")
    scan.add_argument("--start", default="", help="first key (inclusive)")
    scan.add_argument("--end", default="", help="end key (exclusive)")
    scan.add_argument("--limit", type=int, default=None, help="stop after N records")
    commands.add_parser("topology", parents=[common], help="ring, nodes and their state")
    commands.add_parser("health", parents=[common], help="whether every node is up")
    topology_cli.add_parsers(commands, common, lambda: _global_options(suppress=True))
    operations_cli.add_parsers(commands, common)
    return parser


def _connection(args: argparse.Namespace) -> tuple[list[str], TLSConfig | None, str | None]:
    """Router addresses, TLS and token, from the options and the environment."""
    addresses = args.addr or [os.environ.get("SHARDKV_ADDR") or DEFAULT_ADDR]
    if args.token is not None and args.token_file is not None:
        raise _Failure("give --token or --token-file, not both")
    bearer_token = args.token if args.token is not None else _token_file(args.token_file)
    if bearer_token is None:
        bearer_token = os.environ.get("SHARDKV_TOKEN") or None
    tls = None
    if args.tls_ca or args.tls_cert or args.tls_key:
        try:
            tls = TLSConfig(ca=args.tls_ca, cert=args.tls_cert, key=args.tls_key)
            tls.credentials()  # reads the files now, to report a bad path as such
        except ValueError as err:
            raise _Failure(str(err)) from err
    return addresses, tls, bearer_token


def _token_file(path: str | None) -> str | None:
    """The token in the file (its first line, without surrounding blanks)."""
    if path is None:
        return None
    try:
        with open(path, encoding="utf-8") as stream:
            token = stream.readline().strip()
    except (OSError, UnicodeDecodeError) as err:
        raise _Failure(f"cannot read --token-file {path}: {err}") from err
    if not token:
        raise _Failure(f"--token-file {path} holds no token on its first line")
    return token


def _client(args: argparse.Namespace) -> Client:
    addresses, tls, bearer_token = _connection(args)
    return Client(
        addresses,
        timeout=args.timeout,
        consistency=_LEVELS[args.consistency] if args.consistency else None,
        tls=tls,
        bearer_token=bearer_token,
    )


def _text(data: bytes, field: str) -> dict[str, Any]:
    """A key or value for JSON: UTF-8 text when it decodes, else base64 and a flag."""
    try:
        return {field: data.decode("utf-8")}
    except UnicodeDecodeError:
        return {field: base64.b64encode(data).decode("ascii"), f"{field}_base64": True}


def _human(data: bytes) -> str:
    return data.decode("utf-8", "backslashreplace").translate(_ESCAPES)


def _escape_char(match: re.Match[str]) -> str:
    char = match.group()
    if unicodedata.category(char) not in _UNPRINTABLE:
        return char
    code = ord(char)
    return (
        f"\\x{code:02x}"
        if code < 0x100
        else f"\\u{code:04x}"
        if code < 0x10000
        else f"\\U{code:08x}"
    )


def _terminal(data: bytes) -> str:
    """_human's text with nothing left that a terminal would act on instead of print."""
    return _MAYBE_UNPRINTABLE.sub(_escape_char, _human(data))


def _record_json(record: Record) -> str:
    return json.dumps(
        {**_text(record.key, "key"), **_text(record.value, "value"), "version": record.version}
    )


def _emit_json(out: TextIO, obj: dict[str, Any]) -> None:
    out.write(json.dumps(obj) + "\n")


def _proto_json(message: Message) -> dict[str, Any]:
    return MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def _print_nodes(out: TextIO, nodes: Sequence[admin_pb2.NodeStatus]) -> None:
    for node in nodes:
        state = admin_pb2.NodeState.Name(node.state)
        error = f"  last_error={node.last_error}" if node.last_error else ""
        if node.membership and node.membership != "member":
            error = f"  {node.membership}{error}"
        if node.directory and node.directory != "ok":
            error = f"  directory={node.directory} (not counted){error}"
        out.write(
            f"  {node.id:<8} {node.address:<22} {state:<7} weight={node.weight}"
            f" share={node.ring_share:.3f} hints={node.hints_pending}{error}\n"
        )


def _run(args: argparse.Namespace, stdin: BinaryIO, stdout: BinaryIO, out: TextIO) -> int:
    with _client(args) as client:
        if args.command in operations_cli.COMMANDS:
            return operations_cli.run(args, client, out)
        if args.command in topology_cli.COMMANDS:
            return topology_cli.run(args, client, out)
        if args.command == "get":
            key = os.fsencode(args.key)
            record = client.get_record(key)
            if args.json:
                body = {**_text(key, "key"), "found": record is not None}
                if record is not None:
                    body |= {**_text(record.value, "value"), "version": record.version}
                _emit_json(out, body)
            elif record is not None:
                stdout.write(record.value)
                if stdout.isatty():
                    stdout.write(b"\n")
                stdout.flush()
            if record is None:
                print(f"shardctl: key {key!r} not found", file=sys.stderr)
                return EXIT_NEGATIVE
            return EXIT_OK
        if args.command in ("put", "delete"):
            key = os.fsencode(args.key)
            if args.command == "put":
                value = stdin.read() if args.value == "-" else os.fsencode(args.value)
                version = client.put(key, value)
            else:
                version = client.delete(key)
            if args.json:
                _emit_json(out, {**_text(key, "key"), "version": version})
            else:
                out.write(f"{version}\n")
            return EXIT_OK
        if args.command == "scan":
            records = client.scan(
                prefix=os.fsencode(args.prefix),
                start=os.fsencode(args.start),
                end=os.fsencode(args.end),
                limit=args.limit,
            )
            human = _terminal if out.isatty() else _human
            for record in records:
                if args.json:
                    out.write(_record_json(record) + "\n")
                else:
                    out.write(f"{human(record.key)}\t{human(record.value)}\n")
            return EXIT_OK
        if args.command == "topology":
            topology = client.topology()
            if args.json:
                _emit_json(out, _proto_json(topology))
            else:
                out.write(
                    f"router {topology.router_id}  epoch {topology.epoch}  "
                    f"N={topology.replication} R={topology.read_quorum} "
                    f"W={topology.write_quorum}\n"
                )
                _print_nodes(out, topology.nodes)
            return EXIT_OK
        health = client.health()
        if args.json:
            _emit_json(out, _proto_json(health))
        else:
            verdict = "healthy" if health.healthy else "NOT healthy"
            out.write(f"{verdict}: {health.nodes_up} up, {health.nodes_down} down\n")
            _print_nodes(out, health.nodes)
        return EXIT_OK if health.healthy else EXIT_NEGATIVE


def _describe(err: ShardKVError) -> str:
    """One line for stderr that names the problem and the address that answered."""
    unreachable = err.details.lower().startswith(_UNREACHABLE_SIGNS)
    if err.code is grpc.StatusCode.UNAVAILABLE and err.target and unreachable:
        return f"cannot reach {err.target} ({err.code.name}): {err.details}"
    where = f" from {err.target}" if err.target else ""
    return f"{err.code.name}{where}: {err.details}"


class _StderrLines(logging.Formatter):
    """SDK warnings (a token sent in plaintext) as "shardctl: warning: ..." lines."""

    def format(self, record: logging.LogRecord) -> str:
        return f"shardctl: {record.levelname.lower()}: {record.getMessage()}"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code (see the module doc)."""
    args = build_parser().parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_StderrLines())
    logging.basicConfig(handlers=[handler], level=logging.WARNING)
    try:
        code = _run(args, sys.stdin.buffer, sys.stdout.buffer, sys.stdout)
    except ShardKVError as err:
        print(f"shardctl: {_describe(err)}", file=sys.stderr)
        return EXIT_ERROR
    except (_Failure, ValueError, CommandError) as err:
        print(f"shardctl: {err}", file=sys.stderr)
        return EXIT_ERROR
    except BrokenPipeError:
        # The reader went away (e.g. `shardctl scan | head`): not an error of ours.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    sys.stdout.flush()
    return code


if __name__ == "__main__":
    sys.exit(main())
