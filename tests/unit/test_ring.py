"""The ring places keys evenly, by weight, stably, and the same way in every router; the C
ring hash (common/_ring_hash.c) and the Python one place every key alike."""

from __future__ import annotations

import os
import random
from bisect import bisect_right
from collections import Counter
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st
from shardkv.common import ring_tokens
from shardkv.common.ring_tokens import native_points, python_ring_token, ring_token
from shardkv.router.placement import ring as ring_module
from shardkv.router.placement.ring import DEFAULT_VNODES, Ring, direct_table, ring_key
from uhashring import HashRing

KEYS = [f"key-{i}".encode() for i in range(100_000)]
NATIVE = ring_tokens.NATIVE


@pytest.fixture(autouse=True, params=["C", "Python"])
def hashing(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Every test runs with the C ring hash and with the Python one, which a router uses
    where the install could not compile the C one."""
    if request.param == "C":
        if NATIVE is None:
            pytest.skip("the C ring hash is not built (test_the_c_ring_hash_is_built says why)")
    else:
        monkeypatch.setattr(ring_tokens, "NATIVE", None)
        monkeypatch.setattr(ring_module, "ring_token", python_ring_token)
    yield request.param


def test_the_c_ring_hash_is_built() -> None:
    """make builds common/_ring_hash.c (installing a compiler when missing); the Python hash
    runs only where SHARDKV_NO_EXTENSIONS says so."""
    if os.environ.get("SHARDKV_NO_EXTENSIONS"):
        pytest.skip("SHARDKV_NO_EXTENSIONS is set")
    assert NATIVE is not None, "the install did not build shardkv.common._ring_hash"


@given(st.binary(max_size=300))
def test_the_c_and_python_ring_tokens_agree(key: bytes) -> None:
    if NATIVE is None:
        pytest.skip("the C ring hash is not built")
    assert NATIVE.token(key) == python_ring_token(key)


def test_the_c_ring_hash_refuses_what_is_not_a_key() -> None:
    if NATIVE is None:
        pytest.skip("the C ring hash is not built")
    points = native_points([10, 20])
    with pytest.raises(TypeError, match="key 1 is str, not bytes"):
        NATIVE.successors([b"a", "b"], points, ("x", "y", "z"))  # type: ignore[list-item]
    with pytest.raises(TypeError, match="key 0 is NoneType, not bytes"):
        NATIVE.grouped([None], points, ("x", "y", "z"))  # type: ignore[list-item]
    with pytest.raises(TypeError, match="a key is bytes, not int"):
        NATIVE.token(7)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="table has 2 items for 2 points"):
        NATIVE.successors([b"a"], points, ("x", "y"))
    with pytest.raises(ValueError, match="points are 7 bytes: not a whole number of uint32"):
        NATIVE.successors([b"a"], points[:7], ("x", "y"))
    with pytest.raises(TypeError, match="must be tuple, not list"):
        NATIVE.grouped([b"a"], points, ["x", "y", "z"])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="unhashable"):
        NATIVE.grouped([b"a"], points, ([], [], []))


def test_the_c_lookup_survives_a_table_item_that_changes_the_keys() -> None:
    """grouped hashes the table's items, which may run Python code; keys that code empties
    are still looked up as they were passed (a snapshot), never read after being freed."""
    if NATIVE is None:
        pytest.skip("the C ring hash is not built")
    keys = [b"k%d" % i for i in range(50)]

    class Meddling:
        def __hash__(self) -> int:
            keys.clear()
            return 1

    item = Meddling()
    got = NATIVE.grouped(keys, native_points([5]), (item, item))
    assert got == {item: list(range(50))}


def primaries(ring: Ring, keys: list[bytes] = KEYS) -> dict[bytes, str]:
    return {key: ring.preference_list(key, 1)[0] for key in keys}


def test_equal_nodes_share_evenly() -> None:
    counts = Counter(primaries(Ring({f"n{i}": 1 for i in range(1, 6)})).values())
    mean = len(KEYS) / 5
    assert len(counts) == 5
    for node_id, count in counts.items():
        assert abs(count - mean) <= 0.10 * mean, (node_id, count, mean)


def test_weights_are_proportional() -> None:
    ring = Ring({"a": 1, "b": 1, "c": 2})
    counts = Counter(primaries(ring).values())
    expected = {"a": 0.25, "b": 0.25, "c": 0.5}
    for node_id, fraction in expected.items():
        assert counts[node_id] / len(KEYS) == pytest.approx(fraction, abs=0.04)
        assert ring.shares()[node_id] == pytest.approx(fraction, abs=0.04)
    assert sum(ring.shares().values()) == pytest.approx(1.0)


def test_adding_a_node_moves_about_one_sixth() -> None:
    before = primaries(Ring({f"n{i}": 1 for i in range(1, 6)}))
    after = primaries(Ring({f"n{i}": 1 for i in range(1, 7)}))
    moved = [key for key in KEYS if before[key] != after[key]]
    assert 0.10 <= len(moved) / len(KEYS) <= 0.25
    # Every key that moved went to the new node: none moved between two old nodes.
    assert {after[key] for key in moved} == {"n6"}


@pytest.mark.parametrize("node_count", [1, 2, 3, 7, 12])
def test_preference_lists_are_distinct_and_full(node_count: int) -> None:
    ring = Ring({f"n{i}": 1 + i % 3 for i in range(node_count)})
    for key in KEYS[:2000]:
        for n in (1, 3, 5, 10):
            prefs = ring.preference_list(key, n)
            assert len(prefs) == min(n, node_count)
            assert len(set(prefs)) == len(prefs)
        walk = list(ring.walk(key))
        assert sorted(walk) == sorted(ring.nodes)
        assert tuple(walk[:3]) == ring.preference_list(key, 3)
        assert list(ring.fallbacks(key, 2, skip=frozenset({walk[-1]}))) == walk[2:-1]


def test_same_topology_same_placement() -> None:
    weights = {"n1": 1, "n2": 2, "n3": 1, "n4": 1}
    one, two = Ring(weights), Ring(dict(reversed(list(weights.items()))))
    assert all(one.preference_list(k, 3) == two.preference_list(k, 3) for k in KEYS[:5000])


def test_pinned_placements() -> None:
    """Changing the key normalisation or the hash would silently re-place every key."""
    ring = Ring({"n1": 1, "n2": 1, "n3": 1})
    assert ring.preference_list(b"alpha", 3) == ("n3", "n1", "n2")
    assert ring.preference_list(b"gamma", 3) == ("n1", "n2", "n3")
    assert ring.preference_list(b"user:42", 3) == ("n3", "n2", "n1")
    assert ring.preference_list(b"\x00\xff", 3) == ("n3", "n2", "n1")


def test_ascii_keys_agree_with_uhashring() -> None:
    """The lookup table places keys exactly as uhashring's own ketama ring does."""
    weights = {f"n{i}": 1 + i % 2 for i in range(1, 8)}
    ring = Ring(weights)
    reference = HashRing(
        {n: {"weight": w, "vnodes": DEFAULT_VNODES} for n, w in weights.items()}, hash_fn="ketama"
    )
    for key in KEYS[:3000]:
        expected = tuple(reference.iterate_nodes(key.decode()))[:4]
        assert ring.preference_list(key, 4) == expected


@pytest.mark.parametrize("node_count", [3, 10, 100])
def test_lookups_at_up_to_100_nodes_agree_with_uhashring(node_count: int) -> None:
    """The lookup table at 3, 10 and 100 nodes: full, distinct and exactly uhashring's own
    ketama placement. (Its cost per lookup is a benchmark's business:
    benchmarks/placement.py, `make bench`.)"""
    weights = {f"n{i}": 1 for i in range(node_count)}
    ring = Ring(weights)
    reference = HashRing(
        {n: {"weight": w, "vnodes": DEFAULT_VNODES} for n, w in weights.items()}, hash_fn="ketama"
    )
    for key in KEYS[:2000]:
        prefs = ring.preference_list(key, 3)
        assert prefs == tuple(reference.iterate_nodes(key.decode()))[:3], key
        assert len(set(prefs)) == 3


def test_ring_token_is_uhashrings_ketama_hash_of_every_key(hashing: str) -> None:
    """Placement hashes keys with ring_token (md5 of the bytes, ASCII taken as they are);
    it must equal uhashring's hashi of ring_key(key) for every key, ASCII or not, or keys
    would silently move."""
    hashi = HashRing({"n1": {"weight": 1, "vnodes": 1}}, hash_fn="ketama").hashi
    rng = random.Random(16)
    keys = [*KEYS[:3000], b"", b"\x00", b"\x7f", b"\x80", b"\xff", "é".encode()]
    # Around MD5's block edges: 55, 56 and 64 bytes hashed, non-ASCII bytes counting two.
    keys += [b"k" * size for size in (55, 56, 63, 64, 65, 119, 120)]
    keys += [b"\xe9" * size for size in (27, 28, 32, 60)]
    keys += [rng.randbytes(rng.randrange(1, 40)) for _ in range(5000)]
    keys += [bytes(rng.randrange(0, 128) for _ in range(12)) for _ in range(2000)]
    token = ring_token if hashing == "C" else python_ring_token
    for key in keys:
        assert token(key) == hashi(ring_key(key)), key


def test_preference_lists_match_preference_list() -> None:
    """The batch lookup places each key as the single one does, at every n."""
    rng = random.Random(17)
    keys = [*KEYS[:1000], *(rng.randbytes(rng.randrange(0, 30)) for _ in range(1000))]
    for ring in (Ring({"n1": 1, "n2": 1, "n3": 1}), Ring({f"n{i}": 1 for i in range(12)})):
        # Keys past the ring's last point wrap around to its first.
        wrapped = [k for k in KEYS if ring_token(k) >= ring.points[-1]]
        assert wrapped
        for n in (1, 2, 3, 8, 10):
            for batch in (keys, KEYS[:1000], wrapped):  # mixed; ASCII, hashed as they are
                singles = [ring.preference_list(k, n) for k in batch]
                assert ring.preference_lists(batch, n) == singles
                groups: dict[tuple[str, ...], list[int]] = {}
                for index, owners in enumerate(singles):
                    groups.setdefault(tuple(sorted(owners)), []).append(index)
                got = ring.owner_groups(batch, n)
                assert list(got.items()) == list(groups.items())  # first named, first


@pytest.mark.parametrize("bits", [6, 12, 17])
def test_direct_table_finds_what_bisect_finds(bits: int) -> None:
    """Every bucket the direct table decides gives each of its tokens the entry bisect would:
    tokens at, beside and between points, at bucket edges, several points in a bucket,
    points on a bucket's first and last token, and tokens past the last point."""
    shift = 32 - bits
    rng = random.Random(bits)
    edges = [b << shift for b in {1, 2, (1 << bits) - 1} if b < 1 << bits]
    scattered = (rng.randrange(1 << 32) for _ in range(40 if bits > 6 else 1))
    points = sorted({*scattered, *edges, edges[0] - 1, 7, 8})
    table = [(f"n{i}",) for i in range(len(points) + 1)]
    direct, got_shift = direct_table(points, table, bits)
    assert got_shift == shift and len(direct) == 1 << bits
    tokens = {0, (1 << 32) - 1, *rng.sample(range(1 << 32), 2000)}
    for point in points:
        tokens |= {max(0, point - 1), point, min(point + 1, (1 << 32) - 1)}
    for bucket in range(0, 1 << bits, max(1, (1 << bits) // 64)):
        tokens |= {bucket << shift, ((bucket + 1) << shift) - 1}
    decided = 0
    for token in sorted(tokens):
        entry = direct[token >> shift]
        if entry is not None:
            decided += 1
            assert entry == table[bisect_right(points, token)], token
    assert decided
    held = {point >> shift for point in points}
    assert all((direct[b] is None) == (b in held) for b in range(1 << bits))
