"""A node answers a write only after the LMDB commit holding it is on disk, shown by tracing
the node's system calls.

SIGKILL keeps the kernel's page cache, so a crash test cannot tell a synced commit from an
unsynced one (test_crash_shardd.py passes with ``--no-sync`` too). This test runs a real
``shardd`` under ``strace -f`` and reads, in the order strace saw them, the calls that put
the data file on disk and the ones that send gRPC replies. strace stops a thread at every
traced call, so a call that ends before another thread is woken to make the next one is
printed before it: the order of the lines is the order of the events.

For every Put the client saw acknowledged, the test finds in the trace:

1. the request: the HTTP/2 stream whose DATA (received by ``recvmsg`` on the client's
   connection) carries the Put's unique key;
2. the reply: the first DATA frame the node sent on that stream (``sendmsg``);
3. what made the key durable: the journal frame holding it (a write to ``journal-0.log``
   or ``journal-1.log`` whose bytes hold the key) and then ``fdatasync`` of that file
   (shardkv.shardd.write_ahead); or, for a write that went to LMDB directly, the commit
   holding it, which LMDB makes durable in two steps: the data pages (a write to
   ``data.mdb`` whose bytes hold the key), then ``fdatasync``/``fsync`` of ``data.mdb``,
   then the meta page that points at them (a write to one of the file's first two pages),
   itself durable because it went through the ``O_DSYNC`` descriptor LMDB opens for it, or
   because another ``fdatasync``/``fsync`` followed it.

Every step must have returned before the reply's ``sendmsg`` began. The same workload runs
against ``shardd --no-sync``, and there the check must find every acknowledgement early:
that is what shows this test can see a missing fsync.

What it does not show: that the disk honours fdatasync (that is the kernel's and the
device's business), nor anything about the router (it acknowledges after W nodes did).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from harness import BIN, free_port, wait_serving
from shardkv.shardd.journal import FILES as JOURNAL_FILES
from shardkv.v1 import kv_pb2, kv_pb2_grpc

from faults.strace_log import Call, Exchange, FileOp, node_activity, parse_trace

STRACE = shutil.which("strace")
SEQUENTIAL_PUTS = 20
CONCURRENT_PUTS = 40
IN_FLIGHT = 8
PAGE = os.sysconf("SC_PAGE_SIZE")  # LMDB's page size: the meta pages are pages 0 and 1
# What orders a reply after its commit: the file's opens, writes and syncs, the sockets'
# sends and receives. (gRPC reads sockets with recvmsg; `read` would add every .pyc.)
SYSCALLS = (
    "open,openat,close,lseek,write,writev,pwrite64,pwritev,pwritev2,fdatasync,fsync,msync,"
    "sync_file_range,accept4,recvmsg,recvfrom,sendmsg,sendto"
)

pytestmark = pytest.mark.skipif(
    STRACE is None, reason="strace is not installed (make system-deps installs it)"
)


# -- the check (the trace is read by faults/strace_log.py) -----------------------------------


def early_acknowledgement(key: bytes, ops: list[FileOp], exchanges: list[Exchange]) -> str | None:
    """None when the reply to the Put of `key` followed the durable commit holding it;
    otherwise what was missing."""
    [exchange] = [e for e in exchanges if key in e.request] or [None]
    assert exchange is not None, f"no request carrying {key!r} in the trace"
    assert exchange.reply is not None, f"no reply to the Put of {key!r} in the trace"
    arrived, replied = exchange.received.exit, exchange.reply.entry

    def first(
        kind: str, after: int, *, holding: bytes = b"", meta: bool = False, file: str = "data.mdb"
    ) -> FileOp | None:
        for op in ops:
            if op.kind != kind or op.call.entry <= after or op.call.exit >= replied:
                continue
            if op.file != file:
                continue
            if holding and holding not in op.data:
                continue
            if meta and not (op.offset is not None and op.offset < 2 * PAGE):
                continue
            return op
        return None

    for journal in JOURNAL_FILES:
        appended = first("write", arrived, holding=key, file=journal)
        if appended is not None and first("sync", appended.call.exit, file=journal):
            return None  # journaled: the frame holding the key, then its file's fdatasync
    pages = first("write", arrived, holding=key)
    if pages is None:
        return "no write of data.mdb or a synced journal file holding the key before the reply"
    synced = first("sync", pages.call.exit)
    if synced is None:
        return f"no fdatasync/fsync of data.mdb after its pages (line {pages.call.exit + 1})"
    meta = first("write", synced.call.exit, meta=True)
    if meta is None:
        return f"no meta page written after the data sync (line {synced.call.exit + 1})"
    if not meta.dsync and first("sync", meta.call.exit) is None:
        return f"meta page (line {meta.call.exit + 1}) neither O_DSYNC nor synced"
    return None


# -- the run ----------------------------------------------------------------------------------


@dataclass
class Run:
    keys: list[bytes]
    ops: list[FileOp]
    exchanges: list[Exchange]
    early: dict[bytes, str]
    syncs: int
    lines: int


def traced_run(base: Path, label: str, extra: list[str]) -> Run:
    """Starts shardd under strace, Puts unique keys (sequentially, then concurrently), stops
    it, and checks every acknowledged Put against the trace."""
    trace, log = base / f"{label}.strace", base / f"{label}.log"
    address = f"127.0.0.1:{free_port()}"
    argv = [
        str(STRACE),
        "-f",
        "-tt",
        "--seccomp-bpf",  # stop only at the traced calls: the node runs near full speed
        "-xx",
        "-s",
        "1048576",
        "-o",
        str(trace),
        "-e",
        f"trace={SYSCALLS}",
        str(BIN / "shardd"),
        "--id",
        "n1",
        "--listen",
        address,
        "--data",
        str(base / label),
        *extra,
    ]
    with log.open("wb") as out:
        tracer = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    node_pid = None
    keys: list[bytes] = []
    try:
        wait_serving(address, timeout_s=90)
        [node_pid] = _children(tracer.pid)
        with grpc.insecure_channel(address) as channel:
            kv = kv_pb2_grpc.KVStub(channel)
            for i in range(SEQUENTIAL_PUTS):
                key = b"fsync-order/%s/seq/%04d" % (label.encode(), i)
                assert kv.Put(kv_pb2.PutRequest(key=key, value=b"v-" + key), timeout=60).version
                keys.append(key)
            for wave in range(CONCURRENT_PUTS // IN_FLIGHT):
                batch = [
                    b"fsync-order/%s/par/%02d/%d" % (label.encode(), wave, i)
                    for i in range(IN_FLIGHT)
                ]
                futures: list[Future[kv_pb2.PutResponse]] = [
                    kv.Put.future(kv_pb2.PutRequest(key=key, value=b"v-" + key), timeout=60)
                    for key in batch
                ]
                for key, future in zip(batch, futures, strict=True):
                    assert future.result().version
                    keys.append(key)
    finally:
        if node_pid is None and tracer.poll() is None:
            node_pid = next(iter(_children(tracer.pid)), None)  # it never served
        if node_pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(node_pid, signal.SIGTERM)  # strace exits when the node has
        try:
            tracer.wait(60)
        except subprocess.TimeoutExpired:
            for pid in (node_pid, tracer.pid):
                if pid is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            tracer.wait(10)
    text = trace.read_text()
    ops, exchanges = node_activity(parse_trace(text))
    early = {}
    for key in keys:
        reason = early_acknowledgement(key, ops, exchanges)
        if reason is not None:
            early[key] = reason
    syncs = sum(op.kind == "sync" for op in ops)
    return Run(keys, ops, exchanges, early, syncs, text.count("\n"))


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(child) for child in path.read_text().split()]


@pytest.mark.timeout(300)
def test_no_write_is_acknowledged_before_its_commit_is_synced(tmp_path: Path) -> None:
    durable = traced_run(tmp_path, "sync", [])
    unsynced = traced_run(tmp_path, "nosync", ["--no-sync"])
    for label, run in (("sync", durable), ("--no-sync", unsynced)):
        example = next(iter(run.early.items()), None)
        print(
            f"[fsync order] {label}: {len(run.keys)} acknowledged Puts checked,"
            f" {len(run.early)} acknowledged before their commit was durable;"
            f" store file syncs={run.syncs} writes={sum(op.kind == 'write' for op in run.ops)}"
            f" trace lines={run.lines} first={example}"
        )
    assert len(durable.keys) == len(unsynced.keys) == SEQUENTIAL_PUTS + CONCURRENT_PUTS
    assert not durable.early, "\n".join(f"{k!r}: {why}" for k, why in durable.early.items())
    # The same check, on a node that never syncs, finds every acknowledgement early: it can
    # see a missing fsync.
    assert set(unsynced.early) == set(unsynced.keys), sorted(
        set(unsynced.keys) - set(unsynced.early)
    )


@pytest.mark.skip(
    reason="simulated power loss is not built: it needs a FUSE filesystem that drops unsynced"
    " writes on command (Jepsen's LazyFS), which neither Debian nor PyPI packages here, and no"
    " FUSE binding is installed; /dev/fuse exists, but a home-made one would have to serve"
    " LMDB's shared read-only mmap of data.mdb coherently, and was not made reliable"
)
def test_power_loss_keeps_every_acknowledged_write() -> None:
    raise AssertionError("not built")


# -- the data directory's own entries ---------------------------------------------------------


def directory_syncs_missing(calls: list[Call], data_dir: Path) -> list[str]:
    """What is not durable before the node accepts its first connection: the entry of each
    directory it created (an fsync of the parent after the mkdir) and the entry of
    data.mdb (an fsync of the data directory after LMDB created the file)."""
    accepted = [c.exit for c in calls if c.name == "accept4" and c.ret is not None and c.ret >= 0]
    serving = min(accepted, default=0)
    assert serving, "the node never accepted a connection"
    opened: dict[int, str] = {}
    synced: list[tuple[int, str]] = []  # (line, directory)
    created: list[tuple[int, str]] = []
    data_file = None
    for call in calls:
        if call.name in ("mkdir", "mkdirat") and call.ret == 0:
            created.append((call.exit, os.path.normpath(call.strings()[0].decode())))
        elif call.name in ("open", "openat") and call.ret is not None and call.ret >= 0:
            path = os.path.normpath(call.strings()[0].decode())
            opened[call.ret] = path
            if path == str(data_dir / "data.mdb") and data_file is None:
                data_file = call.exit
        elif call.name in ("fsync", "fdatasync") and call.ret == 0 and call.fd() in opened:
            synced.append((call.exit, opened[call.fd()]))
    assert data_file is not None, f"no open of {data_dir / 'data.mdb'} in the trace"

    def synced_between(directory: str, after: int) -> bool:
        return any(after < line < serving and path == directory for line, path in synced)

    missing = [
        f"{path} was created (line {line + 1}), {os.path.dirname(path)} never fsync'd after it"
        for line, path in created
        if not synced_between(os.path.dirname(path), line)
    ]
    if not synced_between(str(data_dir), data_file):
        missing.append(f"data.mdb was created (line {data_file + 1}), {data_dir} never fsync'd")
    return missing


@pytest.mark.timeout(120)
def test_a_new_data_directory_is_durable_before_the_node_serves(tmp_path: Path) -> None:
    """A node started on a data directory that does not exist yet, two parents deep: every
    directory it created and data.mdb have their entries fsync'd in their parents before it
    accepts a connection, so a power loss cannot take the store (identity, fence, every
    acknowledged write) away with an unsynced directory entry. Before, neither the created
    directories nor data.mdb were: no fsync of any directory appeared in the trace."""
    data_dir = tmp_path / "new" / "deeper" / "n1"
    trace = tmp_path / "dirs.strace"
    address = f"127.0.0.1:{free_port()}"
    calls = "mkdir,mkdirat,open,openat,fsync,fdatasync,accept4"
    argv = [str(STRACE), "-f", "-tt", "-xx", "-o", str(trace), "-e", f"trace={calls}"]
    argv += [str(BIN / "shardd"), "--id", "n1", "--listen", address, "--data", str(data_dir)]
    with (tmp_path / "dirs.log").open("wb") as out:
        tracer = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_serving(address, timeout_s=90)
        with grpc.insecure_channel(address) as channel:
            put = kv_pb2.PutRequest(key=b"k", value=b"v")
            assert kv_pb2_grpc.KVStub(channel).Put(put, timeout=30).version
    finally:
        for pid in _children(tracer.pid) if tracer.poll() is None else []:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)  # strace exits when the node has
        try:
            tracer.wait(60)
        except subprocess.TimeoutExpired:
            tracer.kill()
            tracer.wait(10)
    missing = directory_syncs_missing(parse_trace(trace.read_text()), data_dir)
    assert not missing, "\n".join(missing)
