"""Whether a host is this machine only: where a server may listen open, and where a secret
may travel without TLS (a node token, an etcd password)."""

from __future__ import annotations

import ipaddress
import socket


def is_loopback(host: str) -> bool:
    """Whether host (an address or a name, IPv6 possibly in brackets) is this machine only:
    a loopback address, or a name all of whose addresses are. Empty (":port", every
    interface) is not."""
    host = host.strip("[]")
    if not host:
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return all(ipaddress.ip_address(info[4][0]).is_loopback for info in infos)
