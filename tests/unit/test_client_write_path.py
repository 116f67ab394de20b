"""The SDK's write path (client.core): a mutation is a (key, value, delete) tuple checked
for a whole put_many at once, yet every answer is the one a check pair by pair gives: a
str key and its UTF-8 bytes are one key, the error names the first pair breaking a rule,
batches are cut as weighing each mutation cuts them, the request is byte for byte the one
built from Mutation messages, and an item's status decides its outcome. Then put_many,
put and delete through both shells against a fake router."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Mapping
from concurrent import futures
from functools import partial
from typing import Any

import grpc
import pytest
from shardkv.client import AsyncClient, Client, Consistency, RetryPolicy, Unavailable, core
from shardkv.client.core import KeyLike, Mutation, ValueLike
from shardkv.client.errors import InvalidArgument, ResourceExhausted
from shardkv.common.limits import DEFAULT_LIMITS
from shardkv.v1 import kv_pb2, kv_pb2_grpc

HUGE = b"h" * (DEFAULT_LIMITS.max_value_bytes + 1)
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE.value[0]


def one_by_one(mapping: Mapping[KeyLike, ValueLike]) -> list[Mutation]:
    """What put_mutations answered before it checked a batch at once: put_mutation per
    pair, in order, the last of a key winning in the key's first place."""
    by_key: dict[bytes, Mutation] = {}
    for key, value in mapping.items():
        mutation = core.put_mutation(key, value)
        by_key[mutation[0]] = mutation
    return list(by_key.values())


def outcome(call: Callable[[], object]) -> object:
    """The value call returns, or its error as (type, message, keys) to compare."""
    try:
        return call()
    except Exception as err:  # what the one-by-one check raises is the expectation
        return type(err), str(err), getattr(err, "keys", None)


def test_a_str_key_and_its_bytes_are_one_mutation_the_last_value_in_the_first_place() -> None:
    mapping: dict[KeyLike, ValueLike] = {"k": b"1", b"a": "x", b"k": b"2", "é": b"3"}
    assert core.put_mutations(mapping) == [
        (b"k", b"2", False),
        (b"a", b"x", False),
        ("é".encode(), b"3", False),
    ]
    plain: dict[KeyLike, ValueLike] = {b"a": b"1", b"b": b"2"}
    assert core.put_mutations(plain) == [(b"a", b"1", False), (b"b", b"2", False)]


@pytest.mark.parametrize(
    "mapping",
    [
        {b"a": b"x", b"big": HUGE, b"": b"x"},  # an oversized value before an empty key
        {b"ok": b"x", b"": b"v", b"big": HUGE},  # an empty key before an oversized value
        {b"a": b"x", b"k" * 512: b"v"},  # a key over the limit
        {"k": HUGE, b"k": b"small"},  # a value replaced by a later one is still checked
        {"k": HUGE, b"k": 1},
        {b"a": 1, 2: b"x"},  # TypeError: the value of the first pair, not the key of the second
        {1: b"x"},
        {b"a": b"x", b"b": bytearray(b"y"), memoryview(b"c"): memoryview(b"z")},
        {"\ud800": b"x"},  # UTF-8 cannot encode it: to_bytes's own error
        {b"big": HUGE, "\ud800": b"x"},  # ... after a pair that breaks a limit
        {},
    ],
)
def test_a_batch_is_answered_as_checked_pair_by_pair(mapping: Mapping[Any, Any]) -> None:
    assert outcome(lambda: core.put_mutations(mapping)) == outcome(lambda: one_by_one(mapping))


def test_the_oversized_value_is_named_not_its_neighbours() -> None:
    with pytest.raises(InvalidArgument, match="exceeds the limit of 1048576 bytes") as caught:
        core.put_mutations({b"first": b"x", b"big": HUGE, b"last": b"y"})
    assert caught.value.keys == (b"big",)
    assert "b'big'" in str(caught.value)


def test_bytes_like_values_become_bytes() -> None:
    mutations = core.put_mutations({b"a": bytearray(b"x"), memoryview(b"b"): memoryview(b"y")})
    assert mutations == [(b"a", b"x", False), (b"b", b"y", False)]
    assert all(type(key) is bytes and type(value) is bytes for key, value, _ in mutations)


@pytest.mark.parametrize(
    "mutations",
    [
        [(b"k%05d" % i, b"v" * 100, False) for i in range(2500)],  # the item limit cuts
        [(b"k%02d" % i, b"v" * DEFAULT_LIMITS.max_value_bytes, False) for i in range(40)],
        [(b"k%02d" % i, b"v" * (i << 16), i % 3 == 0) for i in range(40)],
        [],
    ],
    ids=["2500-small", "40-MiB", "mixed", "none"],
)
def test_write_chunks_cuts_as_weighing_each_mutation(mutations: list[Mutation]) -> None:
    weighed = list(core.chunks(mutations, weight=core.mutation_bytes))
    assert core.write_chunks(mutations) == weighed
    assert all(sum(map(core.mutation_bytes, c)) <= core.MAX_REQUEST_BYTES for c in weighed)


def test_forty_one_mebibyte_values_go_as_two_batches() -> None:
    mapping: dict[KeyLike, ValueLike] = {
        b"k%02d" % i: b"v" * DEFAULT_LIMITS.max_value_bytes for i in range(40)
    }
    assert [len(c) for c in core.write_chunks(core.put_mutations(mapping))] == [31, 9]


