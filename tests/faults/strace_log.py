"""Reading `strace -f -tt -xx -o` output of a shardd: its system calls, its writes and syncs
of LMDB's data.mdb, and the unary gRPC calls it served (HTTP/2 frames rebuilt from the bytes
it received and sent on each accepted connection).

tests/faults/test_fsync_order.py uses these to show that no Put is answered before the
commit holding it is durable. The order of the trace's lines is the order of the events
(strace stops a thread at every traced call), so a call is located by its line numbers.
"""

from __future__ import annotations

import bisect
import re
from collections import defaultdict
from dataclasses import dataclass, field

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, END_STREAM, PADDED = 0x0, 0x1, 0x8


# -- the trace ------------------------------------------------------------------------------


@dataclass
class Call:
    """One system call: where its entry and its exit are in the trace (line numbers)."""

    pid: int
    name: str
    args: str
    ret: int | None
    entry: int
    exit: int

    def fd(self) -> int:
        return int(self.args.split(",", 1)[0])

    def strings(self) -> list[bytes]:
        """The byte strings among the arguments (strace -xx prints every byte as \\xNN)."""
        found = re.findall(r'"((?:\\x[0-9a-f]{2})*)"(\.\.\.)?', self.args)
        if any(cut for _, cut in found):
            raise AssertionError(
                f"strace cut a string short (raise -s): {self.name} line {self.entry}"
            )
        return [bytes.fromhex(text.replace("\\x", "")) for text, _ in found]

    def payload(self) -> bytes:
        """The bytes a write, send or receive moved (at most what it returned): its iovecs,
        or its one buffer."""
        strings = self.strings()
        if "iov_base=" in self.args:
            bases = re.findall(r'iov_base="((?:\\x[0-9a-f]{2})*)"', self.args)
            data = b"".join(bytes.fromhex(text.replace("\\x", "")) for text in bases)
        else:
            data = strings[0] if strings else b""
        return data[: max(self.ret or 0, 0)]


_LINE = re.compile(r"^(\d+)\s+\d\d:\d\d:\d\d\.\d+\s+(.*)$")
_DONE = re.compile(r"^(.*)\)\s+=\s+(-?\d+|\?)(?:\s.*)?$")


def parse_trace(text: str) -> list[Call]:
    """Calls of `strace -f -tt -xx -o`, pairing `<unfinished ...>` with `<... resumed>`."""
    calls: list[Call] = []
    pending: dict[int, tuple[str, str, int]] = {}
    for number, line in enumerate(text.splitlines()):
        match = _LINE.match(line)
        if not match:
            continue
        pid, body = int(match.group(1)), match.group(2)
        if body.startswith(("+++", "---")):
            continue
        if body.endswith("<unfinished ...>"):
            name, _, args = body.partition("(")
            pending[pid] = (name, args.removesuffix("<unfinished ...>"), number)
            continue
        resumed = re.match(r"^<\.\.\. (\w+) resumed>(.*)$", body)
        if resumed:
            name, head, entry = pending.pop(pid, (resumed.group(1), "", number))
            rest = resumed.group(2)
        else:
            name, _, rest = body.partition("(")
            head, entry = "", number
        done = _DONE.match(rest)
        if not done:
            continue  # the process died inside the call
        ret = None if done.group(2) == "?" else int(done.group(2))
        calls.append(Call(pid, name, head + done.group(1), ret, entry, number))
    return calls


# -- what the node did: file writes and syncs, HTTP/2 frames on its connections -------------


@dataclass
class FileOp:
    call: Call
    kind: str  # "write" or "sync"
    data: bytes = b""
    offset: int | None = None  # None: unknown
    dsync: bool = False  # written through an O_DSYNC descriptor: durable when it returns
    file: str = "data.mdb"  # which of the store's files: data.mdb or a journal file


@dataclass
class Stream:
    """One direction of one connection: its bytes and which call moved each range."""

    data: bytearray = field(default_factory=bytearray)
    ends: list[int] = field(default_factory=list)  # offset after each call's bytes
    calls: list[Call] = field(default_factory=list)

    def add(self, call: Call, data: bytes) -> None:
        if data:
            self.data += data
            self.ends.append(len(self.data))
            self.calls.append(call)

    def call_at(self, offset: int) -> Call:
        return self.calls[bisect.bisect_right(self.ends, offset)]


@dataclass
class Frame:
    type: int
    flags: int
    stream: int
    payload: bytes
    first: Call  # the call that moved the frame's first byte
    last: Call  # ... and its last byte


