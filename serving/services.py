"""Registering a servicer whose handlers may answer with bytes already serialized.

A router answers a batch read with the entries its replicas serialized, joined
(router/api/kv_service.py); parsing them into a message only for gRPC to serialize it
again cost it about a tenth of a microsecond a key. The generated add_*_to_server
functions serialize with the message class's own method, which takes nothing else, so a
service whose handlers may return bytes is registered here instead, from its descriptor;
frames are answered alike (exchange_server.py).
"""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

# The handler factory of each kind of method, by (client streaming, server streaming).
_HANDLERS = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


def serialized(response: Message | bytes) -> bytes:
    """A response as it goes on the wire: bytes as they are, a message serialized."""
    return response if isinstance(response, bytes) else response.SerializeToString()


def add_service(server: grpc.aio.Server, service: ServiceDescriptor, servicer: object) -> None:
    """Serves every method of service with servicer's handler of the same name, as the
    generated add_*_to_server does, except that a handler may answer with bytes."""
    handlers: dict[str, Any] = {}
    for method in service.methods:
        kind = _HANDLERS[(method.client_streaming, method.server_streaming)]
        handlers[method.name] = kind(
            getattr(servicer, method.name),
            request_deserializer=GetMessageClass(method.input_type).FromString,
            response_serializer=serialized,
        )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service.full_name, handlers),)
    )
