"""What anyone who can reach a node's exchange port can do to it: nothing but be refused.

Raw TCP against a real shardd (exchange.proto, for the wire): without the
node token, or with a wrong one, the connection is refused with UNAUTHENTICATED before any
frame is read; oversized, malformed or truncated messages and silence get a status naming
the problem (or just the connection closed), and the node keeps serving and loses nothing.
Frames sent before the caller ends its half of the stream are answered; a connection that
carries no frame for the idle time is closed.
"""

from __future__ import annotations

import socket
import struct
import time
from pathlib import Path

import exchange_wire as wire
import grpc
import pytest
from harness import Proc, shardd_proc
from shardkv.v1 import exchange_pb2, kv_pb2, kv_pb2_grpc, replica_pb2, replica_pb2_grpc

TOKEN = "exchange-tok-3b9d"
VERSION = (1_700_000_000_000 << 16) | 1
APPLY = "/shardkv.v1.Replica/Apply"


def _port(node: Proc, token: str | None = None) -> int:
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    with grpc.insecure_channel(node.address) as channel:
        replica = replica_pb2_grpc.ReplicaStub(channel)  # type: ignore[no-untyped-call]
        identity = replica.Identity(replica_pb2.IdentityRequest(), metadata=metadata, timeout=5)
    assert identity.exchange_port, identity
    return int(identity.exchange_port)


def _apply_frame(frame_id: int, key: bytes) -> bytes:
    record = replica_pb2.Record(key=key, value=b"v-" + key, version=VERSION, writer=1)
    return wire.frame(frame_id, APPLY, replica_pb2.ApplyRequest(records=[record]))


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
            with wire.connect(port) as sock:
                refusal = wire.hello(sock, shown)
                assert refusal is not None and refusal.id == 0, (shown, refusal)
                assert refusal.code == grpc.StatusCode.UNAUTHENTICATED.value[0], (shown, refusal)
                # Frames sent anyway are never served: the node closed the connection.
                assert wire.refused_for_good(sock, _apply_frame(1, b"planted"))
        # A frame in place of the hello is a hello without the token.
        with wire.connect(port) as sock:
            wire.send(sock, _apply_frame(1, b"planted"))
            refusal = wire.reply(sock)
            assert refusal is not None and refusal.code == grpc.StatusCode.UNAUTHENTICATED.value[0]
        with wire.connect(port) as sock:
            welcome = wire.hello(sock, f"Bearer {TOKEN}")
            assert welcome is not None and welcome.id == 0 and welcome.code == 0, welcome
            assert welcome.trailing["shardkv-node-id"] == "n1", welcome
            wire.send(sock, _apply_frame(7, b"admitted"))
            reply = wire.reply(sock)
            assert reply is not None and reply.id == 7 and reply.code == 0, reply
            assert list(replica_pb2.ApplyResponse.FromString(reply.response).applied) == [True]
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
        with wire.connect(port) as sock:
            assert wire.hello(sock) is not None
            wire.send(sock, _apply_frame(1, b"kept"))
            kept = wire.reply(sock)
            assert kept is not None and kept.code == 0, kept
            # A frame with no method is a ping: answered OK, with nothing in it.
            wire.send(sock, exchange_pb2.ExchangeFrame(id=2).SerializeToString())
            pong = wire.reply(sock)
            assert pong == exchange_pb2.ExchangeReply(id=2), pong
            # Frames the node cannot serve are refused alone; the connection goes on: a
            # streaming method, one of another service, a request that is not one.
            unserved = {
                3: (
                    exchange_pb2.ExchangeFrame(id=3, method="/shardkv.v1.Replica/StreamRange"),
                    grpc.StatusCode.UNIMPLEMENTED,
                ),
                4: (
                    exchange_pb2.ExchangeFrame(id=4, method="/shardkv.v1.Admin/GetTopology"),
                    grpc.StatusCode.UNIMPLEMENTED,
                ),
                5: (
                    exchange_pb2.ExchangeFrame(id=5, method=APPLY, request=b"\xff\xff\xff"),
                    grpc.StatusCode.INVALID_ARGUMENT,
                ),
            }
            for frame_id, (message, code) in unserved.items():
                wire.send(sock, message.SerializeToString())
                answer = wire.reply(sock)
                assert answer is not None and answer.id == frame_id, answer
                assert answer.code == code.value[0] and answer.message, answer
            wire.send(sock, _apply_frame(6, b"after"))
            after = wire.reply(sock)
            assert after is not None and after.id == 6 and after.code == 0, after

        cases = {
            "oversized": (struct.pack(">I", 0xFFFFFFF0), grpc.StatusCode.RESOURCE_EXHAUSTED),
            "malformed": (struct.pack(">I", 5) + b"\xff" * 5, grpc.StatusCode.INVALID_ARGUMENT),
            "id 0": (
                struct.pack(">I", len(frame := _apply_frame(0, b"zero"))) + frame,
                grpc.StatusCode.INVALID_ARGUMENT,
            ),
        }
        for name, (data, code) in cases.items():
            with wire.connect(port) as sock:
                assert wire.hello(sock) is not None
                sock.sendall(data)
                answer = wire.reply(sock)
                assert answer is not None and answer.id == 0, (name, answer)
                assert answer.code == code.value[0], (name, answer)
                assert answer.message, name
                assert wire.reply(sock) is None, f"{name}: the connection stayed open"
        # A hello is a token, not a message the size of a frame.
        with wire.connect(port) as sock:
            sock.sendall(struct.pack(">I", 9000) + b"\x0a" * 9000)
            answer = wire.reply(sock)
            assert answer is not None and answer.id == 0, answer
            assert answer.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0], answer
        # A message cut short, then the peer gone.
        with wire.connect(port) as sock:
            assert wire.hello(sock) is not None
            sock.sendall(struct.pack(">I", 1000) + b"\x08" * 10)
        # Silence: closed once the handshake timeout passes, without a hello.
        with wire.connect(port) as sock:
            started = time.monotonic()
            assert wire.reply(sock) is None
            assert time.monotonic() - started < 5
        assert node.alive(), node.log()
        assert _value(node, b"kept") == b"v-kept" and _value(node, b"after") == b"v-after"
        assert _value(node, b"zero") == b""
        log = node.log()
        assert "exceeds this server's limit" in log and "not an exchange frame" in log, log
        assert "sent no hello in time" in log, log
    finally:
        node.stop()


