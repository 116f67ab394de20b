"""The size limits every component enforces, and the checks that name the limit broken.

They live beside the wire API because they are part of it: the SDK checks them to fail
fast, and routers and nodes check them again because not every caller uses the SDK.
"""

from __future__ import annotations

from collections.abc import Sequence, Sized
from dataclasses import dataclass


class LimitExceeded(ValueError):
    """A request broke a size or shape rule; the message names the rule and the limit."""


@dataclass(frozen=True)
class Limits:
    """Sizes a request may have. Defaults suit LMDB's default build (511-byte keys)."""

    max_key_bytes: int = 511
    max_value_bytes: int = 1 << 20
    max_batch_items: int = 1000
    max_page_size: int = 10_000
    default_page_size: int = 1000
    # gRPC's receive cap on both sides: a batch of max_batch_items records at 16 KiB each.
    max_message_bytes: int = 32 << 20

    def check_key(self, key: bytes) -> None:
        if not key:
            raise LimitExceeded("key must not be empty")
        if len(key) > self.max_key_bytes:
            raise LimitExceeded(
                f"key of {len(key)} bytes exceeds the limit of {self.max_key_bytes} bytes"
                f" (key starts {key[:32]!r})"
            )

    def keys_fit(self, keys: Sequence[bytes]) -> bool:
        """Whether every key's length is within the limits, compared without a call per key
        (a batch of 100 keys: 0.03 µs a key instead of 0.9 checked one by one; an empty
        key is told by its truth, not compared)."""
        return not keys or (all(keys) and max(map(len, keys)) <= self.max_key_bytes)

    def check_keys(self, keys: Sequence[bytes], what: str = "batch") -> None:
        """check_key of every key, one by one only when some key breaks a limit (the error
        names the first that does, and where it is in what)."""
        if not self.keys_fit(keys):
            for index, key in enumerate(keys):
                try:
                    self.check_key(key)
                except LimitExceeded as err:
                    raise LimitExceeded(f"{what} key {index}: {err}") from None

    def check_value(self, key: bytes, value: bytes) -> None:
        if len(value) > self.max_value_bytes:
            raise LimitExceeded(
                f"value of {len(value)} bytes for key {key[:64]!r} exceeds the limit of"
                f" {self.max_value_bytes} bytes"
            )

    def check_writes(self, keys: Sequence[bytes], values: Sequence[bytes], what: str) -> None:
        """check_key and check_value of every write, one by one only when some write breaks
        a limit (the error names the first that does, and where it is in what)."""
        if self.keys_fit(keys) and (not values or max(map(len, values)) <= self.max_value_bytes):
            return
        for index, (key, value) in enumerate(zip(keys, values, strict=True)):
            try:
                self.check_key(key)
                self.check_value(key, value)
            except LimitExceeded as err:
                raise LimitExceeded(f"{what} {index}: {err}") from None

    def check_batch(self, items: Sized, what: str = "batch") -> None:
        if len(items) > self.max_batch_items:
            raise LimitExceeded(
                f"{what} of {len(items)} items exceeds the limit of {self.max_batch_items} items"
            )

    def page_size(self, limit: int) -> int:
        """The page size to use for a requested limit (0 = the default)."""
        if limit < 0:
            raise LimitExceeded(f"limit must not be negative, got {limit}")
        if limit > self.max_page_size:
            raise LimitExceeded(
                f"limit of {limit} exceeds the maximum page size of {self.max_page_size}"
            )
        return limit or self.default_page_size


DEFAULT_LIMITS = Limits()


def prefix_end(prefix: bytes) -> bytes:
    """The first key after every key that starts with prefix; b"" when there is none."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return b""
    return stripped[:-1] + bytes([stripped[-1] + 1])


def scan_range(prefix: bytes, start: bytes, end: bytes) -> tuple[bytes, bytes]:
    """Turns a scan's prefix or [start, end) into one [start, end) range (b"" end = open).

    Raises LimitExceeded when prefix is combined with start or end, or when start > end.
    """
    if prefix:
        if start or end:
            raise LimitExceeded("prefix cannot be combined with start or end")
        return prefix, prefix_end(prefix)
    if end and start >= end:
        raise LimitExceeded(f"start {start[:64]!r} must sort before end {end[:64]!r}")
    return start, end


def after(key: bytes) -> bytes:
    """The smallest key greater than key: where a scan resumes after returning key."""
    return key + b"\x00"
