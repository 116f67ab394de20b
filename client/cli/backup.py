"""``shardctl backup DIR`` and ``shardctl restore DIR``: the backup directory and its format.

A backup is a directory:

- ``nodes/<id>.snapshot`` per node: its snapshot as the router relayed it, a sequence of
  ``shardkv.v1.SnapshotBatch`` messages, each preceded by its length (4 bytes, big
  endian). The node's own records come first, in key order, then the hints it held.
  Records keep their versions and tombstones, so a restore is last-write-wins exact.
- ``topology.json``: the router's ``GetTopology`` answer; ``cluster.toml``: the same as a
  topology file for starting a cluster like the one backed up (timeouts are defaults).
- ``manifest.json``, written last, so a directory without it is an incomplete backup:
  format, time, router, epoch and per node its file, records, hints, bytes and SHA-256.

The files hold records in the wire format rather than LMDB files: a backup is then
independent of the LMDB build (page size, key limit), readable by any client of the API,
and restorable into a cluster of any shape. Each node made its copy with LMDB's
compacting copy (``Replica.Snapshot``), so each file is one consistent moment of its node.

Node ids become file names, so each must be a plain name (``shardkv.common.node_ids``), and
no file is written or read outside the backup directory: a path that leads out of it
(``..``, an absolute path, a symbolic link) is refused, whatever the router or the manifest
says. The directory is this user's alone (mode 0700; an existing one must be empty, its
owner's and writable by no one else) and its files are mode 0600, each created new, never
through a link (``backup_files``). Restore opens every file once, verifies its SHA-256 and
reads the records from that open file, so it sends what it verified; verifying all of
them comes first, then it sends the records through the router
(``Admin.Restore``) in batches: each record goes to the owners the current ring gives its
key, with the version it carries, and replicas keep it only when it is newer than theirs
(and, where they hold none, only when their tombstone GC has not reached past it: see
README, Backup and restore; those are counted as skipped). Every copy of a key (up to N
replicas and hints) is sent; last write wins makes the repeats harmless, at the price of N
times the traffic of a deduplicated restore.
"""

from __future__ import annotations

import datetime
import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, BinaryIO

from google.protobuf.json_format import MessageToDict
from google.protobuf.message import DecodeError
from shardkv.client.sync import Client
from shardkv.common.node_ids import BadNodeId, check_node_id
from shardkv.v1 import admin_pb2, replica_pb2

from .backup_files import BackupError, PrivateDir, open_verified

FORMAT = "shardkv-backup/1"
MANIFEST = "manifest.json"
# Records and bytes of keys and values per Restore call (the router's batch limit is 1000).
RESTORE_BATCH_RECORDS = 500
RESTORE_BATCH_BYTES = 4 << 20

Progress = Callable[[str], None]


@dataclass(frozen=True)
class NodeFile:
    """One node's snapshot file, as the manifest lists it."""

    id: str
    file: str
    records: int
    hints: int
    bytes: int
    sha256: str


@dataclass(frozen=True)
class RestoreSummary:
    """What a restore did: records sent, records that reached W, records skipped as
    possibly deleted after the backup (admin.proto, RestoreResponse), and the failures."""

    sent: int
    restored: int
    skipped: int
    failures: list[str]


def backup(client: Client, directory: Path, *, progress: Progress) -> dict[str, Any]:
    """Copies every node's store and the topology into directory (new or empty); returns
    the manifest. Fails, naming the node, if any node cannot be copied."""
    topology = client.topology()
    names = [_node_name(node.id) for node in topology.nodes]  # before any write
    top = PrivateDir.create(directory)
    try:
        nodes = top.subdir("nodes")
        try:
            return _write_backup(client, topology, top, nodes, names, progress)
        finally:
            nodes.close()
    finally:
        top.close()


def _write_backup(
    client: Client,
    topology: admin_pb2.Topology,
    top: PrivateDir,
    nodes: PrivateDir,
    names: list[str],
    progress: Progress,
) -> dict[str, Any]:
    top.write_text("topology.json", json.dumps(_topology_json(topology), indent=2))
    top.write_text("cluster.toml", _cluster_toml(topology))
    files = []
    for node, name in zip(topology.nodes, names, strict=True):
        node_file = _backup_node(client, node.id, nodes, name)
        progress(
            f"{node.id}: {node_file.records} records, {node_file.hints} hints,"
            f" {node_file.bytes} bytes"
        )
        files.append(node_file)
    manifest = {
        "format": FORMAT,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "router_id": topology.router_id,
        "epoch": topology.epoch,
        "nodes": [asdict(f) for f in files],
    }
    top.write_text(MANIFEST, json.dumps(manifest, indent=2))
    return manifest


def _node_name(node_id: str) -> str:
    """The name of node_id's snapshot in nodes/, <id>.snapshot, for an id that is a plain name."""
    try:
        check_node_id(node_id, "the router names a node whose id")
    except BadNodeId as err:
        raise BackupError(f"{err}; it cannot be a file name") from None
    return f"{node_id}.snapshot"


def _inside(directory: Path, name: str) -> Path:
    """directory/name with every link resolved, refused unless it stays inside directory."""
    root = directory.resolve()
    path = (root / name).resolve()
    if path == root or not path.is_relative_to(root):
        raise BackupError(f"{directory / name} is outside the backup directory {directory}")
    return path


