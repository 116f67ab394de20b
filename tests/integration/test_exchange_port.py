"""What anyone who can reach a node's exchange port can do to it: nothing but be refused.

Raw TCP against a real shardd (replica.proto, ExchangeHello, for the wire): without the
node token, or with a wrong one, the connection is refused with UNAUTHENTICATED before any
frame is read; oversized, malformed or truncated messages and silence get a status naming
the problem (or just the connection closed), and the node keeps serving and loses nothing.
"""

from __future__ import annotations

import socket
import struct
import time
from pathlib import Path

import grpc
import pytest
from harness import Proc, shardd_proc
from shardkv.v1 import kv_pb2, kv_pb2_grpc, replica_pb2, replica_pb2_grpc

TOKEN = "exchange-tok-3b9d"
VERSION = (1_700_000_000_000 << 16) | 1


def _port(node: Proc, token: str | None = None) -> int:
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    with grpc.insecure_channel(node.address) as channel:
        replica = replica_pb2_grpc.ReplicaStub(channel)  # type: ignore[no-untyped-call]
        identity = replica.Identity(replica_pb2.IdentityRequest(), metadata=metadata, timeout=5)
    assert identity.exchange_port, identity
    return int(identity.exchange_port)


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def _send(sock: socket.socket, message: bytes) -> None:
    sock.sendall(struct.pack(">I", len(message)) + message)


def _reply(sock: socket.socket) -> replica_pb2.ExchangeReply | None:
    """The next reply, or None when the node closed the connection."""
    header = _exactly(sock, 4)
    if header is None:
        return None
    body = _exactly(sock, struct.unpack(">I", header)[0])
    assert body is not None, "the connection ended inside a reply"
    return replica_pb2.ExchangeReply.FromString(body)


def _exactly(sock: socket.socket, count: int) -> bytes | None:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def _hello(sock: socket.socket, authorization: str = "") -> replica_pb2.ExchangeReply | None:
    _send(sock, replica_pb2.ExchangeHello(authorization=authorization).SerializeToString())
    return _reply(sock)


def _apply_frame(frame_id: int, key: bytes) -> bytes:
    record = replica_pb2.Record(key=key, value=b"v-" + key, version=VERSION, writer=1)
    frame = replica_pb2.ExchangeFrame(id=frame_id, timeout_ms=5000)
    frame.apply.records.append(record)
    return frame.SerializeToString()


def _value(node: Proc, key: bytes, token: str | None = None) -> bytes:
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    with grpc.insecure_channel(node.address) as channel:
        kv = kv_pb2_grpc.KVStub(channel)  # type: ignore[no-untyped-call]
        return bytes(kv.Get(kv_pb2.GetRequest(key=key), metadata=metadata, timeout=5).value)


@pytest.mark.timeout(60)
def test_the_exchange_port_admits_the_node_token_only(tmp_path: Path) -> None:
    token_file = tmp_path / "node-token"
    token_file.write_text(TOKEN + "\n")
    node = shardd_proc(tmp_path, "n1", extra=["--node-token-file", str(token_file)]).start()
    try:
        port = _port(node, TOKEN)
        for shown in ("", f"Bearer {TOKEN}x", TOKEN, "Bearer "):
            with _connect(port) as sock:
                refusal = _hello(sock, shown)
                assert refusal is not None and refusal.id == 0, (shown, refusal)
                assert refusal.code == grpc.StatusCode.UNAUTHENTICATED.value[0], (shown, refusal)
                # Frames sent anyway are never served: the node closed the connection.
                try:
                    _send(sock, _apply_frame(1, b"planted"))
                    assert _reply(sock) is None
                except (BrokenPipeError, ConnectionResetError):
                    pass
        # A frame in place of the hello is a hello without the token.
        with _connect(port) as sock:
            _send(sock, _apply_frame(1, b"planted"))
            refusal = _reply(sock)
            assert refusal is not None and refusal.code == grpc.StatusCode.UNAUTHENTICATED.value[0]
        with _connect(port) as sock:
            welcome = _hello(sock, f"Bearer {TOKEN}")
            assert welcome is not None and welcome.id == 0 and welcome.code == 0, welcome
            assert welcome.trailing["shardkv-node-id"] == "n1", welcome
            _send(sock, _apply_frame(7, b"admitted"))
            reply = _reply(sock)
            assert reply is not None and reply.id == 7 and reply.code == 0, reply
            assert list(reply.apply.applied) == [True]
        assert _value(node, b"admitted", TOKEN) == b"v-admitted"
        assert _value(node, b"planted", TOKEN) == b""
        log = node.log()
        assert log.count("refused exchange connection") >= 5, log
        assert TOKEN not in log
    finally:
        node.stop()


@pytest.mark.timeout(60)
def test_bad_input_on_the_exchange_port_is_answered_and_the_node_keeps_serving(
    tmp_path: Path,
) -> None:
    node = shardd_proc(tmp_path, "n1", extra=["--handshake-timeout-s", "1"]).start()
    try:
        port = _port(node)
        with _connect(port) as sock:
            assert _hello(sock) is not None
            _send(sock, _apply_frame(1, b"kept"))
            kept = _reply(sock)
            assert kept is not None and kept.code == 0, kept
            # A frame without a body is refused alone; the connection goes on.
            _send(sock, replica_pb2.ExchangeFrame(id=2).SerializeToString())
            empty = _reply(sock)
            assert empty is not None and empty.id == 2, empty
            assert empty.code == grpc.StatusCode.INVALID_ARGUMENT.value[0], empty

        cases = {
            "oversized": (struct.pack(">I", 0xFFFFFFF0), grpc.StatusCode.RESOURCE_EXHAUSTED),
            "malformed": (struct.pack(">I", 5) + b"\xff" * 5, grpc.StatusCode.INVALID_ARGUMENT),
            "id 0": (
                struct.pack(">I", len(frame := _apply_frame(0, b"zero"))) + frame,
                grpc.StatusCode.INVALID_ARGUMENT,
            ),
        }
        for name, (data, code) in cases.items():
            with _connect(port) as sock:
                assert _hello(sock) is not None
                sock.sendall(data)
                answer = _reply(sock)
                assert answer is not None and answer.id == 0, (name, answer)
                assert answer.code == code.value[0], (name, answer)
                assert answer.message, name
                assert _reply(sock) is None, f"{name}: the connection stayed open"
        # A hello is a token, not a message the size of a frame.
        with _connect(port) as sock:
            sock.sendall(struct.pack(">I", 9000) + b"\x0a" * 9000)
            answer = _reply(sock)
            assert answer is not None and answer.id == 0, answer
            assert answer.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0], answer
        # A message cut short, then the peer gone.
        with _connect(port) as sock:
            assert _hello(sock) is not None
            sock.sendall(struct.pack(">I", 1000) + b"\x08" * 10)
        # Silence: closed once the handshake timeout passes, without a hello.
        with _connect(port) as sock:
            started = time.monotonic()
            assert _reply(sock) is None
            assert time.monotonic() - started < 5
        assert node.alive(), node.log()
        assert _value(node, b"kept") == b"v-kept"
        assert _value(node, b"zero") == b""
        log = node.log()
        assert "exceeds the node's limit" in log and "not an exchange frame" in log, log
        assert "sent no hello in time" in log, log
    finally:
        node.stop()
