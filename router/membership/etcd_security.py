"""How a router proves itself to etcd: TLS (the CA of etcd's certificate, and a client
certificate for etcd's --client-cert-auth) and etcd's user/password authentication.

With a user, the client calls Auth/Authenticate once per member connection and sends the
token it gets with every call (etcd's ``token`` metadata, as clientv3 does); a token etcd
no longer knows (expired, etcd restarted) is replaced on the next call. The password
comes from a file (--etcd-password-file), is never on a command line, and is never
logged or shown in a repr. Without TLS it crosses the network as it is, so, as for the
node token (shardd's ``exposure``), a user without --etcd-cacert to an etcd endpoint that
is not loopback is allowed with a warning (``clear_text_warnings``), logged at start.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
from aetcd import rpc  # type: ignore[import-untyped]
from shardkv.common.loopback import is_loopback
from shardkv.router.membership.topology_store import StoreUnavailable


class EtcdAccessError(StoreUnavailable):
    """etcd refused this router's credentials (a wrong user or password, no permission): a
    starting router gives up at once; a running one treats it as etcd being away (keeps
    serving its last topology, retries)."""


@dataclass(frozen=True)
class EtcdSecurity:
    """TLS files and the user to authenticate as (all optional)."""

    # CA (PEM) of etcd's server certificates; set: TLS to etcd.
    ca: Path | None = None
    # Client certificate and key (PEM) for an etcd started with --client-cert-auth.
    cert: Path | None = None
    key: Path | None = None
    user: str | None = None
    password: str = field(default="", repr=False)

    def clear_text_warnings(self, endpoints: Sequence[str]) -> list[str]:
        """What to warn about before connecting to endpoints (HOST:PORT): the password
        crossing the network in clear text, when there is a user, no TLS and an endpoint
        that is not loopback. Never shows the password."""
        if self.user is None or self.ca is not None:
            return []
        exposed = [
            endpoint for endpoint in endpoints if not is_loopback(endpoint.rpartition(":")[0])
        ]
        if not exposed:
            return []
        return [
            f"the etcd password of user {self.user!r} crosses the network in clear text to"
            f" {', '.join(exposed)}: use --etcd-cacert (TLS to etcd)"
        ]

    def channel(self, target: str, options: Sequence[tuple[str, Any]]) -> grpc.aio.Channel:
        """A channel to the member at target: TLS when a CA is set, else plaintext."""
        if self.ca is None:
            return grpc.aio.insecure_channel(target, options=options)
        try:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=self.ca.read_bytes(),
                private_key=self.key.read_bytes() if self.key else None,
                certificate_chain=self.cert.read_bytes() if self.cert else None,
            )
        except OSError as err:
            raise EtcdAccessError(f"cannot read the etcd TLS files: {err}") from err
        return grpc.aio.secure_channel(target, credentials, options=options)

    async def token(self, channel: grpc.aio.Channel, endpoint: str, timeout_s: float) -> str:
        """A token for self.user from the member behind channel; raises EtcdAccessError
        when etcd refuses the user or password (other failures pass through)."""
        assert self.user is not None, "token() needs a user"
        request = rpc.AuthenticateRequest(name=self.user, password=self.password)
        try:
            reply = await rpc.AuthStub(channel).Authenticate(request, timeout=timeout_s)
        except grpc.aio.AioRpcError as err:
            if err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise
            raise EtcdAccessError(
                f"etcd at {endpoint} refused user {self.user!r} ({err.code().name}:"
                f" {err.details()}): check --etcd-user and --etcd-password-file"
            ) from None
        return str(reply.token)


def read_password(path: Path) -> str:
    """The password in path (one line; its trailing newline is not part of it)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise EtcdAccessError(f"cannot read the etcd password file {path}: {err}") from err
    password = text.removesuffix("\n").removesuffix("\r")
    if not password or "\n" in password:
        raise EtcdAccessError(f"the etcd password file {path} must hold one non-empty line")
    return password


PLAINTEXT = EtcdSecurity()
