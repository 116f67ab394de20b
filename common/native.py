"""The C extensions the install builds (pyproject.toml), and their pure-Python twins.

Each hot loop compiled in C keeps its Python version beside it, which runs where
SHARDKV_NO_EXTENSIONS is set (as aiohttp's and yarl's *_NO_EXTENSIONS) or in a checkout
never installed; the unit tests run both and check them against each other.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

# Set (to anything non-empty) to run the Python version of every extension.
NO_EXTENSIONS = "SHARDKV_NO_EXTENSIONS"
# The modules pyproject.toml builds: the ring hash (ring_tokens.py), and the comparing and
# placing of a batch read's answers (router/requests/read_groups.py).
RING_HASH = "shardkv.common._ring_hash"
SPANS = "shardkv.router.requests._spans"
BUILT = (RING_HASH, SPANS)


def extension(name: str) -> ModuleType | None:
    """The compiled module name; None where SHARDKV_NO_EXTENSIONS is set or it is not built."""
    if os.environ.get(NO_EXTENSIONS):
        return None
    try:
        return importlib.import_module(name)
    except ImportError:
        return None
