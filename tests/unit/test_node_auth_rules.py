"""The node's router-only rule in pieces: where a node may listen open, the flags, the
bound on hint targets, and that the router's NodeClient sends the node token on every
call (against an in-process node that asks for it)."""

from __future__ import annotations

import asyncio
import inspect
from pathlib import Path
from typing import Any

import grpc
import pytest
from shardkv.common.limits import DEFAULT_LIMITS
from shardkv.common.loopback import is_loopback
from shardkv.router.membership.topology import NodeConfig
from shardkv.router.requests.coalescer import NodeFailure
from shardkv.router.requests.framing import KeyChunk
from shardkv.router.requests.node_client import NodeClient
from shardkv.router.requests.writes import Writes
from shardkv.serving.status import status_of
from shardkv.shardd.__main__ import parse_args
from shardkv.shardd.auth import NodeAuth, exposure, read_token
from shardkv.shardd.records import Hint, Record
from shardkv.shardd.server import ServerConfig, ShardServer
from shardkv.shardd.store import Store, TooManyTargets
from shardkv.v1 import replica_pb2

WILDCARD = ".".join("0" * 4)  # every interface
TOKEN = NodeAuth(token="t0k")
CERTS = NodeAuth(cert_names=frozenset({"router"}))


def test_loopback_addresses_are_told_apart() -> None:
    for host in ("127.0.0.1", "127.8.9.1", "::1", "[::1]", "localhost"):
        assert is_loopback(host), host
    for host in (WILDCARD, "::", "[::]", "", "10.1.2.3", "no-such-host.invalid"):
        assert not is_loopback(host), host


@pytest.mark.parametrize(
    ("listen", "auth", "tls", "mutual", "refused", "warned"),
    [
        ("127.0.0.1:7101", NodeAuth(), False, False, None, None),
        ("[::1]:7101", NodeAuth(), False, False, None, None),
        (f"{WILDCARD}:7101", NodeAuth(), False, False, "--insecure", None),
        (f"{WILDCARD}:7101", NodeAuth(insecure=True), False, False, None, "INSECURE"),
        (f"{WILDCARD}:7101", NodeAuth(), True, True, "admits any certificate", None),
        (f"{WILDCARD}:7101", TOKEN, False, False, None, "clear text"),
        (f"{WILDCARD}:7101", TOKEN, True, False, None, None),
        (f"{WILDCARD}:7101", CERTS, True, True, None, None),
        ("127.0.0.1:7101", CERTS, False, False, "needs mutual TLS", None),
    ],
)
def test_where_a_node_may_listen(
    listen: str, auth: NodeAuth, tls: bool, mutual: bool, refused: str | None, warned: str | None
) -> None:
    refusal, warnings = exposure(listen, auth, tls=tls, mutual=mutual)
    if refused is None:
        assert refusal is None
    else:
        assert refusal is not None and refused in refusal
    if warned is None:
        assert warnings == []
    else:
        assert len(warnings) == 1 and warned in warnings[0]


