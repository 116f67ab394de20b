"""One table from domain errors to gRPC status codes, and the wrappers every handler uses.

Known errors become their status with the error's own message (which names the key, the
limit or the store); anything else becomes INTERNAL and is logged with its traceback.
Cancellation and aborts raised by a handler itself pass through untouched.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import grpc
import grpc.aio
from shardkv.common.limits import LimitExceeded
from shardkv.shardd.commit import CommitterClosed, CommitterOverloaded
from shardkv.shardd.gate import StoreClosed
from shardkv.shardd.store import StoreFull

log = logging.getLogger(__name__)

S = TypeVar("S")
Req = TypeVar("Req")
Resp = TypeVar("Resp")


class ResponseTooLarge(Exception):
    """An answer would exceed the gRPC message limit; the caller must ask for less."""


STATUS_OF: tuple[tuple[type[Exception], grpc.StatusCode], ...] = (
    (LimitExceeded, grpc.StatusCode.INVALID_ARGUMENT),
    (StoreFull, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (ResponseTooLarge, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (StoreClosed, grpc.StatusCode.UNAVAILABLE),
    (CommitterClosed, grpc.StatusCode.UNAVAILABLE),
    (CommitterOverloaded, grpc.StatusCode.RESOURCE_EXHAUSTED),
)


def status_of(exc: Exception) -> grpc.StatusCode | None:
    """The status code for a known domain error; None for anything else."""
    for kind, code in STATUS_OF:
        if isinstance(exc, kind):
            return code
    return None


async def abort_for(
    context: grpc.aio.ServicerContext[Any, Any], exc: Exception, method: str
) -> NoReturn:
    """Ends the call with the status the table gives exc (INTERNAL, logged, if none)."""
    code = status_of(exc)
    if code is None:
        log.error("unexpected error method=%s error=%r", method, exc, exc_info=exc)
        await context.abort(
            grpc.StatusCode.INTERNAL, f"internal error in {method}: {type(exc).__name__}"
        )
    await context.abort(code, str(exc))


Unary = Callable[[S, Req, "grpc.aio.ServicerContext[Req, Resp]"], Awaitable[Resp]]
Streaming = Callable[[S, Req, "grpc.aio.ServicerContext[Req, Resp]"], AsyncIterator[Resp]]


def unary(handler: Unary[S, Req, Resp]) -> Unary[S, Req, Resp]:
    """Wraps a unary handler so its errors are mapped through STATUS_OF."""

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
    """Wraps a server-streaming handler so its errors are mapped through STATUS_OF."""

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
