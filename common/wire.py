"""Protobuf's wire format, for the few places that join already serialized messages into a
larger one instead of building and serializing it again (records framed once for every
replica, frames of the router's stream to a node)."""

from __future__ import annotations


def varint(value: int) -> bytes:
    """value (>= 0) as a protobuf varint: a length prefix of a length-delimited field."""
    if value < 0x80:
        return bytes((value,))
    if value < 0x4000:  # two bytes: a record of up to 16 KiB, as most framed ones are
        return bytes(((value & 0x7F) | 0x80, value >> 7))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)
