"""When the exchange port takes a caller that half-closed for gone (serving/
exchange_listener.py, gone): its socket reset, or closed meanwhile. The second used to
raise OSError (EBADF) out of the connection's task when a reply's failed write had closed
the socket, leaving the caller's other frames running to their deadlines."""

from __future__ import annotations

import socket
import struct
import time

import pytest
from shardkv.serving.exchange_listener import gone


@pytest.mark.timeout(10)
def test_a_caller_is_gone_once_its_socket_reset_or_closed() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        caller = socket.create_connection(server.getsockname())
        accepted, _ = server.accept()
        with accepted:
            assert not gone(accepted)
            caller.shutdown(socket.SHUT_WR)  # a half-close: still there
            assert not gone(accepted)
            caller.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            caller.close()  # a reset
            deadline = time.monotonic() + 5
            while not gone(accepted):
                assert time.monotonic() < deadline, "the reset was never seen"
                accepted.send(b"x")  # what the server tells the caller draws the reset
                time.sleep(0.05)
        assert gone(accepted)  # closed meanwhile