def _backup_node(client: Client, node_id: str, nodes: PrivateDir, name: str) -> NodeFile:
    digest = hashlib.sha256()
    records = hints = size = 0
    with nodes.new_file(name) as out:
        try:
            for batch in client.backup(node_id):
                data = batch.SerializeToString()
                frame = len(data).to_bytes(4, "big") + data
                out.write(frame)
                digest.update(frame)
                size += len(frame)
                if batch.hint_target:
                    hints += len(batch.records)
                else:
                    records += len(batch.records)
        except OSError as err:
            raise BackupError(f"cannot write {nodes.path / name}: {err.strerror or err}") from err
    return NodeFile(node_id, f"nodes/{name}", records, hints, size, digest.hexdigest())


def restore(
    client: Client,
    directory: Path,
    *,
    progress: Progress,
    batch_records: int = RESTORE_BATCH_RECORDS,
    batch_bytes: int = RESTORE_BATCH_BYTES,
) -> RestoreSummary:
    """Writes every record of the backup in directory back into the cluster."""
    files: list[tuple[NodeFile, Path, BinaryIO]] = []
    sent = restored = skipped = 0
    failures: list[str] = []
    try:
        _verified_files(directory, files)
        for node_file, shown, stream in files:
            before = sent
            for chunk in _chunks(stream, shown, batch_records, batch_bytes):
                reply = client.restore(chunk)
                sent += len(chunk)
                restored += reply.restored
                skipped += reply.skipped
                failures.extend(reply.failures)
            progress(f"{node_file.id}: sent {sent - before} records")
    finally:
        for _, _, stream in files:
            stream.close()
    return RestoreSummary(sent, restored, skipped, failures)


def _verified_files(directory: Path, files: list[tuple[NodeFile, Path, BinaryIO]]) -> None:
    """Appends to files the manifest's node files, each with its name and the file opened
    and checked against its SHA-256 (the caller closes them, also after an error)."""
    where = directory / MANIFEST
    try:
        manifest = json.loads(where.read_text())
    except (OSError, ValueError) as err:
        raise BackupError(f"{where}: not a complete backup ({err})") from err
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise BackupError(f"{where}: format {found!r} is not {FORMAT}")
    if not isinstance(manifest.get("nodes"), list):
        raise BackupError(f"{where}: 'nodes' must be a list of node files")
    for position, entry in enumerate(manifest["nodes"], start=1):
        node_file = _node_file(entry, f"{where}: node file #{position}")
        shown = directory / node_file.file
        stream = open_verified(_inside(directory, node_file.file), shown, node_file.sha256)
        files.append((node_file, shown, stream))


def _node_file(entry: object, where: str) -> NodeFile:
    """One entry of the manifest's nodes: exactly NodeFile's fields, of the right types."""
    names = {f.name for f in fields(NodeFile)}
    if not isinstance(entry, dict) or set(entry) != names:
        keys = sorted(entry) if isinstance(entry, dict) else type(entry).__name__
        raise BackupError(f"{where} must have exactly the keys {sorted(names)}, got {keys}")
    for name in ("id", "file", "sha256"):
        if not isinstance(entry[name], str):
            raise BackupError(f"{where}: {name} must be a string, got {entry[name]!r}")
    for name in ("records", "hints", "bytes"):
        if isinstance(entry[name], bool) or not isinstance(entry[name], int):
            raise BackupError(f"{where}: {name} must be an integer, got {entry[name]!r}")
    try:
        check_node_id(entry["id"])
    except BadNodeId as err:
        raise BackupError(f"{where}: {err}") from None
    return NodeFile(**entry)


def _batches(stream: BinaryIO, path: Path) -> Iterator[replica_pb2.SnapshotBatch]:
    while header := stream.read(4):
        data = _read_exact(stream, int.from_bytes(header, "big"), path)
        try:
            batch = replica_pb2.SnapshotBatch.FromString(data)
        except DecodeError as err:
            raise BackupError(f"{path} holds a batch that does not decode: {err}") from None
        yield batch


def _read_exact(stream: BinaryIO, size: int, path: Path) -> bytes:
    data = stream.read(size)
    if len(data) != size:
        raise BackupError(f"{path} ends in the middle of a batch")
    return data


def _chunks(
    stream: BinaryIO, path: Path, max_records: int, max_bytes: int
) -> Iterator[list[replica_pb2.Record]]:
    """The file's records (own and hints alike) in Restore-sized lists."""
    chunk: list[replica_pb2.Record] = []
    size = 0
    for batch in _batches(stream, path):
        for record in batch.records:
            chunk.append(record)
            size += len(record.key) + len(record.value)
            if len(chunk) >= max_records or size >= max_bytes:
                yield chunk
                chunk, size = [], 0
    if chunk:
        yield chunk


def _topology_json(topology: admin_pb2.Topology) -> dict[str, Any]:
    return MessageToDict(
        topology, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def _cluster_toml(topology: admin_pb2.Topology) -> str:
    lines = [
        f"# Topology of the cluster backed up from router {topology.router_id}"
        f" (epoch {topology.epoch}), written by shardctl backup. Timeouts are defaults.",
        f"epoch = {topology.epoch}",
        f"replication = {topology.replication}",
        f"read_quorum = {topology.read_quorum}",
        f"write_quorum = {topology.write_quorum}",
    ]
    for node in topology.nodes:
        lines += [
            "",
            "[[nodes]]",
            f"id = {json.dumps(node.id)}",
            f"address = {json.dumps(node.address)}",
            f"weight = {node.weight}",
        ]
    return "\n".join(lines) + "\n"
