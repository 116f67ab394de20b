"""The router's exchange port: KV calls as frames, for the asyncio SDK (exchange.proto).

Raw TCP against a real router shows what the port admits (the client token, nothing
else), what it serves (KV's unary methods, never Admin's), and that bad input is answered
and costs the router nothing; the SDK shows that it uses the port, sees the same outcomes
as on gRPC (values, versions, item errors, refusals), and falls back to gRPC when the
advertised port cannot be reached.
"""

from __future__ import annotations

import asyncio
import signal
import time
import urllib.request
from collections.abc import Callable, Iterator

import exchange_wire as wire
import grpc
import pytest
import uvloop
from harness import Cluster, free_port, router_proc, start_cluster
from shardkv.client import AsyncClient, InvalidArgument
from shardkv.v1 import exchange_pb2, kv_pb2, kv_pb2_grpc

TOKEN = "router-exchange-tok-51c2"
BATCH_WRITE = "/shardkv.v1.KV/BatchWrite"
BATCH_GET = "/shardkv.v1.KV/BatchGet"


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Cluster]:
    """One cluster for the module (a cluster takes about 2 s to start): each test leaves
    it as it found it, the router it stops last of all."""
    tmp_path = tmp_path_factory.mktemp("router-exchange")
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    metrics = ["--metrics-listen", f"127.0.0.1:{free_port()}"]
    running = start_cluster(tmp_path, router_extra=["--token-file", str(token_file), *metrics])
    failures = request.session.testsfailed
    try:
        yield running
    finally:
        running.stop()
        if request.session.testsfailed != failures:
            print(running.logs())


def _exchange_port(address: str) -> int:
    with grpc.insecure_channel(address) as channel:
        kv = kv_pb2_grpc.KVStub(channel)  # type: ignore[no-untyped-call]
        metadata = (("authorization", f"Bearer {TOKEN}"),)
        reply = kv.ExchangePort(kv_pb2.ExchangePortRequest(), metadata=metadata, timeout=5)
    assert reply.port, reply
    return int(reply.port)


def _get(address: str, key: bytes) -> kv_pb2.GetResponse:
    with grpc.insecure_channel(address) as channel:
        kv = kv_pb2_grpc.KVStub(channel)  # type: ignore[no-untyped-call]
        metadata = (("authorization", f"Bearer {TOKEN}"),)
        return kv.Get(kv_pb2.GetRequest(key=key), metadata=metadata, timeout=5)  # type: ignore[no-any-return]


