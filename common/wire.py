"""Protobuf's wire format, for the few places that join already serialized messages into a
larger one instead of building and serializing it again (a batch's records as columns,
router/requests/framing.py; frames on an exchange port), and the framing of exchange ports
(exchange.proto)."""

from __future__ import annotations

import struct
from collections.abc import Iterator

# Every message on an exchange port, either way (exchange.proto): its length, 4 bytes
# big-endian, then its bytes.
LENGTH_PREFIX = struct.Struct(">I")
# What a frame or a reply carries beyond its request or response (ids, method, metadata,
# request ids, deadline, status), allowed above the message limit.
FRAME_OVERHEAD = 64 * 1024
# Frames a server runs at once on one connection (more are refused with
# RESOURCE_EXHAUSTED); a caller with this many in flight sends the next by gRPC.
MAX_FRAMES_RUNNING = 256
# A node's welcome on its exchange port names it (routers check it: a stale or wrong
# advertised port must not send one node's writes to another).
NODE_ID_KEY = "shardkv-node-id"
# A router's welcome names it too (KV.ExchangePort says which router a client asked).
ROUTER_ID_KEY = "shardkv-router-id"


def framed(message: bytes) -> bytes:
    """message as it goes on an exchange port: its length prefix, then its bytes."""
    return LENGTH_PREFIX.pack(len(message)) + message


def varint(value: int) -> bytes:
    """value (>= 0) as a protobuf varint: a length prefix of a length-delimited field."""
    if value < 0x80:
        return bytes((value,))
    if value < 0x4000:  # two bytes: up to 16 KiB, as most lengths framed are
        return bytes(((value & 0x7F) | 0x80, value >> 7))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


class TooLong(ValueError):
    """A message longer than the reader's limit: the stream cannot be read further."""

    def __init__(self, length: int, limit: int) -> None:
        super().__init__(f"message of {length} bytes exceeds the limit of {limit}")
        self.length, self.limit = length, limit


class MessageCutter:
    """Cuts an exchange port's byte stream into its length-prefixed messages, in whatever
    pieces the network delivers them (an asyncio Protocol's data_received): what arrives
    whole is cut from the piece itself; only a message split across pieces is gathered in
    a buffer, and only looked at again once enough bytes for it arrived."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._buffer = bytearray()
        self._needed = LENGTH_PREFIX.size  # bytes the buffer needs before a message is whole

    @property
    def partial(self) -> int:
        """Bytes of a message not whole yet."""
        return len(self._buffer)

    def cut(self, data: bytes) -> Iterator[bytes]:
        """The messages made whole by data, in order; raises TooLong for one longer than
        limit. Stopping early drops the rest of data."""
        buffer, prefix = self._buffer, LENGTH_PREFIX.size
        if buffer:
            buffer += data
            if len(buffer) < self._needed:
                return
            data = bytes(buffer)
            buffer.clear()
        size, offset = len(data), 0
        while size - offset >= prefix:
            (length,) = LENGTH_PREFIX.unpack_from(data, offset)
            if length > self.limit:
                raise TooLong(length, self.limit)
            end = offset + prefix + length
            if end > size:
                break
            message, offset = data[offset + prefix : end], end
            yield message
        if offset < size:
            buffer += data[offset:]
            self._needed = prefix
            if len(buffer) >= prefix:
                self._needed += LENGTH_PREFIX.unpack_from(buffer)[0]
