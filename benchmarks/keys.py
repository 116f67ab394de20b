"""The keys and values a cell uses: each value size its own keyspace, and key indices
drawn once per distribution (uniform, or Zipfian with s = 0.99 as in YCSB, the hottest
ranks scattered over the keyspace by a fixed permutation), so choosing a key costs a slice.
"""

from __future__ import annotations

import random
from functools import cache

ZIPF_S = 0.99
POOL_SIZE = 1 << 18


def key_name(value_bytes: int, index: int) -> bytes:
    return b"v%d/%08d" % (value_bytes, index)


@cache
def keyspace_keys(value_bytes: int, keyspace: int) -> tuple[bytes, ...]:
    return tuple(key_name(value_bytes, i) for i in range(keyspace))


@cache
def value_of(value_bytes: int) -> bytes:
    return random.Random(value_bytes).randbytes(value_bytes)


@cache
def index_pool(distribution: str, keyspace: int) -> tuple[int, ...]:
    """POOL_SIZE key indices drawn from the distribution, fixed for reproducibility."""
    rnd = random.Random(f"{distribution}/{keyspace}")
    if distribution == "uniform":
        return tuple(rnd.randrange(keyspace) for _ in range(POOL_SIZE))
    cumulative: list[float] = []
    total = 0.0
    for rank in range(1, keyspace + 1):
        total += rank**-ZIPF_S
        cumulative.append(total)
    ranks = rnd.choices(range(keyspace), cum_weights=cumulative, k=POOL_SIZE)
    scatter = list(range(keyspace))
    rnd.shuffle(scatter)
    return tuple(scatter[r] for r in ranks)


@cache
def key_pool(distribution: str, value_bytes: int, keyspace: int) -> tuple[bytes, ...]:
    keys = keyspace_keys(value_bytes, keyspace)
    return tuple(keys[i] for i in index_pool(distribution, keyspace))