def _replies(sock: socket.socket) -> list[exchange_pb2.ExchangeReply]:
    """Every reply until the node closes the connection."""
    replies = []
    while (answer := wire.reply(sock)) is not None:
        replies.append(answer)
    return replies


@pytest.mark.timeout(60)
def test_frames_sent_before_a_half_close_are_answered(node: Proc) -> None:
    """A caller that sends its frames and then ends its half of the stream (shutdown
    SHUT_WR) still reads: the node says which frames it read (last_id), answers each, then
    closes. Before, it took the end of the stream for the caller gone, cancelled the frames
    and closed without an answer, though the write could be applied."""
    port = _port(node)
    with wire.connect(port) as sock:
        assert wire.hello(sock) is not None
        get = wire.frame(2, "/shardkv.v1.KV/Get", kv_pb2.GetRequest(key=b"before-eof"))
        data = b"".join(struct.pack(">I", len(m)) + m for m in (_apply_frame(1, b"half"), get))
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        replies = _replies(sock)
    answered = sorted((r.id, r.code) for r in replies if r.id)
    print("replies after the half-close:", [(r.id, r.code, r.last_id) for r in replies])
    assert answered == [(1, 0), (2, 0)], replies
    going = [r for r in replies if r.id == 0]
    assert len(going) == 1 and going[0].last_id == 2, replies
    assert _value(node, b"half") == b"v-half"
    assert node.alive()


@pytest.mark.timeout(60)
def test_idle_exchange_connections_are_closed(tmp_path: Path) -> None:
    """A connection that carries no frame for --max-connection-idle-s is told which frame
    was read last and closed (gRPC's max_connection_idle and its GOAWAY). Before, an
    admitted connection stayed open for good, however long it carried nothing."""
    node = shardd_proc(tmp_path, "n1", extra=["--max-connection-idle-s", "1"]).start()
    try:
        port = _port(node)
        with wire.connect(port) as sock:
            assert wire.hello(sock) is not None
            wire.send(sock, _apply_frame(3, b"idle"))
            answer = wire.reply(sock)
            assert answer is not None and answer.id == 3 and answer.code == 0, answer
            started = time.monotonic()
            replies = _replies(sock)
            closed_after = time.monotonic() - started
        assert [(r.id, r.code, r.last_id) for r in replies] == [
            (0, grpc.StatusCode.UNAVAILABLE.value[0], 3)
        ], replies
        assert 0.8 < closed_after < 3, closed_after
        assert _value(node, b"idle") == b"v-idle"
    finally:
        node.stop()
