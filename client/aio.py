"""``AsyncClient``: the asyncio shell of the SDK over grpc.aio (mirror of ``Client``)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from functools import partial
from types import TracebackType
from typing import Any

import grpc
import grpc.aio
from google.protobuf.message import Message
from shardkv.common import requestid
from shardkv.v1 import admin_pb2_grpc, kv_pb2_grpc

from . import coalesce, core
from .admin import AdminCall, AsyncAdminMethods, Reply
from .base import MAX_BATCH, MAX_IN_FLIGHT, Attempts, ClientBase, check_timeout
from .coalesce import AsyncBatcher, Awaited, Waiting
from .core import Consistency, Found, KeyLike, Mutation, Record, ScanPlan, ValueLike
from .errors import ClientClosed, ShardKVError
from .frames import KVFrames
from .retry import DEFAULT_RETRY, RetryPolicy
from .transport import TLSConfig, aio_channel


class AsyncClient(ClientBase, AsyncAdminMethods):
    """The asyncio client; same methods and semantics as ``Client`` (see its docstring),
    each a coroutine, and ``scan`` and ``backup`` async iterators.

    It may be created anywhere, but is used from one event loop: its channels open on
    its first call, inside that loop (grpc.aio binds a channel to a loop). Concurrent
    ``get``/``put``/``delete`` calls from many tasks are coalesced into batch RPCs (see
    ``shardkv.client.coalesce``).
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
        interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
        frames: bool = True,
    ) -> None:
        """frames: send KV calls as frames on the routers' exchange ports where they
        advertise one (shardkv.client.frames); False, or any interceptors, keeps every
        call on gRPC (e.g. behind a gRPC proxy)."""
        super().__init__(
            targets,
            timeout=timeout,
            consistency=consistency,
            retry=retry,
            tls=tls,
            bearer_token=bearer_token,
        )
        self._credentials = tls.credentials() if tls else None
        self._interceptors = tuple(interceptors)
        use_frames = frames and not self._interceptors
        self._frames = KVFrames(tls, self._metadata or ()) if use_frames else None
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._kv: dict[str, Any] = {}
        self._admin: dict[str, Any] = {}
        self._getters: dict[Consistency | None, AsyncBatcher[bytes, Found | None]] = {}
        self._writers: dict[Consistency | None, AsyncBatcher[Mutation, int]] = {}
        # Set by close(), waking calls asleep in a back-off (bound to the loop of its use).
        self._woken = asyncio.Event()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Closes every channel; calls still running, and any made later, fail with
        ``ClientClosed`` (a ``Cancelled``), those asleep in a back-off at once."""
        self._closing.set()
        self._woken.set()
        closed = ClientClosed("the client was closed")
        for getter in self._getters.values():
            getter.close(closed)
        for writer in self._writers.values():
            writer.close(closed)
        channels = list(self._channels.values())
        if self._frames is not None:
            await self._frames.close()
        await asyncio.gather(*(channel.close() for channel in channels))

    @property
    def frames_answered(self) -> int:
        """KV calls the routers answered as frames (shardkv.client.frames) so far."""
        return 0 if self._frames is None else self._frames.answered

    def _connect(self) -> None:
        """Opens one channel per router, in the running loop (see the class docstring)."""
        for address in self._targets.addresses:
            channel = aio_channel(address, self._credentials, self._interceptors)
            self._channels[address] = channel
            self._kv[address] = kv_pb2_grpc.KVStub(channel)  # type: ignore[no-untyped-call]
            self._admin[address] = admin_pb2_grpc.AdminStub(channel)  # type: ignore[no-untyped-call]

    async def get(
        self, key: KeyLike, *, consistency: Consistency | None = None, timeout: float | None = None
    ) -> bytes | None:
        found = await self._found(core.check_key(key), consistency, timeout)
        return None if found is None else found[0]

    async def get_record(
        self, key: KeyLike, *, consistency: Consistency | None = None, timeout: float | None = None
    ) -> Record | None:
        raw = core.check_key(key)
        found = await self._found(raw, consistency, timeout)
        return None if found is None else Record(raw, *found)

    async def _found(
        self, key: bytes, consistency: Consistency | None, timeout: float | None
    ) -> Found | None:
        return await self._getter(self._level(consistency)).submit(key, self._deadline(timeout))

    async def put(
        self,
        key: KeyLike,
        value: ValueLike,
        *,
        consistency: Consistency | None = None,
        timeout: float | None = None,
    ) -> int:
        mutation = core.put_mutation(key, value)
        return await self._writer(self._level(consistency)).submit(
            mutation, self._deadline(timeout)
        )

    async def delete(
        self, key: KeyLike, *, consistency: Consistency | None = None, timeout: float | None = None
    ) -> int:
        mutation = core.delete_mutation(key)
        return await self._writer(self._level(consistency)).submit(
            mutation, self._deadline(timeout)
        )

    async def get_many(
        self,
        keys: Iterable[KeyLike],
        *,
        consistency: Consistency | None = None,
        timeout: float | None = None,
    ) -> dict[bytes, bytes]:
        wanted = core.check_keys(keys)
        level, deadline = self._level(consistency), self._deadline(timeout)
        chunks = list(core.chunks(wanted))
        pages = await asyncio.gather(
            *(self._batch_get(chunk, deadline, level=level) for chunk in chunks),
            return_exceptions=True,
        )
        return core.found_values(wanted, (o for _, o in coalesce.paired_outcomes(chunks, pages)))

    async def put_many(
        self,
        mapping: Mapping[KeyLike, ValueLike],
        *,
        consistency: Consistency | None = None,
        timeout: float | None = None,
    ) -> dict[bytes, int]:
        mutations = core.put_mutations(mapping)
        level, deadline = self._level(consistency), self._deadline(timeout)
        chunks = core.write_chunks(mutations)
        pages = await asyncio.gather(
            *(self._batch_write(c, deadline, level=level) for c in chunks),
            return_exceptions=True,
        )
        keys = [[key for key, _, _ in chunk] for chunk in chunks]
        return core.written_versions(coalesce.paired_outcomes(keys, pages))

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
    ) -> AsyncIterator[Record]:
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

    async def _pages(self, plan: ScanPlan, timeout: float | None) -> AsyncIterator[Record]:
        page_token, returned = b"", 0
        while not plan.done(returned):
            request = plan.request(page_token, returned)
            reply = await self._invoke("Scan", request, Attempts(self._deadline(timeout)))
            for record in core.page_records(reply)[: request.limit]:
                yield record
                returned += 1
            page_token = reply.next_page_token
            if not page_token:
                return

    def _getter(self, level: Consistency | None) -> AsyncBatcher[bytes, Found | None]:
        batcher = self._getters.get(level)
        if batcher is None:
            batcher = AsyncBatcher(
                partial(self._batch_get, level=level),
                key_of=bytes,
                max_batch=MAX_BATCH,
                max_in_flight=MAX_IN_FLIGHT,
            )
            self._getters[level] = batcher
        return batcher

    def _writer(self, level: Consistency | None) -> AsyncBatcher[Mutation, int]:
        batcher = self._writers.get(level)
        if batcher is None:
            batcher = AsyncBatcher(
                partial(self._batch_write, level=level),
                key_of=core.mutation_key,
                max_batch=MAX_BATCH,
                max_in_flight=MAX_IN_FLIGHT,
                size_of=core.mutation_bytes,
                max_bytes=core.MAX_REQUEST_BYTES,
            )
            self._writers[level] = batcher
        return batcher

    async def _batch_get(
        self,
        keys: list[bytes],
        deadline: float,
        waiting: Waiting | None = None,
        *,
        level: Consistency | None,
    ) -> list[Found | ShardKVError | None]:
        """One BatchGet; a retry asks only for the keys still awaited (coalesce.Awaited).
        Keys whose answer would not fit in one message are asked again in smaller calls
        (coalesce.answer_too_large, Awaited.parts), concurrently."""
        batch = Awaited(keys, waiting, key_of=bytes)
        build = partial(core.batch_get_request, level=level)
        outcomes: list[Found | ShardKVError | None]
        try:
            attempts = Attempts(deadline)
            reply = await self._invoke(
                "BatchGet", build(keys), attempts, again=batch.retry_with(build)
            )
            outcomes = batch.outcomes(core.get_outcomes(batch.carried(), reply, attempts.tried[-1]))
        except ShardKVError as err:
            if len(keys) == 1 or not coalesce.answer_too_large(err):
                raise
            outcomes = [err] * len(keys)
        parts = batch.parts(coalesce.too_large_items(outcomes)) if len(keys) > 1 else []
        answers = await asyncio.gather(
            *(self._batch_get(part, deadline, wait, level=level) for _, part, wait in parts)
        )
        for (indexes, _, _), answer in zip(parts, answers, strict=True):
            for index, outcome in zip(indexes, answer, strict=True):
                outcomes[index] = outcome
        return outcomes

    async def _batch_write(
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
        reply = await self._invoke(
            "BatchWrite", build(mutations), attempts, again=batch.retry_with(build)
        )
        return batch.outcomes(core.write_outcomes(batch.carried(), reply, attempts.tried[-1]))

    async def _admin_call(self, call: AdminCall[Reply], timeout: float | None) -> Reply:
        attempts = Attempts(self._deadline(timeout))
        return call.result(await self._invoke(call.method, call.request, attempts, admin=call))

    async def _admin_stream(
        self, call: AdminCall[Reply], timeout: float | None
    ) -> AsyncIterator[Reply]:
        """A server stream, retried only until its first message (see ``RetryPolicy``)."""
        self._check_open(call.method)
        if not self._channels:
            self._connect()
        attempts = Attempts(self._stream_deadline(timeout))
        metadata = self._call_metadata()
        while True:
            self._check_open(call.method)
            target, remaining = self._next_target(attempts, call.method, in_order=True)
            stream = getattr(self._admin[target], call.method)(
                call.request, timeout=remaining, metadata=metadata
            )
            received = False
            try:
                async for message in stream:
                    received = True
                    yield call.result(message)
            except (grpc.RpcError, grpc.aio.UsageError, asyncio.CancelledError) as exc:
                err = self._closed_meanwhile(call.method, exc)
                error, wait = self._after_failure(attempts, target, err)
                if received or wait is None:
                    raise error from error.__cause__
                await self._back_off(call.method, wait, err)
            else:
                self._succeeded(target)
                return
            finally:
                stream.cancel()  # the caller stopped early: end the RPC, not just the loop

    async def _back_off(self, method: str, wait: float, cause: BaseException) -> None:
        """Sleeps wait seconds before a retry, or until close(): then ClientClosed."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._woken.wait(), wait)
        self._check_open(method, cause)

    def _closed_meanwhile(self, method: str, err: BaseException) -> grpc.RpcError:
        """ClientClosed when close() ended the attempt that failed with err (CANCELLED, a
        closed channel's UsageError, grpc.aio's CancelledError in the sending task); else
        err, raised unless it is a grpc.RpcError. The caller's own cancellation is raised."""
        task = asyncio.current_task()
        cancelled = isinstance(err, asyncio.CancelledError)
        if cancelled and task is not None and task.cancelling():
            raise err
        self._check_open(method, err)
        if not isinstance(err, grpc.RpcError):
            raise err
        return err

    async def _invoke(
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
        self._check_open(method)
        if not self._channels:
            self._connect()
        stubs: Mapping[str, Any] = self._kv if admin is None else self._admin
        repeatable = admin is None or admin.repeatable
        metadata = self._call_metadata()
        while True:
            self._check_open(method)
            target, remaining = self._next_target(attempts, method, in_order=admin is not None)
            try:
                reply = None
                if self._frames is not None and admin is None:
                    rid = dict(metadata)[requestid.HEADER]
                    timeout = self._timeout if remaining is None else remaining
                    reply = await self._frames.call(
                        stubs[target], target, method, request, timeout, rid
                    )
                if reply is None:
                    if remaining is not None:  # the frame may have spent some of it
                        remaining = max(0.0, attempts.remaining())
                    reply = await getattr(stubs[target], method)(
                        request, timeout=remaining, metadata=metadata
                    )
            except (grpc.RpcError, grpc.aio.UsageError, asyncio.CancelledError) as exc:
                err = self._closed_meanwhile(method, exc)
                error, wait = self._after_failure(attempts, target, err, repeatable=repeatable)
                if wait is None:
                    raise error from error.__cause__
                await self._back_off(method, wait, err)
                retry = request if again is None else again()
                if retry is None:
                    raise error from error.__cause__
                request = retry
            else:
                self._succeeded(target)
                return reply
