"""Where a key is placed: the consistent-hash ring and its preference lists.

The points come from uhashring's ketama ring (``hash_fn='ketama'``), so placement is
ketama-compatible and decided by node ids and weights only. uhashring copies its point
list on every ``range()`` call (~90 µs at 100 nodes), so a Ring builds its own lookup table
once: the sorted points, and for every point the first few distinct nodes clockwise from
it. A lookup is then one md5, one bisect and a tuple slice (about 1 µs); the hash is
``ring_tokens.ring_token``, equal to uhashring's ``hashi(ring_key(key))`` for every key
(a unit test checks them against each other) without its str round trip. A batch is looked
up in C where the install built common/_ring_hash.c (0.12 µs a key against 0.3), else in
Python over a direct table.

A Ring is immutable: a topology change builds a new Ring and swaps the reference, and the
table is dropped with the old one.
"""

from __future__ import annotations

import struct
from bisect import bisect_right
from collections.abc import Iterator, Mapping, Sequence
from typing import cast

from shardkv.common import ring_tokens
from shardkv.common.ring_tokens import NativeRingHash, md5, native_points, ring_token
from uhashring import HashRing  # type: ignore[import-untyped]

# Ketama points are 32-bit.
_RING_SIZE = 1 << 32
# A ring token from an MD5 digest: its first 4 bytes, little-endian (ring_tokens.ring_token).
_token_of = struct.Struct("<I").unpack_from
# Virtual nodes per unit of weight; uhashring's ketama makes 4 points of each, so a node of
# weight 1 among equals holds 400 points (busiest of 100 nodes ~1.15x the mean share).
DEFAULT_VNODES = 100
# A batch lookup first tries a direct table over the token space cut into buckets of equal
# width: a bucket that holds no point sends all its tokens to the same point, so its owners
# are one list index away; only tokens of a bucket that holds a point are bisected. The
# bisect probes a list of ints scattered over memory (0.14 µs a key alone, more in a busy
# router); about 64 buckets per point leave about 1% of keys to it at 3 nodes and 9% at 60,
# for 1-2 MiB per ring and n.
BUCKETS_PER_POINT = 64
MAX_BUCKET_BITS = 18
# How many distinct successors the table keeps per point; longer walks fall back to
# stepping along the points (only for sloppy-quorum fallbacks with many nodes down).
DEFAULT_TABLE_DEPTH = 8
# The largest weight a node may have. Weights are relative shares: ketama gives a node
# vnodes * n * weight // (sum of all weights) groups of 4 points (n nodes), about
# vnodes * n groups in all whatever the weights, so a node whose share is below one group
# gets no point at all. It then owns nothing and the keys have fewer distinct owners:
# weight 100,000 beside three nodes of weight 1 took the whole ring and left every key
# one copy. With every weight between 1 and vnodes, each node keeps at least one group
# in any cluster, since vnodes * n * w = w + w * (vnodes * n - 1) >= w + vnodes * (n - 1),
# which is at least the sum of the weights; and a 100:1 ratio already covers nodes of very
# different sizes.
MAX_WEIGHT = DEFAULT_VNODES


class PlacementError(ValueError):
    """Weights that would leave a node without ring points, or a key with fewer than N
    distinct owners; the message names the node, its weight and the rule."""


def ring_key(key: bytes) -> str:
    """The one place a byte key becomes the string uhashring hashes.

    uhashring hashes ``str(key).encode("utf-8")``; ``str(b"k")`` is ``"b'k'"``. Decoding as
    latin-1 maps every byte to one code point, so the mapping is total and injective, and
    an ASCII key hashes exactly as any other ketama client hashes that string.
    """
    return key.decode("latin-1")


