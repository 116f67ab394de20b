"""The strace reader behind the fsync-order test, on hand-made traces: a request that
arrives on a descriptor number another thread is still closing belongs to the new
connection (CI once lost every Put that way and failed with 'no request carrying ...')."""

from __future__ import annotations

from faults.strace_log import PREFACE, node_activity, parse_trace


def hexed(data: bytes) -> str:
    return "".join(f"\\x{byte:02x}" for byte in data)


def data_frame(stream: int, payload: bytes) -> bytes:
    header = len(payload).to_bytes(3, "big") + bytes([0x0, 0x1]) + stream.to_bytes(4, "big")
    return header + payload


def message(name: str, fd: int, data: bytes, flags: str, ret: int) -> str:
    iov = f'[{{iov_base="{hexed(data)}", iov_len={len(data)}}}]'
    header = f"{{msg_name=NULL, msg_namelen=0, msg_iov={iov}, msg_iovlen=1, msg_controllen=0}}"
    return f"{name}({fd}, {header}, {flags}) = {ret}"


def test_a_connection_accepted_while_its_descriptor_number_is_being_closed_is_kept() -> None:
    inbound = PREFACE + data_frame(1, b"\x00\x00\x00\x00\x03put")
    reply = data_frame(1, b"\x00\x00\x00\x00\x02ok")
    trace = "\n".join(
        [
            "10 12:00:00.000001 accept4(5, NULL, NULL, SOCK_CLOEXEC|SOCK_NONBLOCK) = 9",
            "10 12:00:00.000002 close(9 <unfinished ...>",
            "11 12:00:00.000003 accept4(5, NULL, NULL, SOCK_CLOEXEC|SOCK_NONBLOCK) = 9",
            "10 12:00:00.000004 <... close resumed>) = 0",
            f"11 12:00:00.000005 {message('recvmsg', 9, inbound, '0', len(inbound))}",
            f"11 12:00:00.000006 {message('sendmsg', 9, reply, 'MSG_NOSIGNAL', len(reply))}",
        ]
    )
    _, exchanges = node_activity(parse_trace(trace))
    assert [e.request for e in exchanges] == [b"\x00\x00\x00\x00\x03put"]
    assert exchanges[0].reply is not None and exchanges[0].reply.name == "sendmsg"
