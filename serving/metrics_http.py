"""The Prometheus endpoint: ``/metrics`` over HTTP/1.1, served on the server's event loop.

prometheus-client's ``start_http_server`` ran a thread per connection: 1,000 idle
connections made 1,012 threads (issue 14 item 7). Here a connection is a coroutine of the
event loop, not a thread, and connections are bounded and short-lived:

- at most ``max_connections`` at once. When they are all open, a new connection takes the
  place of the oldest one that has no request in flight (that one is closed, as nginx and
  Go's servers drop idle keep-alive connections); only when every one has a request in
  flight is the new one answered 503 and closed. So connections that send nothing cannot
  shut scrapes out: each new connection pushes the oldest idle one out;
- a new connection is closed when its first request's head (at most 8 KiB) has not
  arrived within ``first_head_s`` (2 s); a kept-alive one when the next head has not
  arrived within ``idle_s``; either when its answer cannot be written within ``idle_s``.

The registry is rendered (prometheus-client's ``generate_latest``, or OpenMetrics when the
scraper asks for it; gzip when it accepts it) on one worker thread of this server's own: so
collectors never run on the event loop (the node's read the store), scrapes are rendered
one at a time, and the thread count stays the same however many connections there are.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
from concurrent.futures import ThreadPoolExecutor

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

log = logging.getLogger(__name__)

MAX_CONNECTIONS = 32
IDLE_S = 10.0
# A new connection's first request head must arrive within this (a scraper sends it at once).
FIRST_HEAD_S = 2.0
# Longest request head (request line and headers) read; a longer one gets 431.
HEAD_LIMIT = 8192
PATHS = ("/metrics", "/")
REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
}


class MetricsServer:
    """Serves one registry at http://HOST:PORT/metrics from the running event loop."""

    def __init__(
        self,
        registry: CollectorRegistry,
        listen: str,
        *,
        max_connections: int = MAX_CONNECTIONS,
        idle_s: float = IDLE_S,
        first_head_s: float = FIRST_HEAD_S,
    ) -> None:
        self._registry = registry
        self._listen = listen
        self._max_connections = max_connections
        self._idle_s = idle_s
        self._first_head_s = first_head_s
        self._server: asyncio.Server | None = None
        # Open connections, oldest first: whether each has a request in flight.
        self._open: dict[asyncio.StreamWriter, bool] = {}
        self._render = ThreadPoolExecutor(max_workers=1, thread_name_prefix="metrics")
        self.address = ""

    async def start(self) -> str:
        """Binds and serves /metrics; returns host:port. Raises OSError naming the address."""
        host, _, port = self._listen.rpartition(":")
        try:
            self._server = await asyncio.start_server(
                self._connection, host.strip("[]"), int(port), limit=HEAD_LIMIT
            )
        except (OSError, ValueError) as err:
            raise OSError(f"cannot serve metrics on {self._listen}: {err}") from err
        self.address = f"{host}:{self._server.sockets[0].getsockname()[1]}"
        log.info(
            "metrics_serving url=http://%s/metrics max_connections=%d idle_s=%g",
            self.address,
            self._max_connections,
            self._idle_s,
        )
        return self.address

    async def stop(self) -> None:
        """Stops listening and closes every connection. Safe to call twice."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for writer in list(self._open):
            writer.close()
        await server.wait_closed()
        self._render.shutdown(wait=False)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._open) >= self._max_connections and not self._evict_idle():
            writer.write(_response(503, b"too many connections\n", keep_alive=False))
            writer.close()
            return
        self._open[writer] = False
        try:
            wait_s = self._first_head_s
            while await self._answer(reader, writer, wait_s):
                wait_s = self._idle_s
        except (TimeoutError, OSError, asyncio.IncompleteReadError):
            pass  # the client went away, was too slow, or was evicted
        finally:
            self._open.pop(writer, None)
            writer.close()

    def _evict_idle(self) -> bool:
        """Closes the oldest connection with no request in flight; False if there is none."""
        oldest = next((writer for writer, busy in self._open.items() if not busy), None)
        if oldest is None:
            return False
        del self._open[oldest]
        oldest.close()  # its coroutine's read ends (IncompleteReadError) and it returns
        return True

    async def _answer(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, wait_s: float
    ) -> bool:
        """Reads one request (its head within wait_s) and answers it; False when the
        connection is to be closed."""
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), wait_s)
        except asyncio.LimitOverrunError:
            await self._send(writer, _response(431, b"request head too long\n", keep_alive=False))
            return False
        if writer not in self._open:
            return False  # evicted just as its request arrived
        self._open[writer] = True
        try:
            return await self._respond(head, writer)
        finally:
            if writer in self._open:
                self._open[writer] = False

    async def _respond(self, head: bytes, writer: asyncio.StreamWriter) -> bool:
        """Answers the request whose head is head; False when the connection is to close."""
        request, *lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        parts = request.split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            await self._send(writer, _response(400, b"bad request line\n", keep_alive=False))
            return False
        method, target, version = parts
        if headers.get("content-length", "0") != "0" or "transfer-encoding" in headers:
            await self._send(writer, _response(400, b"no request body\n", keep_alive=False))
            return False
        connection = headers.get("connection", "").lower()
        keep_alive = connection != "close" if version == "HTTP/1.1" else connection == "keep-alive"
        if method not in ("GET", "HEAD"):
            response = _response(405, b"GET or HEAD\n", keep_alive=keep_alive)
        elif target.split("?", 1)[0] not in PATHS:
            response = _response(404, b"metrics are at /metrics\n", keep_alive=keep_alive)
        else:
            loop = asyncio.get_running_loop()
            body, content_type, encoding = await loop.run_in_executor(
                self._render,
                _render,
                self._registry,
                headers.get("accept", ""),
                "gzip" in headers.get("accept-encoding", ""),
            )
            response = _response(
                200,
                body,
                keep_alive=keep_alive,
                content_type=content_type,
                encoding=encoding,
                head_only=method == "HEAD",
            )
        await self._send(writer, response)
        return keep_alive

    async def _send(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        if writer.is_closing():  # the scraper went away meanwhile (uvloop's write raises)
            raise ConnectionResetError("the scraper closed the connection")
        writer.write(data)
        await asyncio.wait_for(writer.drain(), self._idle_s)


def _render(registry: CollectorRegistry, accept: str, gzipped: bool) -> tuple[bytes, str, str]:
    """The registry's exposition in the format accept asks for: body, type, encoding."""
    encoder, content_type = choose_encoder(accept)
    body = encoder(registry)
    if gzipped:
        return gzip.compress(body, compresslevel=6), content_type, "gzip"
    return body, content_type, ""


def _response(
    status: int,
    body: bytes,
    *,
    keep_alive: bool,
    content_type: str = "text/plain; charset=utf-8",
    encoding: str = "",
    head_only: bool = False,
) -> bytes:
    lines = [
        f"HTTP/1.1 {status} {REASONS[status]}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        f"Connection: {'keep-alive' if keep_alive else 'close'}",
    ]
    if encoding:
        lines.append(f"Content-Encoding: {encoding}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (b"" if head_only else body)
