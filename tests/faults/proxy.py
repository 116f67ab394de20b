"""A TCP proxy between a router and a node that can delay, black-hole or cut the link.

Like etcd's integration bridge (tests/framework/integration/bridge.go): the router's
cluster.toml names the proxy's address for the node, and the node advertises the proxy's
second port as its exchange port (shardd --advertise-exchange-port), so every byte between
them passes here. The proxy runs its own event loop on a thread, so a test drives it with
plain calls:

- ``heal()``: forward everything (the initial state);
- ``delay(seconds)``: forward every chunk that much later, in order, both ways;
- ``blackhole()``: keep connections open but drop every byte, and accept new connections
  without ever reaching the node: calls hang until their deadline (a silent partition);
- ``cut()``: reset every connection and every new one at once (a loud partition).

Leaving black-hole or cut resets the connections it spoiled, so the router reconnects
cleanly instead of resuming an HTTP/2 stream with bytes missing.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")
CHUNK = 64 << 10
PASS, DELAY, BLACKHOLE, CUT = "pass", "delay", "blackhole", "cut"


class FaultProxy:
    """Listens on 127.0.0.1 (an OS-chosen port per upstream) and forwards each port to its
    upstream host:port; every fault applies to all of them."""

    def __init__(self, *upstreams: str) -> None:
        split = (upstream.rpartition(":") for upstream in upstreams)
        self._upstreams = [(host, int(port)) for host, _, port in split]
        self.mode = PASS
        self._delay_s = 0.0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._servers: list[asyncio.Server] = []
        self._links: set[_Link] = set()
        # Where each upstream is reached through the proxy, in order.
        self.addresses: list[str] = []
        self.address = ""
        self.connections = 0

    def start(self) -> FaultProxy:
        self._thread.start()
        for upstream in self._upstreams:
            accept = functools.partial(self._accept, upstream)
            server = self._call(asyncio.start_server(accept, "127.0.0.1", 0))  # type: ignore[arg-type]
            self._servers.append(server)
            self.addresses.append(f"127.0.0.1:{server.sockets[0].getsockname()[1]}")
        self.address = self.addresses[0]
        return self

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        self._call(self._stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def heal(self) -> None:
        self._call(self._set(PASS, 0.0))

    def delay(self, seconds: float) -> None:
        self._call(self._set(DELAY, seconds))

    def blackhole(self) -> None:
        self._call(self._set(BLACKHOLE, 0.0))

    def cut(self) -> None:
        self._call(self._set(CUT, 0.0))

    # -- on the proxy's loop ------------------------------------------------------------------

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(10)

    async def _set(self, mode: str, delay_s: float) -> None:
        spoilt = self.mode in (BLACKHOLE, CUT) or mode in (BLACKHOLE, CUT)
        self.mode, self._delay_s = mode, delay_s
        if spoilt:
            for link in list(self._links):
                if mode == CUT or link.spoilt:
                    link.abort()

    async def _stop(self) -> None:
        for server in self._servers:
            server.close()
        for link in list(self._links):
            link.abort()
        for server in self._servers:
            await server.wait_closed()

    async def _accept(
        self,
        upstream: tuple[str, int],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.connections += 1
        link = _Link(writer)
        self._links.add(link)
        try:
            if self.mode == CUT:
                return
            if self.mode == BLACKHOLE:
                link.spoilt = True
                while await reader.read(CHUNK):
                    pass
                return
            try:
                up_reader, up_writer = await asyncio.open_connection(*upstream)
            except OSError:
                return
            link.upstream = up_writer
            await asyncio.gather(
                self._pump(link, reader, up_writer), self._pump(link, up_reader, writer)
            )
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            link.abort()
            self._links.discard(link)

    async def _pump(
        self, link: _Link, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Copies one direction; chunks keep their order and each waits out the delay."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def send() -> None:
            while True:
                due, data = await queue.get()
                if not data:
                    return
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                writer.write(data)
                await writer.drain()

        sender = asyncio.create_task(send())
        try:
            while data := await reader.read(CHUNK):
                if self.mode == BLACKHOLE or link.spoilt:
                    link.spoilt = True
                    continue
                queue.put_nowait((loop.time() + (self._delay_s if self.mode == DELAY else 0), data))
        finally:
            queue.put_nowait((0.0, b""))
            await asyncio.gather(sender, return_exceptions=True)
            link.abort()


class _Link:
    """One client connection and, once connected, its upstream."""

    def __init__(self, client: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream: asyncio.StreamWriter | None = None
        self.spoilt = False

    def abort(self) -> None:
        for writer in (self.client, self.upstream):
            if writer is not None and not writer.transport.is_closing():
                writer.transport.abort()
