"""Protobuf's wire format, for the few places that join already serialized messages into a
larger one instead of building and serializing it again (a batch's records as columns,
router/requests/framing.py; frames on an exchange port), and the framing of exchange ports
(exchange.proto)."""

from __future__ import annotations

import struct

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
