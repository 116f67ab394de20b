"""What the repository itself must hold, checked on every run."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MAX_FILE_BYTES = 1 << 20
MAX_MODULE_LINES = 400
GENERATED = ("_pb2.py", "_pb2_grpc.py", "_pb2.pyi")


def _tracked() -> list[Path]:
    listing = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, timeout=30
    )
    return [ROOT / name for name in listing.stdout.decode().split("\0") if name]


def test_no_tracked_file_over_one_mebibyte() -> None:
    """Raw benchmark output stays out of git (.gitignore); summaries are small."""
    large = [p for p in _tracked() if p.exists() and p.stat().st_size > MAX_FILE_BYTES]
    assert not large, f"files over {MAX_FILE_BYTES} bytes are tracked: {large}"


def test_hand_written_modules_stay_small() -> None:
    """A module over 400 lines holds more than one concern: split it."""
    long = {
        str(p.relative_to(ROOT)): n
        for p in _tracked()
        if p.suffix == ".py" and p.exists() and not p.name.endswith(GENERATED)
        for n in [len(p.read_text().splitlines())]
        if n > MAX_MODULE_LINES
    }
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"


def test_test_modules_have_distinct_basenames() -> None:
    """pytest imports test modules by basename (tests/ is on the path, the tiers are not
    packages): two tiers holding the same name break collection of the whole suite."""
    names: dict[str, list[str]] = {}
    for path in _tracked():
        if path.name.startswith("test_") and path.suffix == ".py" and "tests" in path.parts:
            names.setdefault(path.name, []).append(str(path.relative_to(ROOT)))
    clashes = {name: paths for name, paths in names.items() if len(paths) > 1}
    assert not clashes, f"test modules sharing a basename: {clashes}"
