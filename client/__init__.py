"""The shardkv client SDK: ``Client`` (blocking) and ``AsyncClient`` (asyncio).

from shardkv.client import Client

with Client("127.0.0.1:7100") as kv:
    version = kv.put("greeting", b"hello")
    assert kv.get("greeting") == b"hello"

Against routers both also make the Admin calls (topology, health, node add and remove,
moves, repair, status, backup, restore), declared once in ``shardkv.client.admin``.
"""

from shardkv.common.requestid import request_id

from .aio import AsyncClient
from .core import Consistency, Record
from .errors import (
    Cancelled,
    ClientClosed,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    ShardKVError,
    Unauthenticated,
    Unavailable,
    Unimplemented,
)
from .retry import RetryPolicy
from .sync import Client
from .transport import TLSConfig

__all__ = [
    "AsyncClient",
    "Cancelled",
    "Client",
    "ClientClosed",
    "Consistency",
    "DeadlineExceeded",
    "FailedPrecondition",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "Record",
    "ResourceExhausted",
    "RetryPolicy",
    "ShardKVError",
    "TLSConfig",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "request_id",
]
