"""``Client``: the blocking shell of the SDK over sync gRPC (mirror of ``AsyncClient``)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from functools import partial
from types import TracebackType
from typing import Any

import grpc
from google.protobuf.message import Message
from shardkv.v1 import admin_pb2_grpc, kv_pb2_grpc

from . import coalesce, core
from .admin import AdminCall, AdminMethods, Reply
from .base import MAX_BATCH, MAX_IN_FLIGHT, Attempts, ClientBase, check_timeout
from .coalesce import Awaited, Waiting
from .coalesce_threads import ThreadBatcher
from .core import Consistency, Found, KeyLike, Mutation, Record, ScanPlan, ValueLike
from .errors import ShardKVError
from .retry import DEFAULT_RETRY, RetryPolicy
from .transport import TLSConfig, sync_channel


class Client(ClientBase, AdminMethods):
    """A shardkv client: talks to one or more routers (or a single shardd) over gRPC.

    ``targets`` is "host:port", "host:port,host:port" or a list: calls are spread over
    the addresses round robin and fail over to the next when one is unreachable.

    Options: ``timeout`` (seconds) is each call's default; ``consistency`` the default
    level (None = the cluster's R and W); ``retry`` when and how often to repeat a call
    after UNAVAILABLE (see ``RetryPolicy``: reads and writes are both safe to repeat);
    ``tls`` turns on TLS, mutual when it has a client certificate; ``bearer_token`` is sent as
    ``authorization: Bearer <bearer_token>`` with every call; ``interceptors`` wrap every channel.

    Every method takes keyword ``consistency=`` and ``timeout=`` overriding the defaults.
    Keys and values are bytes, or str encoded as UTF-8. They are checked against the
    server's limits before sending (``InvalidArgument`` without a round trip).

    Single-key calls (``get``, ``get_record``, ``put``, ``delete``) always travel as
    ``BatchGet``/``BatchWrite`` items, and those made concurrently by threads sharing this
    client travel together in one RPC (see ``shardkv.client.coalesce``); each caller still
    gets its own result, error and timeout. ``get_many`` and ``put_many`` split what they
    get into batches of the server's limit. ``scan`` pages transparently; its timeout
    applies to each page.

    Errors are ``ShardKVError`` subclasses; ``DeadlineExceeded`` means the outcome is
    unknown (a write may or may not have happened). Use as a context manager or call
    ``close()``.

    Against routers it also makes the Admin calls (``topology``, ``health``, ``add_node``,
    ``remove_node``, ``moves``, ``repair``, ``repair_status``, ``status``, ``backup``,
    ``restore``: see ``shardkv.client.admin.AdminMethods``).
    """

    def __init__(
        self,
        targets: str | Sequence[str],
        *,
        timeout: float = 5.0,
        consistency: Consistency | None = None,
        retry: RetryPolicy = DEFAULT_RETRY,
        tls: TLSConfig | None = None,
        bearer_token: str | None = None,
        interceptors: Sequence[grpc.UnaryUnaryClientInterceptor] = (),
    ) -> None:
        super().__init__(
            targets,
            timeout=timeout,
            consistency=consistency,
            retry=retry,
            tls=tls,
            bearer_token=bearer_token,
        )
        credentials = tls.credentials() if tls else None
        self._channels: dict[str, grpc.Channel] = {}
        for address in self._targets.addresses:
            channel = sync_channel(address, credentials)
            self._channels[address] = grpc.intercept_channel(channel, *interceptors)
        self._kv: dict[str, Any] = {}
        self._admin: dict[str, Any] = {}
        for address, channel in self._channels.items():
            self._kv[address] = kv_pb2_grpc.KVStub(channel)  # type: ignore[no-untyped-call]
            self._admin[address] = admin_pb2_grpc.AdminStub(channel)  # type: ignore[no-untyped-call]
        self._getters: dict[Consistency | None, ThreadBatcher[bytes, Found | None]] = {}
        self._writers: dict[Consistency | None, ThreadBatcher[Mutation, int]] = {}
        self._batchers_lock = threading.Lock()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Closes every channel; calls still running, and any made later, fail with
        ``ClientClosed`` (a ``Cancelled``), those asleep in a back-off at once."""
        self._closing.set()
        for channel in self._channels.values():
            channel.close()
        with self._batchers_lock:
            for getter in self._getters.values():
                getter.close()
            for writer in self._writers.values():
                writer.close()

    def get(
        self, key: KeyLike, *, consistency: Consistency | None = None, timeout: float | None = None
    ) -> bytes | None:
        """The value of key, or None when it was never written or was deleted."""
        found = self._found(core.check_key(key), consistency, timeout)
        return None if found is None else found[0]

    def get_record(
        self, key: KeyLike, *, consistency: Consistency | None = None, timeout: float | None = None
    ) -> Record | None:
        """The record of key with its version, or None when it is missing."""
        raw = core.check_key(key)
        found = self._found(raw, consistency, timeout)
        return None if found is None else Record(raw, *found)

    def _found(
        self, key: bytes, consistency: Consistency | None, timeout: float | None
    ) -> Found | None:
        return self._getter(self._level(consistency)).submit(key, self._deadline(timeout))

    def put(
        self,
        key: KeyLike,
        value: ValueLike,
        *,
        consistency: Consistency | None = None,
        timeout: float | None = None,
    ) -> int:
        """Stores value under key; returns the version assigned to the write."""
        mutation = core.put_mutation(key, value)
        return self._writer(self._level(consistency)).submit(mutation, self._deadline(timeout))

    def delete(
        self, key: KeyLike, *, consistency: Consistency | None = None, timeout: float | None = None
    ) -> int:
        """Deletes key (missing keys too); returns the version of the tombstone."""
        mutation = core.delete_mutation(key)
        return self._writer(self._level(consistency)).submit(mutation, self._deadline(timeout))

    def get_many(
        self,
        keys: Iterable[KeyLike],
        *,
        consistency: Consistency | None = None,
        timeout: float | None = None,
    ) -> dict[bytes, bytes]:
        """The values of the keys that exist; missing keys are absent from the answer."""
        wanted = core.check_keys(keys)
        level, deadline = self._level(consistency), self._deadline(timeout)
        outcomes: list[Found | ShardKVError | None] = []
        for chunk in core.chunks(wanted):
            page: list[Found | ShardKVError | None] | ShardKVError
            try:
                page = self._batch_get(chunk, deadline, level=level)
            except ShardKVError as err:
                page = err
            outcomes.extend(coalesce.batch_outcomes(chunk, page))
        return core.found_values(wanted, outcomes)

    def put_many(
        self,
        mapping: Mapping[KeyLike, ValueLike],
        *,
        consistency: Consistency | None = None,
        timeout: float | None = None,
    ) -> dict[bytes, int]:
        """Stores every pair; returns the version per key.

        When some items fail, or some batches fail whole, every batch is still sent and
        then one error is raised, of the class of the first failure, whose ``keys`` names
        every key not written (or, for DeadlineExceeded and Unavailable, whose outcome is
        unknown); the keys it does not name were written.
        """
        mutations = core.put_mutations(mapping)
        level, deadline = self._level(consistency), self._deadline(timeout)
        outcomes: list[tuple[bytes, int | ShardKVError]] = []
        for chunk in core.write_chunks(mutations):
            keys = [key for key, _, _ in chunk]
            page: list[int | ShardKVError] | ShardKVError
            try:
                page = self._batch_write(chunk, deadline, level=level)
            except ShardKVError as err:
                page = err
            outcomes.extend(zip(keys, coalesce.batch_outcomes(keys, page), strict=True))
        return core.written_versions(outcomes)

    def scan(
        self,
        *,
        prefix: KeyLike = b"",
        start: KeyLike = b"",
        end: KeyLike = b"",
        page_size: int = 0,
        limit: int | None = None,
        consistency: Consistency | None = None,
        timeout: float | None = None,
    ) -> Iterator[Record]:
        """Live records with the prefix, or in [start, end), in key order.

        Fetches ``page_size`` records per call (0 = the server's default) as the iterator
        advances, stopping after ``limit`` records when given. Arguments are checked at
        once; ``timeout`` applies to each page.
        """
        plan = core.scan_plan(
            prefix=prefix,
            start=start,
            end=end,
            page_size=page_size,
            limit=limit,
            level=self._level(consistency),
        )
        if timeout is not None:
            check_timeout(timeout)  # now, as every call does; each page gets it afresh
        return self._pages(plan, timeout)

    def _pages(self, plan: ScanPlan, timeout: float | None) -> Iterator[Record]:
        page_token, returned = b"", 0
        while not plan.done(returned):
            request = plan.request(page_token, returned)
            reply = self._invoke("Scan", request, Attempts(self._deadline(timeout)))
            for record in core.page_records(reply)[: request.limit]:
                yield record
                returned += 1
            page_token = reply.next_page_token
            if not page_token:
                return

    def _getter(self, level: Consistency | None) -> ThreadBatcher[bytes, Found | None]:
        batcher = self._getters.get(level)
        if batcher is not None:
            return batcher
        with self._batchers_lock:  # only the first call per level gets here
            batcher = self._getters.get(level)
            if batcher is None:
                batcher = ThreadBatcher(
                    partial(self._batch_get, level=level),
                    key_of=bytes,
                    max_batch=MAX_BATCH,
                    max_in_flight=MAX_IN_FLIGHT,
                )
                self._getters[level] = batcher
            return batcher

    def _writer(self, level: Consistency | None) -> ThreadBatcher[Mutation, int]:
        batcher = self._writers.get(level)
        if batcher is not None:
            return batcher
        with self._batchers_lock:
            batcher = self._writers.get(level)
            if batcher is None:
                batcher = ThreadBatcher(
                    partial(self._batch_write, level=level),
                    key_of=core.mutation_key,
                    max_batch=MAX_BATCH,
                    max_in_flight=MAX_IN_FLIGHT,
                    size_of=core.mutation_bytes,
                    max_bytes=core.MAX_REQUEST_BYTES,
                )
                self._writers[level] = batcher
            return batcher

    def _batch_get(
        self,
        keys: list[bytes],
        deadline: float,
        waiting: Waiting | None = None,
        *,
        level: Consistency | None,
    ) -> list[Found | ShardKVError | None]:
        """One BatchGet; a retry asks only for the keys still awaited (coalesce.Awaited).
        Keys whose answer would not fit in one message are asked again in smaller calls
        (coalesce.answer_too_large, Awaited.parts)."""
        batch = Awaited(keys, waiting, key_of=bytes)
        build = partial(core.batch_get_request, level=level)
        outcomes: list[Found | ShardKVError | None]
        try:
            attempts = Attempts(deadline)
            reply = self._invoke("BatchGet", build(keys), attempts, again=batch.retry_with(build))
            outcomes = batch.outcomes(core.get_outcomes(batch.carried(), reply, attempts.tried[-1]))
        except ShardKVError as err:
            if len(keys) == 1 or not coalesce.answer_too_large(err):
                raise
            outcomes = [err] * len(keys)
        parts = batch.parts(coalesce.too_large_items(outcomes)) if len(keys) > 1 else []
        for indexes, part, wait in parts:
            answer = self._batch_get(part, deadline, wait, level=level)
            for index, outcome in zip(indexes, answer, strict=True):
                outcomes[index] = outcome
        return outcomes

    def _batch_write(
        self,
        mutations: list[Mutation],
        deadline: float,
        waiting: Waiting | None = None,
        *,
        level: Consistency | None,
    ) -> list[int | ShardKVError]:
        """One BatchWrite; a retry carries only the mutations whose callers still wait, so
        a write whose caller got DeadlineExceeded is never sent again (coalesce.Awaited)."""
        batch = Awaited(mutations, waiting, key_of=core.mutation_key)
        build = partial(core.batch_write_request, level=level)
        attempts = Attempts(deadline, write=True)
        reply = self._invoke(
            "BatchWrite", build(mutations), attempts, again=batch.retry_with(build)
        )
        return batch.outcomes(core.write_outcomes(batch.carried(), reply, attempts.tried[-1]))

    def _admin_call(self, call: AdminCall[Reply], timeout: float | None) -> Reply:
        attempts = Attempts(self._deadline(timeout))
        return call.result(self._invoke(call.method, call.request, attempts, admin=call))

    def _admin_stream(self, call: AdminCall[Reply], timeout: float | None) -> Iterator[Reply]:
        """A server stream, retried only until its first message (see ``RetryPolicy``)."""
        attempts = Attempts(self._stream_deadline(timeout))
        metadata = self._call_metadata()
        while True:
            self._check_open(call.method)
            target, remaining = self._next_target(attempts, call.method, in_order=True)
            try:
                stream = getattr(self._admin[target], call.method)(
                    call.request, timeout=remaining, metadata=metadata
                )
            except ValueError as err:  # grpc: "Cannot invoke RPC on closed channel!"
                self._check_open(call.method, err)
                raise err
            received = False
            try:
                for message in stream:
                    received = True
                    yield call.result(message)
            except grpc.RpcError as err:
                self._check_open(call.method, err)
                error, wait = self._after_failure(attempts, target, err)
                if received or wait is None:
                    raise error from error.__cause__
                if self._closing.wait(wait):  # close() ends the back-off
                    self._check_open(call.method, err)
            else:
                self._succeeded(target)
                return
            finally:
                stream.cancel()  # the caller stopped early: end the RPC, not just the loop

    def _invoke(
        self,
        method: str,
        request: Message,
        attempts: Attempts,
        *,
        admin: AdminCall[Any] | None = None,
        again: Callable[[], Message | None] | None = None,
    ) -> Any:
        """One RPC with retries and fail-over (see ``RetryPolicy``); Admin calls go to the
        routers in order and are retried as the call allows (see ``shardkv.client.admin``).
        again, when given, makes each retry's request after the back-off; None from it
        ends the call with the last error (nobody waits for a retry)."""
        stubs: Mapping[str, Any] = self._kv if admin is None else self._admin
        repeatable = admin is None or admin.repeatable
        metadata = self._call_metadata()
        while True:
            self._check_open(method)
            target, remaining = self._next_target(attempts, method, in_order=admin is not None)
            try:
                reply = getattr(stubs[target], method)(
                    request, timeout=remaining, metadata=metadata
                )
            except (grpc.RpcError, ValueError) as err:
                # Closed meanwhile: CANCELLED, or ValueError for a closed channel.
                self._check_open(method, err)
                if not isinstance(err, grpc.RpcError):
                    raise
                error, wait = self._after_failure(attempts, target, err, repeatable=repeatable)
                if wait is None:
                    raise error from error.__cause__
                if self._closing.wait(wait):  # close() ends the back-off
                    self._check_open(method, err)
                retry = request if again is None else again()
                if retry is None:
                    raise error from error.__cause__
                request = retry
            else:
                self._succeeded(target)
                return reply