def test_flags_and_token_file(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("  s3cret\n")
    assert read_token(path) == "s3cret"
    for bad in ("", "two words"):
        path.write_text(bad)
        with pytest.raises(ValueError, match="must hold one token"):
            read_token(path)
    path.write_text("s3cret")
    base = ["--id", "n1", "--data", str(tmp_path / "d")]
    config, _ = parse_args([*base, "--node-token-file", str(path), "--insecure"])
    assert config.auth == NodeAuth(token="s3cret", insecure=True)
    assert "s3cret" not in repr(config.auth.describe())
    with pytest.raises(SystemExit) as exit_:
        parse_args([*base, "--router-cert-names", "r1,r2"])  # no --tls-client-ca
    assert exit_.value.code == 2
    with pytest.raises(SystemExit):
        parse_args([*base, "--node-token-file", str(tmp_path / "missing")])


def hint(target: str) -> Hint:
    return Hint(target, Record(b"k", b"v", 1, 1))


def test_hint_targets_are_bounded_and_survive_a_restart(tmp_path: Path) -> None:
    store = Store(tmp_path, sync=False, max_targets=3)
    store.apply([], [hint("a"), hint("b")])
    store.apply([Record(b"m", b"v", 1, 1)], [hint("c")])
    with pytest.raises(TooManyTargets, match="limit of 3 distinct targets") as err:
        store.apply([], [hint("d")])
    assert status_of(err.value) == grpc.StatusCode.RESOURCE_EXHAUSTED
    store.apply([], [hint("a"), hint("c")])  # known targets are still taken
    store.close()
    reopened = Store(tmp_path, sync=False, max_targets=3)
    with pytest.raises(TooManyTargets):
        reopened.apply([], [hint("e")])
    reopened.close()


def test_a_target_whose_hints_were_all_handed_over_stops_counting(tmp_path: Path) -> None:
    """The bound counts nodes that still wait for something: over a cluster's life, hints
    are parked for many more nodes than are ever down at once."""
    store = Store(tmp_path, sync=False, max_targets=3, max_dbs=5)  # "data", "meta" + 3
    store.apply([], [hint("a"), hint("b"), hint("c")])
    assert store.delete_hints("a", [Record(b"k", b"v", 1, 1)]) == 1  # a got its hint
    store.apply([], [hint("d")])  # a's database goes, d's comes
    assert store.hint_summary() == {"b": 1, "c": 1, "d": 1}
    with pytest.raises(TooManyTargets, match="limit of 3 distinct targets"):
        store.apply([], [hint("e")])  # b, c and d still wait
    store.close()
    reopened = Store(tmp_path, sync=False, max_targets=3, max_dbs=5)
    assert reopened.hint_summary() == {"b": 1, "c": 1, "d": 1}
    assert reopened.read_hints("d", 10) == [Record(b"k", b"v", 1, 1)]
    reopened.close()


def test_lmdb_running_out_of_databases_is_not_internal(tmp_path: Path) -> None:
    store = Store(tmp_path, sync=False, max_dbs=4, max_targets=100)  # "data", "meta" + 2
    store.apply([], [hint("a"), hint("b")])
    with pytest.raises(TooManyTargets, match="database limit") as err:
        store.apply([], [hint("c")])
    assert status_of(err.value) == grpc.StatusCode.RESOURCE_EXHAUSTED
    store.close()


# Every NodeClient method that calls the node, with arguments; a new one must be added here.
def calls(client: NodeClient, loop: asyncio.AbstractEventLoop) -> dict[str, Any]:
    record = replica_pb2.Record(key=b"k", value=b"v", version=1 << 40, writer=1)
    whole = [(0, 1 << 32)]

    async def coalesced(submit: Any, item: Any) -> Any:
        done: asyncio.Future[Any] = loop.create_future()
        submit([(item, done.set_result)], loop.time() + 5)
        result = await done
        if not isinstance(result, (bool, replica_pb2.Record)):
            raise RuntimeError(str(result))
        return result

    async def chunk(submit: Any, item: Any) -> Any:
        done: asyncio.Future[Any] = loop.create_future()
        submit(item, done.set_result, loop.time() + 5, 0)
        result = await done
        if isinstance(result, NodeFailure):
            raise RuntimeError(str(result))
        return result

    async def stream(aiter: Any) -> list[Any]:
        return [item async for item in aiter]

    return {
        "apply": lambda: coalesced(client.apply, record),
        "read": lambda: coalesced(client.read, b"k"),
        "apply_chunk": lambda: chunk(client.apply_chunk, Writes.of_records([record]).chunk([0])),
        "read_chunk": lambda: chunk(client.read_chunk, KeyChunk.of([b"k"])),
        "apply_now": lambda: client.apply_now([record], 5),
        "apply_batch": lambda: client.apply_batch([record], 5),
        "park_hints": lambda: client.park_hints("n2", [record], 5),
        "read_batch": lambda: client.read_batch([b"k"], 5),
        "scan_records": lambda: _no_failure(client.scan_records(b"", b"", 10, 5, 1)),
        "hint_summary": lambda: client.hint_summary(),
        "read_hints": lambda: client.read_hints("n2", 10),
        "delete_hints": lambda: client.delete_hints("n2", [record]),
        "token_digests": lambda: client.token_digests(whole, count_only=True, pace=0, timeout_s=5),
        "stream_token_ranges": lambda: stream(
            client.stream_token_ranges(whole, batch_size=10, keys_only=True, pace=0, timeout_s=5)
        ),
        "purge_token_ranges": lambda: client.purge_token_ranges(
            whole, tombstones_before=1, timeout_s=5
        ),
        "stats": lambda: client.stats(5),
        "identity": lambda: client.identity(replica_pb2.IdentityRequest(), 5),
        "fence": lambda: client.fence(0, 5),
        "snapshot": lambda: stream(client.snapshot(10, 5)),
    }


async def _no_failure(call: Any) -> Any:
    result = await call
    if not isinstance(result, replica_pb2.ScanRecordsResponse):
        raise RuntimeError(str(result))
    return result


# Methods of NodeClient that make no node call of their own.
NOT_CALLS = {"batch_sizes", "check", "close"}


def test_node_client_sends_the_node_token_on_every_call(tmp_path: Path) -> None:
    async def main() -> None:
        server = ShardServer(
            ServerConfig(
                node_id="n1", data_dir=tmp_path, listen="127.0.0.1:0", auth=NodeAuth(token="tok")
            )
        )
        port = await server.start()
        loop = asyncio.get_running_loop()
        node = NodeConfig("n1", f"127.0.0.1:{port}")
        try:
            for token, expected in (("tok", None), (None, "UNAUTHENTICATED"), ("bad", "UNAUTH")):
                client = NodeClient(
                    node,
                    limits=DEFAULT_LIMITS,
                    call_timeout_s=5,
                    on_failure=lambda failure, timeout: None,
                    token=token,
                )
                table = calls(client, loop)
                methods = {
                    name
                    for name, _ in inspect.getmembers(NodeClient, inspect.isfunction)
                    if not name.startswith("_")
                }
                assert methods - NOT_CALLS == set(table), "list every node call in calls()"
                for name, call in table.items():
                    try:
                        await call()
                        failure = None
                    except (grpc.aio.AioRpcError, RuntimeError) as err:
                        failure = str(err)
                    if expected is None:
                        assert failure is None, (name, failure)
                    else:
                        assert failure is not None and expected in failure, (name, failure)
                assert await client.check(5) is None  # health is open to all
                await client.close()
        finally:
            await server.stop(0)

    asyncio.run(main())
