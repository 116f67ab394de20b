"""gRPC statuses carried as numbers (google.rpc.Code, as in ItemStatus and an exchange
reply), and the error a unary call with a status raises: what frames need to look, to
their callers, exactly like the calls they stand for."""

from __future__ import annotations

import grpc
import grpc.aio

_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}


def status_code(number: int) -> grpc.StatusCode:
    """The grpc.StatusCode of a numeric code (UNKNOWN for a number gRPC does not know)."""
    return _BY_NUMBER.get(number, grpc.StatusCode.UNKNOWN)


def rpc_error(
    code: grpc.StatusCode, message: str, trailing: dict[str, str] | None = None
) -> grpc.aio.AioRpcError:
    """The error a unary call ended with this status (and trailing metadata) raises."""
    return grpc.aio.AioRpcError(
        code,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(*(trailing or {}).items()),
        details=message,
    )
