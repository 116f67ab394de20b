"""The operator subcommands of ``shardctl``: ``status``, ``backup DIR``, ``restore DIR``.

    shardctl status [--watch] [--interval S]   # the cluster at a glance (client/cli/status.py)
    shardctl backup DIR                        # every node's store and the topology
    shardctl restore DIR                       # the backup's records back into the cluster

With ``--json``: status prints one JSON object per sample; backup its manifest; restore
``{"sent", "restored", "skipped", "failures"}``; progress lines then go to stderr. Exit codes: 0
done, 2 an error, including a restore in which some record missed its write quorum
(restoring again is safe: last write wins).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any, TextIO

from shardkv.client.sync import Client

from . import backup, status

COMMANDS = ("status", "backup", "restore")
EXIT_OK, EXIT_ERROR = 0, 2


def add_parsers(commands: Any, common: argparse.ArgumentParser) -> None:
    """Adds the subcommands to shardctl's subparsers (common: its global options)."""
    parser = commands.add_parser(
        "status", parents=[common], help="nodes with keys, disk, hints and ops/s (a table)"
    )
    parser.add_argument("--watch", action="store_true", help="redraw every interval until ^C")
    parser.add_argument(
        "--interval",
        type=float,
        default=1.0,
        help="seconds between the samples ops/s comes from (0: one sample, no rates)",
    )
    parser = commands.add_parser(
        "backup", parents=[common], help="copy every node's store and the topology into DIR"
    )
    parser.add_argument("dir", type=Path, help="a new or empty directory")
    parser = commands.add_parser(
        "restore", parents=[common], help="write the records of the backup in DIR back"
    )
    parser.add_argument("dir", type=Path, help="a directory written by shardctl backup")


def run(args: argparse.Namespace, client: Client, out: TextIO) -> int:
    """Runs one of COMMANDS; returns the exit code."""
    if args.command == "status":
        return status.run(
            client, out, as_json_lines=args.json, watch=args.watch, interval=args.interval
        )
    progress_to = sys.stderr if args.json else out

    def progress(line: str) -> None:
        print(line, file=progress_to, flush=True)

    if args.command == "backup":
        manifest = backup.backup(client, args.dir, progress=progress)
        if args.json:
            _emit(out, manifest)
        else:
            out.write(f"backed up {len(manifest['nodes'])} nodes into {args.dir}\n")
        return EXIT_OK
    summary = backup.restore(client, args.dir, progress=progress)
    if args.json:
        _emit(out, dataclasses.asdict(summary))
    else:
        out.write(
            f"restored {summary.restored} of {summary.sent} records;"
            f" {summary.skipped} skipped as possibly deleted after the backup;"
            f" {len(summary.failures)} missed their write quorum\n"
        )
        for failure in summary.failures[:10]:
            out.write(f"  {failure}\n")
    return EXIT_ERROR if summary.failures else EXIT_OK


def _emit(out: TextIO, obj: dict[str, Any]) -> None:
    out.write(json.dumps(obj) + "\n")