async def _eventually(condition: Callable[[], bool], timeout_s: float = 3.0) -> bool:
    """Whether condition holds within timeout_s (a reply's bytes may still be unacked,
    when ss shows the retransmit timer in place of keepalive's)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


def _write(frame_id: int, key: bytes) -> bytes:
    mutation = kv_pb2.Mutation(key=key, value=b"v-" + key)
    return wire.frame(frame_id, BATCH_WRITE, kv_pb2.BatchWriteRequest(mutations=[mutation]))


@pytest.mark.timeout(90)
def test_the_router_exchange_port_admits_the_client_token_and_serves_kv_only(
    cluster: Cluster,
) -> None:
    router = cluster.router
    port = _exchange_port(router.address)
    for shown in ("", f"Bearer {TOKEN}x", TOKEN):
        with wire.connect(port) as sock:
            refusal = wire.hello(sock, shown)
            assert refusal is not None and refusal.id == 0, (shown, refusal)
            assert refusal.code == grpc.StatusCode.UNAUTHENTICATED.value[0], (shown, refusal)
            assert wire.refused_for_good(sock, _write(1, b"planted"))
    with wire.connect(port) as sock:
        welcome = wire.hello(sock, f"Bearer {TOKEN}")
        assert welcome is not None and welcome.code == 0, welcome
        assert welcome.trailing["shardkv-router-id"] == "r1", welcome
        wire.send(sock, _write(1, b"framed"))
        written = wire.reply(sock)
        assert written is not None and written.id == 1 and written.code == 0, written
        [result] = kv_pb2.BatchWriteResponse.FromString(written.response).results
        assert result.version > 0 and not result.status.code, result
        # Admin calls stay on gRPC: not served here, even to the client token.
        wire.send(
            sock,
            exchange_pb2.ExchangeFrame(
                id=2, method="/shardkv.v1.Admin/AddNode"
            ).SerializeToString(),
        )
        admin = wire.reply(sock)
        assert admin is not None and admin.code == grpc.StatusCode.UNIMPLEMENTED.value[0], admin
        # A request that is not one, and one the KV service refuses, are answered alone.
        wire.send(sock, wire.frame(3, BATCH_GET, b"\x0a\xff"))
        malformed = wire.reply(sock)
        assert malformed is not None and malformed.id == 3, malformed
        assert malformed.code == grpc.StatusCode.INVALID_ARGUMENT.value[0], malformed
        empty_key = kv_pb2.GetRequest(key=b"")
        wire.send(sock, wire.frame(4, "/shardkv.v1.KV/Get", empty_key))
        refused = wire.reply(sock)
        assert refused is not None and refused.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        assert "key" in refused.message, refused
        wire.send(sock, wire.frame(5, BATCH_GET, kv_pb2.BatchGetRequest(keys=[b"framed"])))
        read = wire.reply(sock)
        assert read is not None and read.code == 0, read
        [got] = kv_pb2.BatchGetResponse.FromString(read.response).results
        assert (got.found, got.value, got.version) == (True, b"v-framed", result.version)
    # Written on the exchange port, read on gRPC: one service.
    answer = _get(router.address, b"framed")
    assert (answer.value, answer.version) == (b"v-framed", result.version)
    assert _get(router.address, b"planted").found is False
    assert router.alive()
    log = router.log()
    assert log.count("refused exchange connection") >= 3 and TOKEN not in log, log
    # Frames are counted as the calls they are.
    metrics_port = router.argv[router.argv.index("--metrics-listen") + 1]
    with urllib.request.urlopen(f"http://{metrics_port}/metrics", timeout=5) as page:
        text = page.read().decode()
    assert 'method="BatchWrite"' in text and 'code="UNIMPLEMENTED"' in text, text[:2000]


@pytest.mark.timeout(90)
@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_the_sdk_sends_kv_calls_as_frames_with_the_same_outcomes(
    cluster: Cluster, loop: str
) -> None:
    """On asyncio's own loop and on uvloop (whose transports are not asyncio.Transport
    subclasses: the SDK once fell back to gRPC on it, warning every 30 s)."""

    async def main() -> None:
        async with AsyncClient(cluster.router.address, bearer_token=TOKEN, timeout=5) as kv:
            version = await kv.put("a", b"1")
            assert await kv.put_many({"b": b"2", "c": b"3"})
            assert await kv.get_many(["a", "b", "c", "missing"]) == {
                b"a": b"1",
                b"b": b"2",
                b"c": b"3",
            }
            record = await kv.get_record("a")
            assert record is not None and record.version == version
            assert await kv.delete("a") > version
            assert await kv.get("a") is None
            with pytest.raises(InvalidArgument):
                await kv.put("x" * 10_000, b"too long a key")
            assert kv.frames_answered >= 6
            answered = kv.frames_answered
            # Both ends of the connection probe a peer that may have died silently.
            port = _exchange_port(cluster.router.address)
            assert await _eventually(lambda: wire.keepalive_ends(port) == (1, 1))
        # frames=False keeps every call on gRPC.
        async with AsyncClient(cluster.router.address, bearer_token=TOKEN, frames=False) as kv:
            assert await kv.get("b") == b"2" and kv.frames_answered == 0
        assert answered

    with asyncio.Runner(loop_factory=uvloop.new_event_loop if loop == "uvloop" else None) as run:
        run.run(main())


@pytest.mark.timeout(90)
@pytest.mark.parametrize("behind", ["nothing", "grpc", "router"])
def test_the_sdk_uses_grpc_when_the_exchange_port_cannot_be_used(
    cluster: Cluster, caplog: pytest.LogCaptureFixture, behind: str
) -> None:
    """The advertised port has nothing listening, another protocol (the router's own gRPC
    port, which answers the hello with HTTP/2), or another router (a stale or wrong
    advertised port, or a DNS name standing for several routers: its welcome names it):
    calls go by gRPC, to the router the client was given, with a warning."""
    port = free_port()
    advertised = {
        "nothing": free_port(),
        "grpc": port,
        "router": _exchange_port(cluster.router.address),
    }[behind]
    stray = router_proc(
        cluster.base,
        cluster.config,
        {"nothing": "r2", "grpc": "r3", "router": "r4"}[behind],
        port=port,
        extra=[
            "--token-file",
            str(cluster.base / "token"),
            "--advertise-exchange-port",
            str(advertised),
        ],
    )
    cluster.routers.append(stray.start())

    async def main() -> None:
        async with AsyncClient(stray.address, bearer_token=TOKEN, timeout=5) as kv:
            assert await kv.put("k", b"by grpc") > 0
            assert await kv.get("k") == b"by grpc"
            assert kv.frames_answered == 0

    try:
        asyncio.run(main())
    finally:
        stray.stop()
    assert f"127.0.0.1:{advertised}" in caplog.text and "gRPC calls for" in caplog.text


@pytest.mark.timeout(60)
def test_a_router_slow_to_tell_its_exchange_port_answers_by_grpc_within_the_calls_time(
    cluster: Cluster,
) -> None:
    """A router that tells its exchange port later than the SDK's lookup waits (1 s; the
    router is paused for 1.5 s as a client's first call starts) gets the call by gRPC,
    answered within the call's own time once it resumes, not failed at the lookup's
    second with DEADLINE_EXCEEDED as no gRPC call would have been."""

    async def main() -> None:
        async with AsyncClient(cluster.router.address, bearer_token=TOKEN, timeout=8) as kv:
            loop = asyncio.get_running_loop()
            cluster.router.signal(signal.SIGSTOP)
            resume = loop.call_later(1.5, cluster.router.signal, signal.SIGCONT)
            started = time.monotonic()
            try:
                assert await kv.put("paused-port", b"by grpc") > 0
            finally:
                resume.cancel()
                cluster.router.signal(signal.SIGCONT)
            took = time.monotonic() - started
            assert took > 1.4, f"answered after {took:.2f}s, while the router was paused"
            assert await kv.get("paused-port") == b"by grpc"
            assert kv.frames_answered == 0, kv.frames_answered

    asyncio.run(main())


@pytest.mark.timeout(90)
def test_calls_beyond_the_frames_a_connection_runs_go_by_grpc(cluster: Cluster) -> None:
    """300 calls at once on one client: 256 frames run on the router's connection, the rest
    go by gRPC; none is refused. A put_many over the message limit leaves as calls within
    it, on the same connection."""

    async def main() -> None:
        async with AsyncClient(cluster.router.address, bearer_token=TOKEN, timeout=20) as kv:
            await kv.put_many({f"k{i}": b"v" for i in range(300)})
            pages = await asyncio.gather(*(kv.get_many([f"k{i}"]) for i in range(300)))
            assert all(page == {f"k{i}".encode(): b"v"} for i, page in enumerate(pages))
            assert 256 <= kv.frames_answered < 301
            answered = kv.frames_answered
            huge = {f"big{i}": b"x" * (1 << 20) for i in range(40)}  # 40 MiB: two calls
            await kv.put_many(huge)
            assert await kv.get("big39") == b"x" * (1 << 20)
            assert kv.frames_answered == answered + 3

    asyncio.run(main())


@pytest.mark.timeout(90)
def test_frames_of_a_connection_that_ends_are_cancelled(cluster: Cluster) -> None:
    """A caller gone mid-frame leaves nobody to answer: the router cancels the frame's
    call, as gRPC cancels the calls of a connection that ends, instead of working on it
    until its deadline (here 20 s: every node is stopped)."""
    router = cluster.router
    port = _exchange_port(router.address)
    cancelled = "method=/shardkv.v1.KV/BatchGet code=CANCELLED"
    before = router.log().count(cancelled)
    for node in cluster.nodes:
        node.signal(signal.SIGSTOP)
    try:
        with wire.connect(port) as sock:
            assert wire.hello(sock, f"Bearer {TOKEN}") is not None
            read = exchange_pb2.ExchangeFrame(
                id=1,
                method=BATCH_GET,
                request=kv_pb2.BatchGetRequest(keys=[b"stuck"]).SerializeToString(),
                timeout_ms=20_000,
            )
            wire.send(sock, read.SerializeToString())
            time.sleep(0.3)
        left = time.monotonic()
        while router.log().count(cancelled) == before:
            assert time.monotonic() - left < 5, router.log()[-3000:]
            time.sleep(0.05)
    finally:
        for node in cluster.nodes:
            node.signal(signal.SIGCONT)
    assert _get(router.address, b"stuck").found is False


@pytest.mark.timeout(90)
def test_frames_beyond_the_routers_concurrency_bound_are_refused(cluster: Cluster) -> None:
    """--max-concurrent-rpcs bounds the frames running on the exchange port too (all its
    connections together): one more is refused with RESOURCE_EXHAUSTED, alone."""
    bounded = router_proc(
        cluster.base,
        cluster.config,
        "r4",
        extra=["--token-file", str(cluster.base / "token"), "--max-concurrent-rpcs", "2"],
    )
    cluster.routers.append(bounded.start())
    port = _exchange_port(bounded.address)
    for node in cluster.nodes:
        node.signal(signal.SIGSTOP)  # writes wait for their owners
    try:
        with wire.connect(port) as first, wire.connect(port) as second:
            for sock in (first, second):
                assert wire.hello(sock, f"Bearer {TOKEN}") is not None
            wire.send(first, _write(1, b"one"))
            wire.send(second, _write(1, b"two"))
            time.sleep(0.3)
            wire.send(second, _write(2, b"three"))
            refused = wire.reply(second)
            assert refused is not None and refused.id == 2, refused
            assert refused.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0], refused
            assert "2 frames already running on this server" in refused.message
    finally:
        for node in cluster.nodes:
            node.signal(signal.SIGCONT)
    assert _get(bounded.address, b"three").found is False
    bounded.stop()


@pytest.mark.timeout(90)
def test_a_frame_running_past_the_idle_time_keeps_its_connection(cluster: Cluster) -> None:
    """--max-connection-idle-s counts from the last frame answered: a write running
    longer than that (its owners are stopped: it ends when the router's node calls time
    out, after 1 s) is answered on its connection, which is closed (last_id told) only
    once idle for that long after the answer."""
    token = ["--token-file", str(cluster.base / "token")]
    extra = [*token, "--max-connection-idle-s", "0.5"]
    idle = router_proc(cluster.base, cluster.config, "r5", extra=extra)
    cluster.routers.append(idle.start())
    with wire.connect(_exchange_port(idle.address)) as sock:
        assert wire.hello(sock, f"Bearer {TOKEN}") is not None
        for node in cluster.nodes:
            node.signal(signal.SIGSTOP)
        try:
            sent = time.monotonic()
            wire.send(sock, _write(1, b"slow"))
            answered = wire.reply(sock)
            ran = time.monotonic() - sent
            going = wire.reply(sock)
            quiet = time.monotonic() - sent - ran
            assert wire.reply(sock) is None
        finally:
            for node in cluster.nodes:
                node.signal(signal.SIGCONT)
    assert answered is not None and answered.id == 1, answered
    assert going is not None and going.id == 0 and going.last_id == 1, going
    assert ran > 0.8 and 0.4 < quiet < 2, (ran, quiet)
    idle.stop()


@pytest.mark.timeout(90)
def test_a_stopping_router_says_which_frames_it_read_and_answers_them(cluster: Cluster) -> None:
    """SIGTERM with a frame running: the router tells the connection the last frame it
    read (gRPC's GOAWAY), answers that frame within its grace, never reads the next, and
    closes; a caller may send the unread frame elsewhere, knowing it was not applied.
    Last in the module: it stops the module's router (and starts it again)."""
    router = cluster.router
    port = _exchange_port(router.address)
    for node in cluster.nodes:
        node.signal(signal.SIGSTOP)  # the write waits for its owners
    try:
        with wire.connect(port) as sock:
            assert wire.hello(sock, f"Bearer {TOKEN}") is not None
            wire.send(sock, _write(1, b"in-flight"))
            time.sleep(0.3)
            router.signal(signal.SIGTERM)
            going = wire.reply(sock)
            assert going is not None and going.id == 0 and going.HasField("last_id"), going
            assert going.last_id == 1 and going.code == grpc.StatusCode.UNAVAILABLE.value[0]
            wire.send(sock, _write(2, b"unread"))
            for node in cluster.nodes:
                node.signal(signal.SIGCONT)
            answered = wire.reply(sock)
            assert answered is not None and answered.id == 1, answered
            assert wire.reply(sock) is None, "frame 2 was answered, or the connection stayed"
    finally:
        for node in cluster.nodes:
            node.signal(signal.SIGCONT)
    assert router.stop() == 0
    router.restart()
    assert _get(router.address, b"unread").found is False
