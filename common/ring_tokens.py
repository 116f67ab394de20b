"""Ring tokens: the 32-bit ketama hash of a key, and sorted sets of token ranges.

Placement (the router's ring) and range work on the nodes (streaming, digests, purges of
the keys of some ring arcs) must hash a key identically, so both use ``ring_token`` from here.
It equals uhashring's ketama ``hashi`` of the key decoded as latin-1 (the router's
``ring_key``): the first four bytes of the MD5 of its UTF-8 form, little-endian.

A key with token t belongs to the first ring point strictly greater than t (wrapping
around), so the arc of a point p after its predecessor q holds the tokens [q, p): ranges
are half-open, ``start <= t < end``, with ``end`` up to ``TOKEN_SPACE``.
"""

from __future__ import annotations

import hashlib
import importlib
import struct
from bisect import bisect_right
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol, TypeVar, cast

from shardkv.common import native
from shardkv.common.limits import LimitExceeded

T = TypeVar("T")


def _md5_constructor() -> Callable[[bytes], Any]:
    """CPython's built-in MD5 when the build has it: the same digest as hashlib's OpenSSL
    one, made in a third of the time (0.2 against 0.7 us per short key), which placement
    pays per key; else hashlib's."""
    try:
        return cast(Callable[[bytes], Any], importlib.import_module("_md5").md5)
    except ImportError:
        return partial(hashlib.md5, usedforsecurity=False)


md5 = _md5_constructor()

# Tokens are 32-bit: every token t satisfies 0 <= t < TOKEN_SPACE.
TOKEN_SPACE = 1 << 32


def python_ring_token(key: bytes) -> int:
    """The ring token of key (see the module docstring for why it is computed this way).
    An ASCII key is its own latin-1 decoded UTF-8 form, so it is hashed as it is."""
    if not key.isascii():
        key = key.decode("latin-1").encode("utf-8")
    return int.from_bytes(md5(key).digest()[:4], "little")


class NativeRingHash(Protocol):
    """The C module _ring_hash.c: ring_token, and the batch lookup of the router's ring."""

    def token(self, key: bytes, /) -> int: ...

    def successors(self, keys: Sequence[bytes], points: bytes, table: tuple[T, ...], /) -> list[T]:
        """table[bisect_right(points, ring_token(key))] of each key; points packed as
        ascending uint32 (native_points), table one item per point and one past the last."""
        ...

    def grouped(
        self, keys: Sequence[bytes], points: bytes, table: tuple[T, ...], /
    ) -> dict[T, list[int]]:
        """successors' items, each with the indexes of its keys (ascending), in the order
        keys first name them."""
        ...


def _native() -> NativeRingHash | None:
    """The C ring hash, which costs about 0.4 of the Python one per key (native.py says
    when it is None: the install always compiles it, make installs a compiler)."""
    return cast(NativeRingHash | None, native.extension(native.RING_HASH))


NATIVE = _native()
ring_token: Callable[[bytes], int] = python_ring_token if NATIVE is None else NATIVE.token


def native_points(points: Sequence[int]) -> bytes:
    """points (ascending tokens) as NativeRingHash.successors takes them: uint32 each, in
    the machine's byte order."""
    return struct.pack(f"={len(points)}I", *points)


@dataclass(frozen=True, slots=True)
class TokenRange:
    """Tokens start <= t < end."""

    start: int
    end: int

    def __contains__(self, t: object) -> bool:
        return isinstance(t, int) and self.start <= t < self.end


class TokenRanges:
    """Non-overlapping token ranges in ascending order; finds the range holding a token.

    The order is the caller's (requests answer per range in request order), so ranges
    must arrive sorted: an unsorted, overlapping, empty or out-of-space range is refused.
    """

    def __init__(self, ranges: Iterable[tuple[int, int]]) -> None:
        self.ranges = tuple(TokenRange(start, end) for start, end in ranges)
        previous_end = 0
        for position, r in enumerate(self.ranges):
            if not 0 <= r.start < r.end <= TOKEN_SPACE:
                raise LimitExceeded(
                    f"token range #{position} [{r.start}, {r.end}) is empty or outside"
                    f" [0, {TOKEN_SPACE})"
                )
            if r.start < previous_end:
                raise LimitExceeded(
                    f"token range #{position} [{r.start}, {r.end}) overlaps or precedes the"
                    " range before it; ranges must be sorted and disjoint"
                )
            previous_end = r.end
        self._starts = [r.start for r in self.ranges]

    def __len__(self) -> int:
        return len(self.ranges)

    def find(self, t: int) -> int:
        """The index of the range holding token t, or -1 when none does."""
        index = bisect_right(self._starts, t) - 1
        if index >= 0 and t < self.ranges[index].end:
            return index
        return -1
