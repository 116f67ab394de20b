"""scripts/install-system-deps.sh installs what is missing, apt-get update first, and
`make cluster TOPOLOGY=etcd` runs it for etcd alone. The script runs against a PATH where
etcd is missing and apt-get is a stand-in that records its arguments, so nothing is
installed and the machine's own packages do not matter."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "install-system-deps.sh"


def run_script(
    tmp_path: Path, *commands: str, installs: str = ""
) -> tuple[subprocess.CompletedProcess[str], str]:
    """The script with only id and a recording apt-get on PATH (as root: CI's case); the
    stand-in's install puts the commands named by installs on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "apt-get.calls"
    os.symlink(shutil.which("id") or "/usr/bin/id", bin_dir / "id")
    fake = bin_dir / "apt-get"
    links = "".join(f" /bin/ln -s /bin/true {bin_dir / c};" for c in installs.split())
    fake.write_text(
        f'#!/bin/bash\necho "$*" >> {record}\nif [ "$1" = install ]; then{links} :; fi\n'
    )
    fake.chmod(0o755)
    done = subprocess.run(
        ["/bin/bash", str(SCRIPT), *commands],
        env={"PATH": str(bin_dir)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    return done, record.read_text() if record.exists() else ""


def test_installs_only_what_is_missing_after_an_update(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("not root: the script would go through sudo (CI runs as root)")
    done, calls = run_script(tmp_path, "etcd", "etcdctl", installs="etcd etcdctl")
    assert done.returncode == 0, done.stderr
    assert calls.splitlines() == [
        "update -qq",
        "install -y -qq --no-install-recommends etcd-server etcd-client",
    ], calls


def test_a_package_that_leaves_its_command_missing_fails_saying_which(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("not root: the script would go through sudo (CI runs as root)")
    done, _ = run_script(tmp_path, "etcd", "etcdctl", installs="etcd")
    assert done.returncode != 0
    assert "still missing after installing etcd-client: etcdctl" in done.stderr, done.stderr


def test_an_unknown_command_is_refused(tmp_path: Path) -> None:
    done, calls = run_script(tmp_path, "etcd", "bogus")
    assert done.returncode != 0 and "unknown command bogus" in done.stderr, done.stderr
    assert calls == ""


def test_make_cluster_with_etcd_runs_it_for_etcd_only() -> None:
    dry = subprocess.run(
        ["make", "--no-print-directory", "-n", "cluster", "TOPOLOGY=etcd", "ROUTERS=2"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert "scripts/install-system-deps.sh etcd etcdctl" in dry.stdout, dry.stdout
    assert "--topology etcd --routers 2" in dry.stdout, dry.stdout
    plain = subprocess.run(
        ["make", "--no-print-directory", "-n", "cluster"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert "install-system-deps.sh etcd" not in plain.stdout, plain.stdout