class Ring:
    """An immutable consistent-hash ring over node ids (never addresses)."""

    def __init__(
        self,
        weights: Mapping[str, int],
        *,
        vnodes: int = DEFAULT_VNODES,
        table_depth: int = DEFAULT_TABLE_DEPTH,
    ) -> None:
        if not weights:
            raise ValueError("a ring needs at least one node")
        check_weights(weights, 1, vnodes=vnodes)
        self._weights = dict(sorted(weights.items()))
        ketama = HashRing(
            {node_id: {"weight": w, "vnodes": vnodes} for node_id, w in self._weights.items()},
            hash_fn="ketama",
        )
        self._hashi = ketama.hashi
        # get_points() lists colliding points twice; the ring dict keeps one owner per point.
        owners: dict[int, str] = dict(ketama.get_points())
        self._points: list[int] = sorted(owners)
        self._owners: list[str] = [owners[p] for p in self._points]
        pointless = sorted(self._weights.keys() - set(self._owners))
        if pointless:  # check_weights rules this out; colliding hashes could still do it
            node_id = pointless[0]
            raise PlacementError(
                f"node {node_id!r} (weight {self._weights[node_id]}) gets no ring points:"
                " every node must own a share of the ring"
            )
        self._depth = min(table_depth, len(self._weights))
        self._table = self._successor_table()
        # preference_lists' (and owner_groups') tables per n, built on first use (once per n
        # for the ring's life: N, and R or W of a read): the table cut to n nodes per point,
        # and the direct one (None when the C lookup, which needs none, is there: the points
        # packed for it).
        self._native = ring_tokens.NATIVE
        self._native_points = b"" if self._native is None else native_points(self._points)
        self._batch_tables: dict[int, tuple[OwnerTable, DirectTable | None]] = {}
        # owner_groups' tables per n: each point's n owners as a set (owner_set).
        self._set_tables: dict[int, OwnerTable] = {}

    def _successor_table(self) -> list[tuple[str, ...]]:
        """For each point, the first ``depth`` distinct nodes clockwise from it.

        Built backwards: the list at point i is its owner followed by the list at i + 1
        without that owner. The last point's list is walked directly, since its successor
        wraps around to point 0.
        """
        count = len(self._points)
        table: list[tuple[str, ...]] = [()] * count
        table[count - 1] = tuple(self._walk_from(count - 1, self._depth))
        for index in range(count - 2, -1, -1):
            owner = self._owners[index]
            rest = tuple(n for n in table[index + 1] if n != owner)
            table[index] = (owner, *rest)[: self._depth]
        return table

    def _walk_from(
        self, index: int, limit: int, skip: frozenset[str] = frozenset()
    ) -> Iterator[str]:
        """Distinct node ids clockwise from point index, at most limit of them."""
        seen: set[str] = set(skip)
        found = 0
        count = len(self._points)
        for step in range(count):
            node_id = self._owners[(index + step) % count]
            if node_id not in seen:
                seen.add(node_id)
                yield node_id
                found += 1
                if found == limit:
                    return

    def _index(self, key: bytes) -> int:
        """The table index of the first point clockwise from the key's hash."""
        index = bisect_right(self._points, ring_token(key))
        return 0 if index == len(self._points) else index

    @property
    def nodes(self) -> tuple[str, ...]:
        """Every node id of the ring, sorted."""
        return tuple(self._weights)

    def weight(self, node_id: str) -> int:
        return self._weights[node_id]

    def preference_list(self, key: bytes, n: int) -> tuple[str, ...]:
        """The first n distinct node ids clockwise from key (fewer if the ring is smaller)."""
        index = self._index(key)
        if n <= self._depth:
            return self._table[index][:n]
        return tuple(self._walk_from(index, n))

    def preference_lists(self, keys: Sequence[bytes], n: int) -> list[tuple[str, ...]]:
        """preference_list(key, n) of each key, for a batch: in C where it was built; else
        the hash (ring_token's, inlined: an all-ASCII batch, the usual one, is hashed as it
        is), then the direct table, and the bisect only for a token whose bucket holds a
        point; no call per key."""
        if n > self._depth:
            return [self.preference_list(key, n) for key in keys]
        table, direct_shift = self._tables(n)
        if direct_shift is None:
            return cast(NativeRingHash, self._native).successors(keys, self._native_points, table)
        direct, shift = direct_shift
        points = self._points
        if all(map(bytes.isascii, keys)):
            tokens = [_token_of(md5(key).digest())[0] for key in keys]
        else:
            tokens = [ring_token(key) for key in keys]
        return [direct[t >> shift] or table[bisect_right(points, t)] for t in tokens]

    def owner_groups(self, keys: Sequence[bytes], n: int) -> dict[tuple[str, ...], list[int]]:
        """The indexes of keys by owners (the n nodes of their preference lists, as a set:
        owner_set), ascending, the groups in the order keys first name them: what a batch
        read plans its chunks from, which asks a key's owners in its own order of the nodes
        whatever their order on the ring (at 3 nodes and N = 3 one group, not the six orders
        of three owners). Gathered in C where it was built (no list per key)."""
        if n <= self._depth and self._native is not None:
            table = self._set_tables.get(n)
            if table is None:
                interned: dict[tuple[str, ...], tuple[str, ...]] = {}
                table = self._set_tables[n] = tuple(
                    interned.setdefault(s, s) for s in map(owner_set, self._tables(n)[0])
                )
            return self._native.grouped(keys, self._native_points, table)
        grouped: dict[tuple[str, ...], list[int]] = {}
        sets: dict[tuple[str, ...], tuple[str, ...]] = {}  # a batch has few distinct lists
        for index, owners in enumerate(self.preference_lists(keys, n)):
            owners_set = sets.get(owners)
            if owners_set is None:
                owners_set = sets[owners] = owner_set(owners)
            grouped.setdefault(owners_set, []).append(index)
        return grouped

    def _tables(self, n: int) -> tuple[OwnerTable, DirectTable | None]:
        """_tables_for(n), built on first use."""
        tables = self._batch_tables.get(n)
        if tables is None:
            tables = self._batch_tables[n] = self._tables_for(n)
        return tables

    def _tables_for(self, n: int) -> tuple[OwnerTable, DirectTable | None]:
        """The successor table cut to n nodes, one more entry past the last point (a token
        beyond it wraps to the first), each distinct list one tuple (the direct table
        then points at a few objects, which stay in cache); and its direct table, unless
        the lookup is in C."""
        lists: dict[tuple[str, ...], tuple[str, ...]] = {}
        cut = [lists.setdefault(owners[:n], owners[:n]) for owners in self._table]
        table = (*cut, cut[0])
        if self._native is not None:
            return table, None
        bits = min(MAX_BUCKET_BITS, (len(self._points) * BUCKETS_PER_POINT - 1).bit_length())
        return table, direct_table(self._points, table, bits)

    @property
    def points(self) -> tuple[int, ...]:
        """The ring's points (tokens), ascending; the arc of point i holds the tokens from
        point i - 1 (inclusive) up to point i (exclusive), wrapping around."""
        return tuple(self._points)

    def preference_list_at(self, ring_token: int, n: int) -> tuple[str, ...]:
        """The preference list of every key with this ring token (ring_tokens.ring_token)."""
        index = bisect_right(self._points, ring_token)
        index = 0 if index == len(self._points) else index
        if n <= self._depth:
            return self._table[index][:n]
        return tuple(self._walk_from(index, n))

    def walk(self, key: bytes) -> Iterator[str]:
        """Every node id once, in ring order from key: owners first, then the fallbacks."""
        index = self._index(key)
        yield from self._table[index]
        if self._depth < len(self._weights):
            yield from self._walk_from(index, len(self._weights), frozenset(self._table[index]))

    def fallbacks(self, key: bytes, n: int, *, skip: frozenset[str] = frozenset()) -> Iterator[str]:
        """Nodes beyond the first n owners of key, in ring order, leaving out skip.

        These are the candidates for sloppy-quorum writes when an owner is down.
        """
        for position, node_id in enumerate(self.walk(key)):
            if position >= n and node_id not in skip:
                yield node_id

    def shares(self) -> dict[str, float]:
        """Fraction of the hash space each node owns as the first replica (sums to 1)."""
        share = dict.fromkeys(self._weights, 0)
        previous = self._points[-1] - _RING_SIZE
        for point, owner in zip(self._points, self._owners, strict=True):
            share[owner] += point - previous
            previous = point
        return {node_id: arc / _RING_SIZE for node_id, arc in share.items()}


