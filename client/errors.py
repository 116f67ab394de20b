"""The SDK's exception hierarchy and the one registry mapping gRPC status codes to it.

Every error the SDK raises is a ``ShardKVError`` carrying the gRPC ``code`` and the server's
``details``; a subclass exists per meaning callers act on differently. Errors that come
from a gRPC call are raised ``from`` the ``grpc.RpcError``. Names never shadow builtins
(no ``ConnectionError`` or ``TimeoutError``), so ``except TimeoutError`` keeps meaning what
Python says it means.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import grpc
from shardkv.common.rpc_status import status_code


class ShardKVError(Exception):
    """Root of every SDK error: a gRPC ``code``, the server's ``details`` and, where known,
    the ``target`` (router address) that answered and the ``keys`` the error concerns."""

    default_code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(
        self,
        details: str,
        *,
        code: grpc.StatusCode | None = None,
        target: str | None = None,
        keys: Sequence[bytes] = (),
    ) -> None:
        super().__init__(details)
        self.details = details
        self.code = code if code is not None else self.default_code
        self.target = target
        self.keys = tuple(keys)

    def __str__(self) -> str:
        where = f" from {self.target}" if self.target else ""
        return f"{self.code.name}{where}: {self.details}"

    def for_key(self, key: bytes) -> ShardKVError:
        """A copy concerning key alone, naming it: the error of one caller's key, or of one
        key of a batch, when the whole call failed."""
        twin = type(self)(
            f"{self.details} (key {key[:64]!r})", code=self.code, target=self.target, keys=(key,)
        )
        twin.__cause__ = self.__cause__
        return twin

    def copy(self) -> ShardKVError:
        """A new instance with the same fields and cause: one per caller that shares a failed
        batch, so that no exception object is raised in two tasks or threads at once."""
        twin = type(self)(self.details, code=self.code, target=self.target, keys=self.keys)
        twin.__cause__ = self.__cause__
        return twin


_REGISTRY: dict[grpc.StatusCode, type[ShardKVError]] = {}
_E = TypeVar("_E", bound=type[ShardKVError])


def _maps(code: grpc.StatusCode) -> Callable[[_E], _E]:
    """Registers the decorated class as the error for code (one class per code)."""

    def register(cls: _E) -> _E:
        assert code not in _REGISTRY, f"{code} is mapped twice"
        cls.default_code = code
        _REGISTRY[code] = cls
        return cls

    return register


@_maps(grpc.StatusCode.CANCELLED)
class Cancelled(ShardKVError):
    """The call was cancelled before it completed (by the server or a shutdown)."""


class ClientClosed(Cancelled):
    """The client was closed: a call made after ``close()`` fails at once, without a round
    trip, and so does a call still in flight when ``close()`` was called. A ``Cancelled``
    (code CANCELLED) that no server sends: not in the registry."""


@_maps(grpc.StatusCode.INVALID_ARGUMENT)
class InvalidArgument(ShardKVError):
    """The request is malformed or breaks a limit (key or value size, batch size, range).

    The SDK raises it before sending when it can tell locally; retrying will not help.
    """


@_maps(grpc.StatusCode.DEADLINE_EXCEEDED)
class DeadlineExceeded(ShardKVError):
    """The call's timeout passed before an answer came.

    The outcome is unknown: a write that timed out may have been applied on some or all
    replicas. It is never retried automatically; read the key back to find out.
    """


@_maps(grpc.StatusCode.NOT_FOUND)
class NotFound(ShardKVError):
    """The server does not know the thing asked for (e.g. a health service name).

    A missing key is not an error: ``get`` returns None.
    """


@_maps(grpc.StatusCode.FAILED_PRECONDITION)
class FailedPrecondition(ShardKVError):
    """The system is not in a state that allows the operation."""


@_maps(grpc.StatusCode.RESOURCE_EXHAUSTED)
class ResourceExhausted(ShardKVError):
    """The server shed load or a message exceeded a size cap."""


@_maps(grpc.StatusCode.PERMISSION_DENIED)
class PermissionDenied(ShardKVError):
    """The credentials are valid but not allowed to do this."""


@_maps(grpc.StatusCode.UNAUTHENTICATED)
class Unauthenticated(ShardKVError):
    """The bearer token (or client certificate) is missing or wrong."""


@_maps(grpc.StatusCode.UNIMPLEMENTED)
class Unimplemented(ShardKVError):
    """The server does not offer this call (e.g. Admin calls sent to a shardd)."""


@_maps(grpc.StatusCode.UNAVAILABLE)
class Unavailable(ShardKVError):
    """No server could be reached, or not enough replicas answered for the consistency asked.

    Raised after the retry policy gave up. For a write the outcome is unknown, as for
    ``DeadlineExceeded`` (Cassandra's WriteTimeout): it may have been stored on fewer
    replicas than the consistency asked, and may later spread to the others by repair,
    so a later read may return it. Write again (or read the key back) to be sure.
    """


@_maps(grpc.StatusCode.INTERNAL)
class Internal(ShardKVError):
    """The server failed in a way it did not expect; its log says more."""


def error_class(code: grpc.StatusCode) -> type[ShardKVError]:
    """The class for code; codes without a class of their own map to the root class."""
    return _REGISTRY.get(code, ShardKVError)


def from_rpc_error(err: grpc.RpcError, *, target: str | None = None) -> ShardKVError:
    """The SDK error for a failed gRPC call; the caller raises it ``from err``."""
    code: grpc.StatusCode = err.code()
    details: str = err.details() or code.name
    error = error_class(code)(details, code=code, target=target)
    error.__cause__ = err
    return error


def from_item_status(
    number: int, message: str, key: bytes, *, target: str | None = None
) -> ShardKVError:
    """The SDK error for one failed item of a batch reply (code != 0) from target."""
    code = status_code(number)
    details = message or f"key {key[:64]!r} failed"
    return error_class(code)(details, code=code, target=target, keys=(key,))
