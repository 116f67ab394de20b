"""Optional dependencies: the SDK installs with grpcio and protobuf alone; servers and the
CLI need extras. Importing a part whose extra is missing raises MissingExtra naming the
``pip install`` that fixes it, instead of a bare ModuleNotFoundError for some dependency.
"""

from __future__ import annotations

from importlib.util import find_spec

# Top-level modules each extra provides (pyproject.toml's optional dependencies).
EXTRA_MODULES = {
    "server": (
        "lmdb",
        "uhashring",
        "prometheus_client",
        "grpc_health",
        "grpc_reflection",
        "aetcd",
        "uvloop",
    ),
    "cli": ("rich",),
}


class MissingExtra(ImportError):
    """A part of shardkv was imported without the optional dependencies it needs."""


def require_extra(extra: str, part: str) -> None:
    """Raises MissingExtra when a module of extra is not installed."""
    missing = [module for module in EXTRA_MODULES[extra] if find_spec(module) is None]
    if missing:
        raise MissingExtra(
            f"{part} needs the '{extra}' extra: pip install 'shardkv[{extra}]'"
            f" (missing: {', '.join(missing)})"
        )