def owner_set(owners: tuple[str, ...]) -> tuple[str, ...]:
    """A set of owners as one tuple whatever their order: their ids sorted."""
    return tuple(sorted(owners))


# Per ring point the first n owners clockwise, and one more entry past the last point.
OwnerTable = tuple[tuple[str, ...], ...]
# A direct table: an entry per bucket of tokens (None: the bucket holds a point), and the
# shift that turns a token into its bucket.
DirectTable = tuple[list[tuple[str, ...] | None], int]


def direct_table(points: Sequence[int], table: Sequence[tuple[str, ...]], bits: int) -> DirectTable:
    """The 2**bits buckets of the token space, each the entry of table (one per point and
    one past the last) that every token of the bucket finds by bisect_right over points,
    or None where a point lies in the bucket (its tokens differ around the point)."""
    shift = 32 - bits
    direct: list[tuple[str, ...] | None] = [None] * (1 << bits)
    start = 0  # the first bucket not decided yet
    for index, point in enumerate(points):
        bucket = point >> shift
        if bucket > start:  # the buckets before this point's own hold no point
            direct[start:bucket] = [table[index]] * (bucket - start)
        start = bucket + 1
    direct[start:] = [table[len(points)]] * (len(direct) - start)
    return direct, shift


def ketama_groups(weights: Mapping[str, int], *, vnodes: int = DEFAULT_VNODES) -> dict[str, int]:
    """How many groups of 4 points ketama gives each node (uhashring's formula, checked
    against real rings by the unit tests), without building the ring (which takes ~50 ms
    at 3 nodes and seconds at 100)."""
    total = sum(weights.values())
    return {node_id: vnodes * len(weights) * w // total for node_id, w in weights.items()}


def check_weights(
    weights: Mapping[str, int], replication: int, *, vnodes: int = DEFAULT_VNODES
) -> None:
    """Raises PlacementError unless every weight is an integer in 1..MAX_WEIGHT, every node
    gets ring points, and at least replication nodes hold points, so that every key has
    replication distinct owners (a preference list walks the whole ring, so it finds every
    node that holds a point)."""
    for node_id, weight in weights.items():
        if isinstance(weight, bool) or not isinstance(weight, int) or weight < 1:
            raise PlacementError(
                f"node {node_id!r}: weight must be an integer >= 1, not {weight!r}"
            )
        if weight > MAX_WEIGHT:
            raise PlacementError(
                f"node {node_id!r}: weight {weight} exceeds the maximum of {MAX_WEIGHT}"
                f" (weights are relative shares of the ring; between 1 and {MAX_WEIGHT}"
                " every node keeps a share)"
            )
    groups = ketama_groups(weights, vnodes=vnodes)
    heaviest = max(weights, key=lambda node_id: (weights[node_id], node_id))
    for node_id, count in sorted(groups.items()):
        if count == 0:
            raise PlacementError(
                f"node {node_id!r} (weight {weights[node_id]}) would get no ring points beside"
                f" {heaviest!r} (weight {weights[heaviest]}): every node must own a share of"
                " the ring; raise its weight or lower the others'"
            )
    holders = sum(1 for count in groups.values() if count)
    if holders < replication:
        raise PlacementError(
            f"only {holders} node(s) would hold ring points, fewer than replication"
            f" N={replication}: every key needs N distinct owners"
        )
