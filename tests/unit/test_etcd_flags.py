"""The router's --etcd-* flags: what goes together, the password read from its file and
kept out of every repr, and a lease TTL etcd would not grant refused before start."""

from __future__ import annotations

from pathlib import Path

import pytest
from shardkv.router.__main__ import _config, _etcd_security, _parser
from shardkv.router.membership.etcd_security import EtcdSecurity

URL = "etcd://127.0.0.1:2379/shardkv/t"


def security(argv: list[str]) -> EtcdSecurity:
    parser = _parser()
    return _etcd_security(parser, parser.parse_args(["--id", "r1", "--config", "c", *argv]))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--topology", URL, "--etcd-user", "root"], "must be given together"),
        (["--topology", URL, "--etcd-password-file", "pw"], "must be given together"),
        (["--topology", URL, "--etcd-cacert", "ca", "--etcd-cert", "c"], "must be given together"),
        (["--topology", URL, "--etcd-cert", "c", "--etcd-key", "k"], "needs --etcd-cacert"),
        (["--etcd-cacert", "ca"], "--etcd-cacert needs --topology etcd://"),
    ],
)
def test_flags_that_go_together(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        security(argv)
    assert message in capsys.readouterr().err


def test_the_password_comes_from_its_file_and_is_never_shown(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "pw").write_text("s3cret\n")
    user = ["--topology", URL, "--etcd-user", "root", "--etcd-password-file"]
    got = security([*user, str(tmp_path / "pw")])
    assert (got.user, got.password) == ("root", "s3cret")
    assert "s3cret" not in repr(got)

    (tmp_path / "two").write_text("one\ntwo\n")
    with pytest.raises(SystemExit):
        security([*user, str(tmp_path / "two")])
    assert "must hold one non-empty line" in capsys.readouterr().err


def test_a_lease_shorter_than_etcd_grants_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    parser = _parser()
    args = parser.parse_args(["--id", "r1", "--config", "c", "--etcd-lease-s", "1"])
    with pytest.raises(SystemExit):
        _config(parser, args)
    assert "--etcd-lease-s must be at least 2" in capsys.readouterr().err


@pytest.mark.timeout(10)
def test_a_password_in_clear_text_to_a_remote_etcd_is_warned_about() -> None:
    """The node token's rule (shardd/auth.py, exposure): warned about, not refused."""
    user = EtcdSecurity(user="root", password="s3cret")
    remote = ["10.0.0.5:2379", "etcd.example.invalid:2379", "0.0.0.0:2379"]
    local = ["127.0.0.1:2379", "localhost:2379", "[::1]:2379"]
    warnings = user.clear_text_warnings([*local, *remote])
    assert len(warnings) == 1 and "s3cret" not in warnings[0]
    assert all(endpoint in warnings[0] for endpoint in remote), warnings
    assert not any(endpoint in warnings[0] for endpoint in local), warnings
    assert "use --etcd-cacert" in warnings[0]
    assert user.clear_text_warnings(local) == []
    with_tls = EtcdSecurity(ca=Path("ca.pem"), user="root", password="s3cret")
    assert with_tls.clear_text_warnings(remote) == []
    assert EtcdSecurity().clear_text_warnings(remote) == []  # no password to expose
