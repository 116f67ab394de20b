"""The SDK's pure core: key and value normalisation, limit checks, request building and
response conversion, shared by ``Client`` and ``AsyncClient``. No I/O happens here.

Keys and values are bytes on the wire. The SDK accepts ``str`` too and encodes it as
UTF-8 in exactly one place (``to_bytes``), so ``"k"`` and ``b"k"`` are the same key.
Everything is checked against ``shardkv.common.limits.DEFAULT_LIMITS`` before sending, so a value
over the limit fails with ``InvalidArgument`` without a round trip.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import repeat
from typing import TypeVar, cast

import grpc
from shardkv.common.limits import DEFAULT_LIMITS, LimitExceeded, scan_range
from shardkv.common.rpc_status import status_code
from shardkv.v1 import kv_pb2

from .errors import Internal, InvalidArgument, ShardKVError, from_item_status

# Bytes a request may carry: the message limit less room for its framing (as the servers
# leave for an answer's). A write batch is cut at this many bytes as well as at the item
# limit, so forty 1 MiB values go as two calls, not as one gRPC refuses.
MAX_REQUEST_BYTES = DEFAULT_LIMITS.max_message_bytes - (64 << 10)
# What a mutation takes in a request beside its key and value: its tag and length in the
# request, the tags and lengths of its fields, the delete flag (an upper bound).
MUTATION_FRAMING = 16

KeyLike = bytes | bytearray | memoryview | str
ValueLike = bytes | bytearray | memoryview | str
T = TypeVar("T")


class Consistency(enum.IntEnum):
    """How many replicas must answer a request. Unset (None) means the cluster's defaults,
    R for reads and W for writes, from its cluster.toml."""

    ONE = kv_pb2.ONE
    QUORUM = kv_pb2.QUORUM
    ALL = kv_pb2.ALL


@dataclass(frozen=True, slots=True)
class Record:
    """One stored record: key, value and the version (hybrid logical clock) that wrote it."""

    key: bytes
    value: bytes
    version: int


# What a read found of a key: its value and the version that wrote it.
Found = tuple[bytes, int]


def to_bytes(data: KeyLike, what: str = "key") -> bytes:
    """bytes as they are, str as UTF-8: the one place where keys and values are normalised."""
    if type(data) is bytes:  # nearly every key: no isinstance checks against a union
        return data
    if isinstance(data, str):
        return data.encode("utf-8")
    if isinstance(data, bytes | bytearray | memoryview):
        return bytes(data)
    raise TypeError(f"{what} must be bytes or str, not {type(data).__name__}")


_WIRE_LEVELS = {
    Consistency.ONE: kv_pb2.ONE,
    Consistency.QUORUM: kv_pb2.QUORUM,
    Consistency.ALL: kv_pb2.ALL,
}


def check_level(level: object) -> Consistency | None:
    """level as a Consistency (None: the cluster's default), or InvalidArgument listing the
    levels there are."""
    if level is None:
        return None
    if isinstance(level, int) and not isinstance(level, bool) and level in _WIRE_LEVELS:
        return Consistency(level)
    raise InvalidArgument(
        f"consistency must be one of Consistency.ONE, QUORUM, ALL, or None for the"
        f" cluster's default (R for reads, W for writes), not {level!r}"
    )


def wire_consistency(level: Consistency | None) -> kv_pb2.Consistency:
    """The proto enum value for a level; None is the cluster default."""
    return kv_pb2.CONSISTENCY_DEFAULT if level is None else _WIRE_LEVELS[level]


def check_key(key: KeyLike) -> bytes:
    """The key as bytes, or InvalidArgument naming the limit it breaks."""
    raw = to_bytes(key)
    try:
        DEFAULT_LIMITS.check_key(raw)
    except LimitExceeded as err:
        raise InvalidArgument(str(err), keys=(raw,)) from err
    return raw


def check_value(key: bytes, value: ValueLike) -> bytes:
    """The value as bytes, or InvalidArgument naming the key and the limit."""
    raw = to_bytes(value, "value")
    try:
        DEFAULT_LIMITS.check_value(key, raw)
    except LimitExceeded as err:
        raise InvalidArgument(str(err), keys=(key,)) from err
    return raw


def check_keys(keys: Iterable[KeyLike]) -> list[bytes]:
    """Distinct keys as bytes, in first-seen order, each checked: for the whole batch at
    once (Limits.keys_fit); a batch that breaks a limit key by key, so the error names the
    first key that breaks it."""
    raw = [to_bytes(key) for key in keys]
    if not DEFAULT_LIMITS.keys_fit(raw):
        for key in raw:
            check_key(key)
    return list(dict.fromkeys(raw))


# A write as the SDK holds it until the request is built: (key, value, delete), value b""
# for a delete. A tuple, not a kv_pb2.Mutation (a message built per key, then copied into
# the request, was a quarter of put_many's CPU per key), nor a NamedTuple or dataclass (a
# constructor call per key costs what the tuple saves).
Mutation = tuple[bytes, bytes, bool]


def put_mutation(key: KeyLike, value: ValueLike) -> Mutation:
    raw = check_key(key)
    return raw, check_value(raw, value), False


def delete_mutation(key: KeyLike) -> Mutation:
    return check_key(key), b"", True


def mutation_key(mutation: Mutation) -> bytes:
    return mutation[0]


def mutation_bytes(mutation: Mutation) -> int:
    """What mutation takes in a BatchWriteRequest, at most (as serialized)."""
    return len(mutation[0]) + len(mutation[1]) + MUTATION_FRAMING


def put_mutations(mapping: Mapping[KeyLike, ValueLike]) -> list[Mutation]:
    """One mutation per distinct key (a str key and its UTF-8 bytes are one key: last wins).
    Checked for the whole batch at once when it can be (_fitting); else pair by pair, as
    put_mutation does, so the error is that of the first pair that breaks a rule."""
    fitting = _fitting(list(mapping), list(mapping.values()))
    if fitting is not None:
        return list(zip(*fitting, repeat(False)))
    by_key = {m[0]: m for m in (put_mutation(key, value) for key, value in mapping.items())}
    return list(by_key.values())


def _fitting(
    keys: list[KeyLike], values: list[ValueLike]
) -> tuple[list[bytes], list[bytes]] | None:
    """The distinct keys and their values as bytes, if all are bytes or str and within the
    limits (every value, not only a key's last), with no call per key: such calls cost more
    than the checks. None: put_mutation is to find what is wrong."""
    types = set(map(type, keys)) | set(map(type, values))
    if not types <= {bytes, str}:
        return None
    raw = cast("tuple[list[bytes], list[bytes]]", (keys, values))
    if str in types:
        try:
            raw = list(map(to_bytes, keys)), list(map(to_bytes, values))
        except UnicodeEncodeError:
            return None
    longest = max(map(len, raw[1]), default=0)
    if not DEFAULT_LIMITS.keys_fit(raw[0]) or longest > DEFAULT_LIMITS.max_value_bytes:
        return None
    if str not in types:  # a mapping's keys are distinct
        return raw
    by_key = dict(zip(*raw, strict=True))  # a str key and its bytes: one key, last value
    return list(by_key), list(by_key.values())


def chunks(
    items: Sequence[T],
    size: int = DEFAULT_LIMITS.max_batch_items,
    *,
    weight: Callable[[T], int] | None = None,
    max_bytes: int = MAX_REQUEST_BYTES,
) -> Iterator[list[T]]:
    """items split into lists of at most size (the server's batch limit) and, with weight
    (an item's bytes in the request), of at most max_bytes; an item heavier than that on
    its own still makes a list of one."""
    if weight is None:
        for start in range(0, len(items), size):
            yield list(items[start : start + size])
        return
    chunk: list[T] = []
    held = 0
    for item in items:
        bytes_ = weight(item)
        if chunk and (len(chunk) >= size or held + bytes_ > max_bytes):
            yield chunk
            chunk, held = [], 0
        chunk.append(item)
        held += bytes_
    if chunk:
        yield chunk


def write_chunks(mutations: Sequence[Mutation]) -> list[list[Mutation]]:
    """put_many's batches: within the item limit and MAX_REQUEST_BYTES each. When all the
    mutations together fit in MAX_REQUEST_BYTES only the item limit can cut, so they are
    not weighed one by one (the same batches, for a third of the CPU)."""
    total = sum([len(key) + len(value) for key, value, _ in mutations])
    if total + MUTATION_FRAMING * len(mutations) <= MAX_REQUEST_BYTES:
        return list(chunks(mutations))
    return list(chunks(mutations, weight=mutation_bytes))


def batch_get_request(keys: Sequence[bytes], level: Consistency | None) -> kv_pb2.BatchGetRequest:
    return kv_pb2.BatchGetRequest(keys=keys, consistency=wire_consistency(level))


def batch_write_request(
    mutations: Sequence[Mutation], level: Consistency | None
) -> kv_pb2.BatchWriteRequest:
    """The request, its mutations added in place (a Mutation built apart, then copied in,
    costs nearly twice as much); as before, a put sets no delete flag, a delete no value."""
    request = kv_pb2.BatchWriteRequest(consistency=wire_consistency(level))
    add = request.mutations.add
    for key, value, delete in mutations:
        if delete:
            add(key=key, delete=True)
        else:
            add(key=key, value=value)
    return request


def get_outcomes(
    keys: Sequence[bytes], reply: kv_pb2.BatchGetResponse, target: str | None = None
) -> list[Found | ShardKVError | None]:
    """Per key: its value and version, None when not found, or the error of its ItemStatus.
    A found key's status is OK, so only the others' is read; no Record per key (a frozen
    dataclass costs 0.6 µs to build): get_record builds one for its caller."""
    _check_length(len(keys), len(reply.results), "BatchGet")
    outcomes: list[Found | ShardKVError | None] = []
    for key, result in zip(keys, reply.results, strict=True):
        if result.found:
            outcomes.append((result.value, result.version))
        elif result.status.code:
            status = result.status
            outcomes.append(from_item_status(status.code, status.message, key, target=target))
        else:
            outcomes.append(None)
    return outcomes


def write_outcomes(
    mutations: Sequence[Mutation],
    reply: kv_pb2.BatchWriteResponse,
    target: str | None = None,
) -> list[int | ShardKVError]:
    """Per mutation: the version written, or the error of its ItemStatus (an UNAVAILABLE
    one saying that the write may have been stored all the same: errors.Unavailable).
    The router sets a status on failed items only: HasField spares each written item the
    wrapper that reading result.status builds (a status of code 0 still means written)."""
    _check_length(len(mutations), len(reply.results), "BatchWrite")
    outcomes: list[int | ShardKVError] = []
    for result in reply.results:
        if result.HasField("status") and result.status.code:
            key = mutations[len(outcomes)][0]  # one outcome per result before this one
            status = result.status
            message = status.message
            if status_code(status.code) is grpc.StatusCode.UNAVAILABLE:
                message += MAYBE_STORED + " on fewer replicas"
            outcomes.append(from_item_status(status.code, message, key, target=target))
        else:
            outcomes.append(result.version)
    return outcomes


# What a write's error adds to its message when the write may be stored all the same: an
# UNAVAILABLE item error (errors.Unavailable), or a call an attempt of which was sent (base).
MAYBE_STORED = "; the outcome is unknown: the write may have been stored"


def found_values(
    keys: Iterable[bytes], outcomes: Iterable[Found | ShardKVError | None]
) -> dict[bytes, bytes]:
    """get_many's answer: found keys only, or one error naming every key that failed."""
    found: dict[bytes, bytes] = {}
    failures: list[ShardKVError] = []
    total = 0
    for key, outcome in zip(keys, outcomes, strict=True):
        total += 1
        if isinstance(outcome, ShardKVError):
            failures.append(outcome)
        elif outcome is not None:
            found[key] = outcome[0]
    if failures:
        raise _summary(failures, total, "reads")
    return found


def written_versions(outcomes: Iterable[tuple[bytes, int | ShardKVError]]) -> dict[bytes, int]:
    """put_many's answer: the version per key, or one error naming every key that failed.

    Keys the error does not name were written.
    """
    versions: dict[bytes, int] = {}
    failures: list[ShardKVError] = []
    for key, outcome in outcomes:
        if isinstance(outcome, ShardKVError):
            failures.append(outcome)
        else:
            versions[key] = outcome
    if failures:
        raise _summary(failures, len(failures) + len(versions), "writes")
    return versions


def _summary(failures: Sequence[ShardKVError], total: int, what: str) -> ShardKVError:
    """One error for the failed items of a batch: of the class of the first failure, its
    ``keys`` listing every failed key, its message naming the first few."""
    first = failures[0]
    keys = [key for failure in failures for key in failure.keys]
    names = ", ".join(repr(key[:64]) for key in keys[:10])
    more = f" and {len(keys) - 10} more" if len(keys) > 10 else ""
    return type(first)(
        f"{len(failures)} of {total} {what} failed (keys {names}{more});"
        f" first error: {first.details}",
        code=first.code,
        target=first.target,
        keys=keys,
    )


@dataclass(frozen=True, slots=True)
class ScanPlan:
    """A checked scan: the range, the page size and the total limit (None = all)."""

    start: bytes
    end: bytes
    page_size: int
    limit: int | None
    consistency: kv_pb2.Consistency

    def request(self, page_token: bytes, returned: int) -> kv_pb2.ScanRequest:
        """The request for the next page, after `returned` records so far."""
        size = self.page_size
        if self.limit is not None:
            size = min(size, self.limit - returned)
        return kv_pb2.ScanRequest(
            start=self.start,
            end=self.end,
            limit=size,
            page_token=page_token,
            consistency=self.consistency,
        )

    def done(self, returned: int) -> bool:
        return self.limit is not None and returned >= self.limit


def scan_plan(
    *,
    prefix: KeyLike,
    start: KeyLike,
    end: KeyLike,
    page_size: int,
    limit: int | None,
    level: Consistency | None,
) -> ScanPlan:
    """Checks a scan's arguments (InvalidArgument when they are wrong) and plans its pages.

    A prefix is sent as the [prefix, prefix_end) range it stands for, so paging needs
    only one shape of request.
    """
    try:
        first, last = scan_range(to_bytes(prefix), to_bytes(start), to_bytes(end))
        size = DEFAULT_LIMITS.page_size(page_size)
    except LimitExceeded as err:
        raise InvalidArgument(str(err)) from err
    if limit is not None and limit < 0:
        raise InvalidArgument(f"limit must not be negative, got {limit}")
    return ScanPlan(first, last, size, limit, wire_consistency(level))


def page_records(reply: kv_pb2.ScanResponse) -> list[Record]:
    return [Record(kv.key, kv.value, kv.version) for kv in reply.records]


def _check_length(asked: int, answered: int, rpc: str) -> None:
    if asked != answered:
        raise Internal(f"{rpc} answered {answered} results for {asked} items (server bug)")
