"""A received request id header is cleaned by the module docstring's rules, whatever it
holds: a value already clean comes back as it is, anything else part by part."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st
from shardkv.common.requestid import MAX_FORWARDED, MAX_ID_CHARS, from_header

SAFE = "ABCXYZabcxyz0189._:@/-"


def reference(value: str) -> str:
    """The rules spelled out: at most MAX_FORWARDED + 1 comma-separated parts; a "+N" part
    kept, any other cut to MAX_ID_CHARS with every unsafe character replaced by "_"."""
    parts = value.split(",")[: MAX_FORWARDED + 1]
    cleaned = [
        part
        if re.fullmatch(r"\+[0-9]{1,9}", part)
        else re.sub(r"[^A-Za-z0-9._:@/-]", "_", part[:MAX_ID_CHARS])
        for part in parts
    ]
    return ",".join(cleaned)


ids = st.text(SAFE, min_size=0, max_size=MAX_ID_CHARS + 3)
omitted = st.integers(0, 10**10).map(lambda n: f"+{n}")
parts = st.one_of(ids, omitted, st.text(max_size=8), st.sampled_from(["", "+", "+-1", "a b"]))


@given(st.lists(parts, min_size=1, max_size=MAX_FORWARDED + 4))
def test_forwarded_lists_are_cleaned_by_the_rules(listed: list[str]) -> None:
    value = ",".join(listed)
    assert from_header(value) == reference(value)


@given(st.text(max_size=200))
def test_any_text_is_cleaned_by_the_rules(value: str) -> None:
    assert from_header(value) == reference(value)


def test_examples() -> None:
    clean = ",".join(f"r{i}" for i in range(MAX_FORWARDED)) + ",+3"
    assert from_header(clean) == clean
    assert from_header(clean + ",extra") == clean
    assert from_header("a" * (MAX_ID_CHARS + 1)) == "a" * MAX_ID_CHARS
    assert from_header("id with\nnewline,+2") == "id_with_newline,+2"
    assert from_header("+1234567890") == "_1234567890"
    assert from_header("a,+\u0663") == "a,__"  # "+N" in ASCII digits only
