"""What ExchangeConnection (exchange_connection.py) keeps of an open connection and of a
frame waiting for one, and how it judges a server: write offsets and pings, to tell a
server that stopped reading or answering from a slow one; a frame's header; the deadline a
queued frame still has when it is finally written; whether a welcome lets frames go to the
server."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

import grpc
from shardkv.common.rpc_status import status_code
from shardkv.common.wire import framed, varint
from shardkv.v1 import exchange_pb2

# The longest deadline a frame carries (ExchangeFrame.timeout_ms is 32 bits).
MAX_TIMEOUT_MS = 2**32 - 1
# ExchangeFrame's id (field 1), request_id (5) and timeout_ms (6) as wire tags.
_ID_TAG, _REQUEST_ID_TAG, _TIMEOUT_TAG = b"\x08", b"\x2a", b"\x30"
# Methods and metadata whose fields are kept serialized (a router's: a few methods, under
# the current epoch and the one before).
MAX_HEADS = 64


@dataclass(eq=False)
class Connection:
    """An open exchange connection, with what its frames' deadlines look at."""

    transport: asyncio.Transport
    # When the server last answered on it, its welcome included (loop time).
    answered_at: float = 0.0
    # Bytes written to it so far.
    written: int = 0
    # When a ping was last sent on it (loop time; 0: never), and its frame id; answered
    # once answered_at is later.
    pinged_at: float = 0.0
    ping_id: int = 0
    # Why the caller closed it, when it did (its reader fails the frames left with it).
    closed_why: str = ""

    def write(self, data: bytes) -> int:
        """Writes one message; returns the offset its last byte ends at. On a connection
        already lost nothing is written (asyncio's loop drops the bytes, uvloop's raises):
        its reader fails the frames it carried once it hands on its end."""
        if self.transport.is_closing():
            return self.written
        message = framed(data)
        self.transport.write(message)
        self.written += len(message)
        return self.written

    def taken(self) -> int:
        """How many of the bytes written the kernel has taken (the server may be reading)."""
        return self.written - self.transport.get_write_buffer_size()

    def ping(self, frame_id: int, now: float) -> bool:
        """Sends a ping (a frame with no method) as frame_id, unless one awaits its answer;
        returns whether it sent one."""
        if self.pinged_at > self.answered_at:
            return False
        self.pinged_at, self.ping_id = now, frame_id
        self.write(exchange_pb2.ExchangeFrame(id=frame_id).SerializeToString())
        return True

    def heard(self, reply_id: int, now: float) -> bool:
        """Notes that the server answered; whether it was the ping (no frame waits for it)."""
        self.answered_at = now
        return reply_id == self.ping_id

    def unanswered(self) -> bool:
        """Whether the last ping has no answer yet, on a connection still open."""
        return self.answered_at < self.pinged_at and not self.transport.is_closing()

    def abandon(self, why: str) -> None:
        """Closes the connection at once; its reader fails the frames left with why."""
        self.closed_why = why
        self.transport.abort()


class Carried(NamedTuple):
    """A frame written and not answered yet: its connection, the offset its bytes end at
    there, and when it was written (loop time)."""

    connection: Connection
    end: int
    written_at: float


class Heads:
    """Frame headers as bytes. A frame's method and metadata are those of every frame a
    caller sends under one epoch: serialized once and kept, where building the message
    for each frame cost more than the rest of its header (a map field); the fields of
    the frame itself (id, request ids; the deadline, last: deadline_field) are written
    after them. Protobuf reads fields in any order."""

    def __init__(self) -> None:
        self._kept: dict[tuple[str, tuple[tuple[str, str], ...]], bytes] = {}

    def head(self, frame_id: int, method: str, metadata: Mapping[str, str], rid: str) -> bytes:
        """A frame's header but for its deadline."""
        key = (method, tuple(metadata.items()))
        kept = self._kept.get(key)
        if kept is None:
            if len(self._kept) >= MAX_HEADS:
                self._kept.clear()
            frame = exchange_pb2.ExchangeFrame(method=method, metadata=metadata)
            kept = self._kept[key] = frame.SerializeToString()
        encoded = rid.encode()
        return b"".join(
            (_ID_TAG, varint(frame_id), kept, _REQUEST_ID_TAG, varint(len(encoded)), encoded)
        )


def deadline_field(seconds: float) -> bytes:
    """A frame's timeout_ms field for a deadline seconds away."""
    return _TIMEOUT_TAG + varint(timeout_ms(seconds))


@dataclass(eq=False)
class Queued:
    """A frame waiting for the connection to open: its deadline goes out as the time left
    when it is written, so the server never works on it past the caller's wait."""

    frame_id: int
    head: bytes
    payload: bytes
    deadline: float

    def data(self, now: float) -> bytes:
        return self.head + deadline_field(self.deadline - now) + self.payload


def timeout_ms(seconds: float) -> int:
    """A frame's deadline on the wire: at least 1 ms, at most MAX_TIMEOUT_MS."""
    return min(MAX_TIMEOUT_MS, max(1, int(seconds * 1000)))


def welcome_problem(
    welcome: exchange_pb2.ExchangeReply, expected: Mapping[str, str]
) -> tuple[grpc.StatusCode, str] | None:
    """Why the server's answer to the hello does not let frames go to it: a refusal, or
    another server answering on the port the caller was told (a stale or wrong
    --advertise-exchange-port would otherwise send one node's writes to another)."""
    if welcome.id != 0 or welcome.code:
        code = status_code(welcome.code)
        return code, f"refused the connection: {welcome.message}"
    for key, value in expected.items():
        answered = welcome.trailing.get(key, "")
        if answered != value:
            return grpc.StatusCode.UNAVAILABLE, f"answered by {key} {answered!r}, not {value!r}"
    return None
