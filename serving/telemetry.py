"""What routers and nodes share for being watched: the request interceptor (request ids,
per-method counts and latencies, request log lines) and the flags of the Prometheus
endpoint (served by ``shardkv.serving.metrics_http``).

Every call to a ``shardkv.v1`` service passes the interceptor once: it takes the call's
request id (``shardkv.common.requestid``), makes it the running task's, and on the way out
increments one counter and observes one histogram, both children looked up once per
(method, code) and cached. Health checks and reflection pass untouched. A frame on an
exchange port (shardkv.serving.exchange_server) is observed through ``observe`` as the
call it replaces.

Request log lines are key=value: ``event=request method=/shardkv.v1.KV/Put code=OK
duration_ms=1.9 request_id=… peer=…`` (and ``detail=`` for a failure). A request that
failed or took at least ``slow_request_s`` is logged at INFO, any other at DEBUG, or at
INFO too with ``log_requests``. Calls that gRPC refuses before any handler runs
(``maximum_concurrent_rpcs``) are neither counted nor logged here.

Metrics are served only when ``metrics_listen`` is set (``--metrics-listen``), at
``/metrics`` by an asyncio HTTP server on the server's own event loop (no thread per
connection).
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeAlias

import grpc
import grpc.aio
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import HistogramMetricFamily
from shardkv.common import requestid
from shardkv.serving.tally import SizeHistogram

log = logging.getLogger(__name__)

Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"

# Methods whose calls are counted and logged; health and reflection are left alone.
SERVICE_PREFIX = "/shardkv.v1."
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


@dataclass(frozen=True)
class Observability:
    """How a server exposes itself: the metrics endpoint and request logging."""

    # host:port of the Prometheus endpoint (port 0: any free port); None serves none.
    metrics_listen: str | None = None
    # Log every request at INFO; otherwise only failed and slow ones (others at DEBUG).
    log_requests: bool = False
    # A request taking at least this long is logged at INFO.
    slow_request_s: float = 1.0


DEFAULT_OBSERVABILITY = Observability()


def add_flags(parser: argparse.ArgumentParser) -> None:
    """The flags of Observability, the same for shardd and the router."""
    parser.add_argument(
        "--metrics-listen",
        type=_listen_address,
        metavar="HOST:PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics (default: off)",
    )
    parser.add_argument(
        "--log-requests",
        action="store_true",
        help="log every request at INFO (default: only failed and slow ones; others at DEBUG)",
    )
    parser.add_argument(
        "--slow-request-ms",
        type=float,
        default=DEFAULT_OBSERVABILITY.slow_request_s * 1000,
        help="log requests taking at least this long at INFO (default 1000)",
    )


def from_flags(args: argparse.Namespace) -> Observability:
    return Observability(
        metrics_listen=args.metrics_listen,
        log_requests=args.log_requests,
        slow_request_s=max(0.0, args.slow_request_ms / 1000),
    )


def _listen_address(text: str) -> str:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"not a host:port address: {text!r}")
    return text


class RequestInterceptor(grpc.aio.ServerInterceptor):
    """Request ids, counts, latencies and log lines for every shardkv.v1 call."""

    def __init__(
        self, registry: CollectorRegistry, config: Observability, *, make_ids: bool
    ) -> None:
        """make_ids: give calls that carry no request id a fresh one (routers do, so that
        what they forward to nodes always has one)."""
        self._config = config
        self._make_ids = make_ids
        self._requests = Counter(
            "shardkv_grpc_requests",
            "Calls answered, by service, method and status code.",
            ["service", "method", "code"],
            registry=registry,
        )
        self._latency = Histogram(
            "shardkv_grpc_request_duration_seconds",
            "Time from a call's arrival to its answer, by service and method.",
            ["service", "method"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self._counters: dict[tuple[str, str], Any] = {}
        self._timers: dict[str, Any] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = await continuation(details)
        method: str = details.method
        if handler is None or not method.startswith(SERVICE_PREFIX):
            return handler
        rid = requestid.from_metadata(details.invocation_metadata)
        if rid is None and self._make_ids:
            rid = requestid.new_id()
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(handler.unary_unary, method, rid),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._streaming(handler.unary_stream, method, rid),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler

    def _unary(self, behavior: Any, method: str, rid: str | None) -> Any:
        async def unary(request: Any, context: Context) -> Any:
            started = time.perf_counter()
            peer = context.peer()
            previous = requestid.current.set(rid)
            try:
                response = await behavior(request, context)
            except BaseException as exc:
                self.observe(method, rid, started, _code_of(exc, context), _details(context), peer)
                raise
            finally:
                requestid.current.reset(previous)
            code = context.code() or grpc.StatusCode.OK
            self.observe(method, rid, started, code, _details(context), peer)
            return response

        return unary

    def _streaming(self, behavior: Any, method: str, rid: str | None) -> Any:
        if inspect.iscoroutinefunction(behavior):  # writes with context.write()
            return self._unary(behavior, method, rid)

        async def streaming(request: Any, context: Context) -> AsyncIterator[Any]:
            # The peer is read while the call is alive: asking a cancelled call for it
            # crashes grpcio's core. The request id is set and never reset: a cancelled
            # generator is closed from another Context, where resetting it fails;
            # the variable belongs to this call's own task anyway.
            started = time.perf_counter()
            peer = context.peer()
            requestid.current.set(rid)
            try:
                async for item in behavior(request, context):
                    yield item
            except BaseException as exc:
                self.observe(method, rid, started, _code_of(exc, context), _details(context), peer)
                raise
            code = context.code() or grpc.StatusCode.OK
            self.observe(method, rid, started, code, _details(context), peer)

        return streaming

    def observe(
        self,
        method: str,
        rid: str | None,
        started: float,
        code: grpc.StatusCode,
        details: str | None,
        peer: str,
    ) -> None:
        """Counts, times (from started, a perf_counter) and logs one answered call."""
        elapsed = time.perf_counter() - started
        counter = self._counters.get((method, code.name))
        if counter is None:
            service, _, name = method[1:].rpartition("/")
            counter = self._requests.labels(service, name, code.name)
            self._counters[(method, code.name)] = counter
        counter.inc()
        timer = self._timers.get(method)
        if timer is None:
            service, _, name = method[1:].rpartition("/")
            timer = self._latency.labels(service, name)
            self._timers[method] = timer
        timer.observe(elapsed)
        failed = code is not grpc.StatusCode.OK
        level = (
            logging.INFO
            if failed or self._config.log_requests or elapsed >= self._config.slow_request_s
            else logging.DEBUG
        )
        if not log.isEnabledFor(level):
            return
        detail = f" detail={details!r}" if failed and details else ""
        log.log(
            level,
            "request method=%s code=%s duration_ms=%.1f request_id=%s peer=%s%s",
            method,
            code.name,
            elapsed * 1000,
            rid or "-",
            peer,
            detail,
        )


def _details(context: Context) -> str | None:
    details: str | None = context.details()
    return details


def _code_of(exc: BaseException, context: Context) -> grpc.StatusCode:
    """The status a call that raised exc ends with."""
    if isinstance(exc, (asyncio.CancelledError, GeneratorExit)):
        return grpc.StatusCode.CANCELLED
    code = context.code()
    if isinstance(exc, grpc.aio.AbortError) and isinstance(code, grpc.StatusCode):
        return code
    return grpc.StatusCode.UNKNOWN


def size_histogram(
    name: str,
    documentation: str,
    labels: list[str],
    series: Iterable[tuple[list[str], SizeHistogram]],
) -> HistogramMetricFamily:
    """A Prometheus histogram family from SizeHistogram tallies, one series per label set."""
    family = HistogramMetricFamily(name, documentation, labels=labels)
    for values, histogram in series:
        family.add_metric(values, histogram.cumulative(), sum_value=histogram.total)
    return family