def frames(stream: Stream, *, inbound: bool) -> list[Frame]:
    data, offset, found = bytes(stream.data), 0, []
    if inbound:
        if not data.startswith(PREFACE):
            return []
        offset = len(PREFACE)
    while offset + 9 <= len(data):
        length = int.from_bytes(data[offset : offset + 3], "big")
        kind, flags = data[offset + 3], data[offset + 4]
        stream_id = int.from_bytes(data[offset + 5 : offset + 9], "big") & 0x7FFFFFFF
        end = offset + 9 + length
        if end > len(data):
            break
        payload = data[offset + 9 : end]
        if kind == DATA and flags & PADDED and payload:
            payload = payload[1 : len(payload) - payload[0]]
        found.append(
            Frame(kind, flags, stream_id, payload, stream.call_at(offset), stream.call_at(end - 1))
        )
        offset = end
    return found


@dataclass
class Exchange:
    """One unary call the node served: request bytes, when they had all arrived, and the
    send that began its reply."""

    request: bytes
    received: Call
    reply: Call | None


def _effect(call: Call) -> int:
    """Where a call takes effect in the trace: a close frees its descriptor on entry, so
    another thread's accept4 may return the same number before the close's exit line."""
    return call.entry if call.name == "close" else call.exit


def _store_file(path: str) -> str:
    """The name of a file whose writes make a node's records durable ("" for any other):
    LMDB's data.mdb, or a journal file (shardkv.shardd.journal)."""
    name = path.rsplit("/", 1)[-1]
    return (
        name
        if name == "data.mdb" or (name.startswith("journal-") and name.endswith(".log"))
        else ""
    )


def node_activity(calls: list[Call]) -> tuple[list[FileOp], list[Exchange]]:
    files: dict[int, tuple[str, bool]] = {}  # fd -> (path, O_DSYNC)
    positions: dict[int, int] = {}
    connection: dict[int, int] = {}  # fd -> connection number
    inbound: dict[int, Stream] = defaultdict(Stream)
    outbound: dict[int, Stream] = defaultdict(Stream)
    ops: list[FileOp] = []
    serial = 0
    for call in sorted(calls, key=_effect):
        name, ret = call.name, call.ret
        if name in ("open", "openat") and ret is not None and ret >= 0:
            path = (call.strings() or [b""])[0]
            files[ret] = (path.decode(errors="replace"), "O_DSYNC" in call.args)
            positions[ret] = 0
        elif name == "accept4" and ret is not None and ret >= 0:
            serial += 1
            connection[ret] = serial
        elif name == "close":
            fd = call.fd()
            files.pop(fd, None)
            connection.pop(fd, None)
        elif ret is None or ret < 0:
            continue
        elif name == "lseek" and call.fd() in files:
            positions[call.fd()] = ret
        elif name in ("write", "writev", "pwrite64", "pwritev", "pwritev2"):
            fd = call.fd()
            if fd in files and _store_file(files[fd][0]):
                if name.startswith("pwrite"):
                    offset: int | None = int(call.args.rsplit(",", 1)[1].strip().split(",")[0])
                    if name == "pwritev2":
                        offset = int(call.args.rsplit(",", 2)[1])
                else:
                    offset = positions.get(fd)
                    positions[fd] = (offset or 0) + ret
                path, dsync = files[fd]
                ops.append(FileOp(call, "write", call.payload(), offset, dsync, _store_file(path)))
            elif fd in connection:
                outbound[connection[fd]].add(call, call.payload())
        elif name in ("fdatasync", "fsync"):
            fd = call.fd()
            if fd in files and _store_file(files[fd][0]):
                ops.append(FileOp(call, "sync", file=_store_file(files[fd][0])))
        elif name in ("sendmsg", "sendto") and call.fd() in connection:
            outbound[connection[call.fd()]].add(call, call.payload())
        elif name in ("recvmsg", "recvfrom") and call.fd() in connection:
            inbound[connection[call.fd()]].add(call, call.payload())

    exchanges = []
    for conn, stream in inbound.items():
        requests: dict[int, bytearray] = defaultdict(bytearray)
        received: dict[int, Call] = {}
        for frame in frames(stream, inbound=True):
            if frame.type == DATA:
                requests[frame.stream] += frame.payload
                received[frame.stream] = frame.last
        replies: dict[int, Call] = {}
        for frame in frames(outbound[conn], inbound=False):
            if frame.type == DATA and frame.stream not in replies:
                replies[frame.stream] = frame.first
        for stream_id, body in requests.items():
            exchanges.append(Exchange(bytes(body), received[stream_id], replies.get(stream_id)))
    return sorted(ops, key=lambda op: op.call.exit), exchanges
