"""An SDK-only install (``pip install shardkv``, no extras) imports every module it ships,
and a server command run without the ``server`` extra names the extra to install.

The install is simulated faithfully and offline: a directory holding only the base
dependencies (grpcio, protobuf) and shardkv itself, put on the path of an interpreter
started without site-packages (``python -S``), so every extra is truly absent.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import shardkv

SDK_PACKAGES = ("shardkv.v1", "shardkv.common", "shardkv.client", "shardkv.client.cli")

IMPORT_ALL = """
import importlib, pkgutil
for name in {packages!r}:
    package = importlib.import_module(name)
    for info in pkgutil.iter_modules(package.__path__, name + "."):
        importlib.import_module(info.name)
        print(info.name)
"""


def _base_requirements(distribution: str) -> set[str]:
    """distribution's name and, transitively, those of its requirements outside extras."""
    names, pending = set(), [distribution]
    while pending:
        name = pending.pop()
        if name in names:
            continue
        names.add(name)
        for requirement in metadata.requires(name) or ():
            if "extra ==" not in requirement:
                pending.append(re.split(r"[ ;<>=!~\[]", requirement, maxsplit=1)[0])
    return names


def _importable_paths(distribution: str) -> set[Path]:
    """The installed top-level modules of a distribution, namespace parts one level down
    (google/protobuf rather than google)."""
    paths = set()
    for file in metadata.files(distribution) or ():
        parts = file.parts
        if parts[0].endswith(".dist-info") or parts[0] in ("..", "__pycache__"):
            continue
        top = Path(parts[0])
        if len(parts) > 2 and not (file.locate().parents[len(parts) - 2] / "__init__.py").exists():
            top = Path(*parts[:2])
        if top.suffix in ("", ".py") or top.name.endswith(".so"):
            paths.add(top)
    return paths


@pytest.fixture(scope="module")
def sdk_only_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding shardkv and its base dependencies and nothing else."""
    root = tmp_path_factory.mktemp("sdk-only")
    (root / "shardkv").symlink_to(Path(shardkv.__file__).parent)
    site = Path(metadata.distribution("grpcio").locate_file(""))
    for distribution in _base_requirements("shardkv") - {"shardkv"}:
        for path in _importable_paths(distribution):
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            (root / path).symlink_to(site / path)
    return root


def _python(path: Path, code: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(path)}
    return subprocess.run(
        [sys.executable, "-S", "-c", code], env=env, capture_output=True, text=True, timeout=60
    )


def test_the_extras_are_really_absent(sdk_only_path: Path) -> None:
    result = _python(sdk_only_path, "import lmdb")
    assert result.returncode != 0 and "ModuleNotFoundError" in result.stderr


def test_every_sdk_module_imports_without_extras(sdk_only_path: Path) -> None:
    result = _python(sdk_only_path, IMPORT_ALL.format(packages=SDK_PACKAGES))
    assert result.returncode == 0, result.stderr
    imported = result.stdout.split()
    assert "shardkv.client.sync" in imported and "shardkv.common.hlc" in imported


@pytest.mark.parametrize("command", ["shardd", "router"])
def test_a_server_command_names_the_missing_extra(sdk_only_path: Path, command: str) -> None:
    code = f"from shardkv.common.launch import {command}; raise SystemExit({command}())"
    result = _python(sdk_only_path, code)
    assert result.returncode == 2, result.stderr
    assert "pip install 'shardkv[server]'" in result.stderr
    assert "Traceback" not in result.stderr