def test_the_request_is_the_one_built_from_mutation_messages() -> None:
    mutations = [
        core.put_mutation("a", "x"),
        core.delete_mutation(b"b"),
        core.put_mutation(b"c", b""),
    ]
    request = core.batch_write_request(mutations, Consistency.QUORUM)
    expected = kv_pb2.BatchWriteRequest(
        mutations=[
            kv_pb2.Mutation(key=b"a", value=b"x"),
            kv_pb2.Mutation(key=b"b", delete=True),
            kv_pb2.Mutation(key=b"c", value=b""),
        ],
        consistency=kv_pb2.QUORUM,
    )
    assert request.SerializeToString() == expected.SerializeToString()
    assert [core.mutation_bytes(m) for m in mutations] == [
        1 + 1 + core.MUTATION_FRAMING,
        1 + core.MUTATION_FRAMING,
        1 + core.MUTATION_FRAMING,
    ]


def test_an_item_status_decides_its_outcome() -> None:
    mutations = [core.put_mutation(key, b"v") for key in (b"a", b"b", b"c", b"d")]
    reply = kv_pb2.BatchWriteResponse()
    reply.results.add(version=11)
    reply.results.add(status=kv_pb2.ItemStatus(code=UNAVAILABLE, message="1 of 2 replicas"))
    reply.results.add(version=13, status=kv_pb2.ItemStatus())  # set, but OK: written
    reply.results.add(
        status=kv_pb2.ItemStatus(code=grpc.StatusCode.RESOURCE_EXHAUSTED.value[0], message="full")
    )
    wire = kv_pb2.BatchWriteResponse.FromString(reply.SerializeToString())
    outcomes = core.write_outcomes(mutations, wire, target="r1")
    assert outcomes[0] == 11 and outcomes[2] == 13
    assert isinstance(outcomes[1], Unavailable) and outcomes[1].keys == (b"b",)
    assert outcomes[1].details.startswith("1 of 2 replicas" + core.MAYBE_STORED)
    assert outcomes[1].target == "r1"
    assert isinstance(outcomes[3], ResourceExhausted) and outcomes[3].keys == (b"d",)


class FakeRouter(kv_pb2_grpc.KVServicer):
    """Answers BatchWrite with a version per mutation (its index plus 100 times the call
    number), and an UNAVAILABLE item status for the keys in ``failing``; keeps requests."""

    def __init__(self) -> None:
        self.requests: list[kv_pb2.BatchWriteRequest] = []
        self.failing: set[bytes] = set()

    def BatchWrite(
        self, request: kv_pb2.BatchWriteRequest, context: grpc.ServicerContext
    ) -> kv_pb2.BatchWriteResponse:
        self.requests.append(request)
        reply = kv_pb2.BatchWriteResponse()
        for index, mutation in enumerate(request.mutations):
            if mutation.key in self.failing:
                reply.results.add(status=kv_pb2.ItemStatus(code=UNAVAILABLE, message="down"))
            else:
                reply.results.add(version=100 * len(self.requests) + index)
        return reply


@pytest.fixture
def router() -> Iterator[tuple[str, FakeRouter]]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    fake = FakeRouter()
    kv_pb2_grpc.add_KVServicer_to_server(fake, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}", fake
    finally:
        server.stop(None)


FAST = RetryPolicy(initial_backoff=0.01, jitter=False)


def sync_shell(target: str, calls: list[Callable[[Any], Any]]) -> list[object]:
    with Client(target, retry=FAST, timeout=5) as client:
        return [outcome(partial(call, client)) for call in calls]


def async_shell(target: str, calls: list[Callable[[Any], Any]]) -> list[object]:
    async def main() -> list[object]:
        async with AsyncClient(target, retry=FAST, timeout=5, frames=False) as client:
            answers: list[object] = []
            for call in calls:
                try:
                    answers.append(await call(client))
                except Exception as err:
                    answers.append((type(err), str(err), getattr(err, "keys", None)))
            return answers

    return asyncio.run(main())


@pytest.mark.parametrize("shell", [sync_shell, async_shell], ids=["sync", "async"])
def test_both_shells_write_one_mutation_per_key_and_answer_per_item(
    shell: Callable[..., list[object]], router: tuple[str, FakeRouter]
) -> None:
    target, fake = router
    fake.failing = {b"bad"}
    mixed: dict[KeyLike, ValueLike] = {"k": b"1", b"x": "v", b"k": b"2", b"bad": b"v"}
    answers = shell(
        target,
        [
            lambda c: c.put_many({b"a": b"1", "b": b"2"}),
            lambda c: c.put_many(mixed),
            lambda c: c.put(b"p", "v"),
            lambda c: c.delete("p"),
            lambda c: c.put_many({b"ok": b"x", b"big": HUGE}),
        ],
    )
    assert answers[0] == {b"a": 100, b"b": 101}
    assert answers[1] == (
        Unavailable,
        f"UNAVAILABLE from {target}: 1 of 3 writes failed (keys b'bad'); first error: down"
        f"{core.MAYBE_STORED} on fewer replicas",
        (b"bad",),
    )
    assert answers[2:4] == [300, 400]
    assert answers[4][0] is InvalidArgument and answers[4][2] == (b"big",)  # type: ignore[index]
    sent = [[(m.key, m.value, m.delete) for m in r.mutations] for r in fake.requests]
    assert sent == [
        [(b"a", b"1", False), (b"b", b"2", False)],
        [(b"k", b"2", False), (b"x", b"v", False), (b"bad", b"v", False)],
        [(b"p", b"v", False)],
        [(b"p", b"", True)],
    ], "the oversized batch is refused before any call"
