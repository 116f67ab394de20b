"""Request ids: the ``x-request-id`` gRPC metadata that lets one request be followed from the
SDK through the router to the nodes, in each process's log.

- The SDK sends one id per RPC: the caller's, set with ``request_id("...")`` around the
  calls, or else a fresh random one. Retries of that RPC keep its id.
- The router takes the id a request carries (it makes one when there is none) and passes
  it on to every node the request reaches.
- Calls from a router to a node are coalesced: one internal call carries the items of
  several requests. It sends their distinct ids comma-separated, at most MAX_FORWARDED of
  them, followed by ``+N`` when N more were left out, e.g. ``x-request-id: a1,b2,+3``.
  A node logs the list as it came, so grepping a node's log for one id finds every
  internal call that served that request (unless it was among the ones left out).

Ids are at most MAX_ID_CHARS characters of ``[A-Za-z0-9._:@/-]``; anything else a caller
sends is replaced by ``_``, so an id can never break a log line or the list syntax.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar

HEADER = "x-request-id"
MAX_ID_CHARS = 64
MAX_FORWARDED = 16

_UNSAFE = re.compile(r"[^A-Za-z0-9._:@/-]")
_OMITTED = re.compile(r"\+[0-9]{1,9}")
# A header value from_header would give back unchanged: ids safe as they are and "+N"
# parts, at most MAX_FORWARDED + 1 of them; checked in one match (a router and its nodes
# read one with every frame; cleaning part by part costs 3-7 times as much). Possessive,
# so a value that fails is refused without backtracking (18 ids of 64 characters: 21 µs
# backtracking, 1.9 without).
_PART = rf"[A-Za-z0-9._:@/-]{{1,{MAX_ID_CHARS}}}+|\+[0-9]{{1,9}}+"
_CLEAN_LIST = re.compile(rf"(?:{_PART})(?:,(?:{_PART})){{0,{MAX_FORWARDED}}}+")

# The id (or comma-separated ids) of the request the running task works for.
current: ContextVar[str | None] = ContextVar("shardkv_request_id", default=None)


def new_id() -> str:
    """A fresh random id: 16 hex digits."""
    return secrets.token_hex(8)


def clean(value: str) -> str:
    """One id made safe for logs and for the list syntax (see the module docstring)."""
    return _UNSAFE.sub("_", value[:MAX_ID_CHARS])


def from_header(value: str) -> str:
    """A received header value (one id or a forwarded list), each part cleaned."""
    if _CLEAN_LIST.fullmatch(value):
        return value
    parts = value.split(",", MAX_FORWARDED + 1)[: MAX_FORWARDED + 1]
    return ",".join(part if _OMITTED.fullmatch(part) else clean(part) for part in parts)


def from_metadata(metadata: Sequence[tuple[str, str | bytes]] | None) -> str | None:
    """The cleaned request id of a call's invocation metadata; None when it has none."""
    for key, value in metadata or ():
        if key == HEADER and isinstance(value, str) and value:
            return from_header(value)
    return None


def join(ids: Iterable[str | None]) -> str | None:
    """The ids of the requests one coalesced call serves, as one header value."""
    distinct = [i for i in dict.fromkeys(ids) if i]
    if not distinct:
        return None
    if len(distinct) <= MAX_FORWARDED:
        return ",".join(distinct)
    return ",".join([*distinct[:MAX_FORWARDED], f"+{len(distinct) - MAX_FORWARDED}"])


def outgoing() -> tuple[tuple[str, str], ...] | None:
    """Metadata carrying the running task's request id; None when it has none."""
    value = current.get()
    return None if value is None else ((HEADER, value),)


@contextmanager
def request_id(value: str | None = None) -> Iterator[str]:
    """Sends value (cleaned; a fresh id when None) as the request id of every SDK call made
    in the block, and yields it, e.g. to log it beside the caller's own lines::

        with request_id("checkout-42"):
            kv.put("cart:42", b"...")

    A call coalesced with other callers' calls (concurrent ``get``/``put``/``delete`` of
    one client) travels under the id of the call that started its batch.
    """
    previous = current.set(clean(value) if value else new_id())
    try:
        yield current.get() or ""
    finally:
        current.reset(previous)
