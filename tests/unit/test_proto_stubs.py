"""The committed generated stubs are exactly what `make proto` writes from the .proto files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GENERATED = ("*_pb2.py", "*_pb2.pyi", "*_pb2_grpc.py")


def _stubs(directory: Path) -> dict[str, bytes]:
    return {
        path.name: path.read_bytes()
        for pattern in GENERATED
        for path in sorted(directory.glob(pattern))
    }


@pytest.mark.timeout(60)
def test_committed_stubs_match_a_fresh_generation(tmp_path: Path) -> None:
    venv_bin = str(Path(sys.executable).parent)  # so `python -m grpc_tools.protoc` is ours
    env = {**os.environ, "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}"}
    subprocess.run(
        [str(ROOT / "scripts" / "genproto.sh"), str(tmp_path)],
        env=env,
        check=True,
        capture_output=True,
        timeout=60,
    )
    fresh = _stubs(tmp_path / "shardkv" / "v1")
    committed = _stubs(ROOT / "protos" / "shardkv" / "v1")
    assert fresh, "genproto.sh wrote no stubs"
    stale = sorted(
        name for name in fresh.keys() | committed.keys() if fresh.get(name) != committed.get(name)
    )
    assert not stale, f"generated stubs are stale: {', '.join(stale)}; run make proto"
