"""Entry points of the server commands: a missing extra is one line on stderr and exit 2,
not a traceback (the command modules import the server dependencies at their top)."""

from __future__ import annotations

import importlib
import sys

from shardkv.common.extras import MissingExtra


def shardd() -> int:
    return _run("shardkv.shardd.__main__")


def router() -> int:
    return _run("shardkv.router.__main__")


def _run(module: str) -> int:
    try:
        main = importlib.import_module(module).main
    except MissingExtra as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    result: int | None = main()
    return result or 0
