"""One table from exceptions to gRPC status codes, and the handler wrappers every servicer
of node and router uses.

The table starts with the errors both servers share (a request over a limit); each server
registers its own domain errors beside the modules that raise them (shardkv.shardd.errors,
shardkv.router.api.errors), so this package never imports either server. A registered
error ends the call with its code and its own message, which names the key, limit, node or
store; the most specific registered class of an error decides. ``Relayed`` carries a code
chosen at run time (a node's status that the router passes on). Anything else ends as
INTERNAL with a one-line detail, and its traceback is logged. Cancellation and the aborts
a handler raises itself pass through untouched.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from types import MappingProxyType
from typing import Any, NoReturn, TypeVar

import grpc
import grpc.aio
from shardkv.common.limits import LimitExceeded

log = logging.getLogger(__name__)

S = TypeVar("S")
Req = TypeVar("Req")
Resp = TypeVar("Resp")
Context = grpc.aio.ServicerContext[Any, Any]

# The longest detail an unexpected error shows a client; the log has the rest.
_DETAIL_CHARS = 200

_TABLE: dict[type[Exception], grpc.StatusCode] = {
    LimitExceeded: grpc.StatusCode.INVALID_ARGUMENT,
}

TABLE: Mapping[type[Exception], grpc.StatusCode] = MappingProxyType(_TABLE)
"""The table, read-only: exception class -> status code (subclasses included)."""


def register(code: grpc.StatusCode, *kinds: type[Exception]) -> None:
    """Ends calls that raise one of kinds (or a subclass) with code. Registering a class
    again with the same code does nothing; with another code it is refused."""
    for kind in kinds:
        known = _TABLE.get(kind)
        if known is not None and known != code:
            raise ValueError(f"{kind.__qualname__} is already mapped to {known.name}")
        _TABLE[kind] = code


class Relayed(Exception):
    """Another server's status, passed on with this message (the router relaying a node)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def status_of(exc: Exception) -> grpc.StatusCode | None:
    """The code the table gives exc: its most specific registered class's; None if none."""
    if isinstance(exc, Relayed):
        return exc.code
    for kind in type(exc).__mro__:
        code = _TABLE.get(kind)
        if code is not None:
            return code
    return None


def internal_detail(method: str, exc: BaseException) -> str:
    """What a client learns of an unexpected error: the method, the class and one line."""
    lines = str(exc).strip().splitlines()
    line = lines[0][:_DETAIL_CHARS] if lines else ""
    return f"internal error in {method}: {type(exc).__name__}" + (f": {line}" if line else "")


async def abort_for(context: Context, exc: Exception, method: str) -> NoReturn:
    """Ends the call with the status the table gives exc; INTERNAL, logged, if none."""
    code = status_of(exc)
    if code is None:
        log.error("unexpected error in %s", method, exc_info=exc)
        await context.abort(grpc.StatusCode.INTERNAL, internal_detail(method, exc))
    await context.abort(code, str(exc))


Unary = Callable[[S, Req, "grpc.aio.ServicerContext[Req, Resp]"], Awaitable[Resp]]
Streaming = Callable[[S, Req, "grpc.aio.ServicerContext[Req, Resp]"], AsyncIterator[Resp]]


def unary(handler: Unary[S, Req, Resp]) -> Unary[S, Req, Resp]:
    """Wraps a unary handler so that whatever it raises ends the call through the table."""

    @functools.wraps(handler)
    async def wrapper(self: S, request: Req, context: grpc.aio.ServicerContext[Req, Resp]) -> Resp:
        try:
            return await handler(self, request, context)
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception as exc:
            await abort_for(context, exc, handler.__name__)

    return wrapper


def streaming(handler: Streaming[S, Req, Resp]) -> Streaming[S, Req, Resp]:
    """Wraps a server-streaming handler likewise; a failure mid-stream ends the stream with
    the error's status after the items already sent."""

    @functools.wraps(handler)
    async def wrapper(
        self: S, request: Req, context: grpc.aio.ServicerContext[Req, Resp]
    ) -> AsyncIterator[Resp]:
        try:
            async for item in handler(self, request, context):
                yield item
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception as exc:
            await abort_for(context, exc, handler.__name__)

    return wrapper
