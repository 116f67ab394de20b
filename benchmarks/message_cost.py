"""`python -m benchmarks.message_cost`: CPU per message of the transports a hop could use.

A router's CPU per request is mostly what its messages cost, not its Python per key
(README, Performance): every request is a message in and out, and a message to each node
it asks and back. This measures that floor on this machine, apart from shardkv: an echo
server in its own process answers a 1,300-byte request (a read of about 67 keys) with a
1,300-byte reply, through

- a gRPC unary call (how a gRPC client, grpcurl or the blocking SDK, calls the router),
- a message each way on one open gRPC stream, and
- a length-prefixed frame each way on a plain asyncio TCP connection (how the asyncio SDK
  calls a router and a router calls a node: the exchange port),

with K requests in flight from one asyncio client, and prints requests/s and the CPU
time per request of the server process and of the client process (user + system, all
threads, from /proc).

    python -m benchmarks.message_cost --in-flight 1,8 --seconds 4
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import multiprocessing
import os
import struct
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

import grpc
import grpc.aio

from benchmarks.procs import free_port
from benchmarks.procstat import usage

REQUEST = b"q" * 1300
REPLY = b"r" * 1300
SERVICE = "bench.Echo"
HEADER = struct.Struct(">II")  # frame length (after these 4 bytes), frame id


def _identity(data: bytes) -> bytes:
    return data


async def _unary(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    return REPLY


async def _stream(
    requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[bytes, bytes]
) -> AsyncIterator[bytes]:
    async for _ in requests:
        yield REPLY


class _Frames(asyncio.Protocol):
    """Splits a byte stream into frames; on_frame gets each frame's id and body."""

    def __init__(self, on_frame: Callable[[_Frames, int], None]) -> None:
        self._on_frame = on_frame
        self._buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while len(self._buffer) >= HEADER.size:
            length, frame_id = HEADER.unpack_from(self._buffer)
            if len(self._buffer) < 4 + length:
                return
            del self._buffer[: 4 + length]
            self._on_frame(self, frame_id)

    def send(self, frame_id: int, body: bytes) -> None:
        assert self.transport is not None
        self.transport.write(HEADER.pack(4 + len(body), frame_id) + body)


def _serve(grpc_port: int, tcp_port: int) -> None:
    async def run() -> None:
        server = grpc.aio.server()
        handlers = {
            "Unary": grpc.unary_unary_rpc_method_handler(_unary, _identity, _identity),
            "Stream": grpc.stream_stream_rpc_method_handler(_stream, _identity, _identity),
        }
        server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, handlers)])
        server.add_insecure_port(f"127.0.0.1:{grpc_port}")
        await server.start()
        loop = asyncio.get_running_loop()
        echo = await loop.create_server(
            lambda: _Frames(lambda frames, frame_id: frames.send(frame_id, REPLY)),
            "127.0.0.1",
            tcp_port,
        )
        async with echo:
            await server.wait_for_termination()

    asyncio.run(run())


async def _grpc_unary(address: str) -> Callable[[], Awaitable[None]]:
    channel = grpc.aio.insecure_channel(address)
    call = channel.unary_unary(f"/{SERVICE}/Unary", _identity, _identity)

    async def one() -> None:
        await call(REQUEST)

    return one


async def _grpc_stream(address: str) -> Callable[[], Awaitable[None]]:
    """One stream per worker, as the router keeps one per node: write, then read."""
    channel = grpc.aio.insecure_channel(address)
    opener = channel.stream_stream(f"/{SERVICE}/Stream", _identity, _identity)
    streams: dict[asyncio.Task[None] | None, grpc.aio.StreamStreamCall[bytes, bytes]] = {}

    async def one() -> None:
        task = asyncio.current_task()
        stream = streams.get(task)
        if stream is None:
            stream = streams[task] = opener()
        await stream.write(REQUEST)
        await stream.read()

    return one


async def _tcp_frames(address: str) -> Callable[[], Awaitable[None]]:
    """One connection shared by every worker, replies matched to requests by frame id."""
    loop = asyncio.get_running_loop()
    waiting: dict[int, asyncio.Future[None]] = {}

    def answered(frames: _Frames, frame_id: int) -> None:
        waiting.pop(frame_id).set_result(None)

    host, port = address.rsplit(":", 1)
    _, frames = await loop.create_connection(lambda: _Frames(answered), host, int(port))
    ids = itertools.count(1)

    async def one() -> None:
        frame_id = next(ids)
        waiter = waiting[frame_id] = loop.create_future()
        frames.send(frame_id, REQUEST)
        await waiter

    return one


async def _measure(
    name: str, one: Callable[[], Awaitable[None]], in_flight: int, seconds: float, server: int
) -> None:
    done = 0
    running = True

    async def worker() -> None:
        nonlocal done
        while running:
            await one()
            done += 1

    workers = [asyncio.create_task(worker()) for _ in range(in_flight)]
    await asyncio.sleep(1.0)  # warm-up
    start_done, start = done, time.perf_counter()
    server_cpu, client_cpu = usage(server).cpu_s, usage(os.getpid()).cpu_s
    await asyncio.sleep(seconds)
    count, elapsed = done - start_done, time.perf_counter() - start
    server_us = (usage(server).cpu_s - server_cpu) / count * 1e6
    client_us = (usage(os.getpid()).cpu_s - client_cpu) / count * 1e6
    running = False
    await asyncio.gather(*workers)
    print(
        f"{name:12} x{in_flight:<3} {count / elapsed:9,.0f} requests/s"
        f"   server {server_us:6.1f} µs   client {client_us:6.1f} µs per request",
        flush=True,
    )


async def _run(
    in_flights: Sequence[int], seconds: float, server: int, ports: tuple[int, int]
) -> None:
    grpc_address, tcp_address = f"127.0.0.1:{ports[0]}", f"127.0.0.1:{ports[1]}"
    kinds = (
        ("grpc unary", _grpc_unary, grpc_address),
        ("grpc stream", _grpc_stream, grpc_address),
        ("tcp frames", _tcp_frames, tcp_address),
    )
    for in_flight in in_flights:
        for name, connect, address in kinds:
            await _measure(name, await connect(address), in_flight, seconds, server)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.message_cost", description=__doc__)
    parser.add_argument("--in-flight", default="1,8", help="comma-separated, e.g. 1,8")
    parser.add_argument("--seconds", type=float, default=4.0)
    args = parser.parse_args(argv)
    ports = (free_port(), free_port())
    server = multiprocessing.get_context("spawn").Process(target=_serve, args=ports, daemon=True)
    server.start()
    try:
        time.sleep(1.0)  # the server binds its ports
        assert server.pid is not None
        in_flights = [int(k) for k in args.in_flight.split(",")]
        asyncio.run(_run(in_flights, args.seconds, server.pid, ports))
    finally:
        server.kill()
        server.join(5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
