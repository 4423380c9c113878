"""The rendezvous cluster's envelope (p2ptun.signal.cluster): round trips, bounds, and
hostile bytes that only ever raise SignalDecodeError."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2ptun.signal.cluster import (
    MAGIC,
    MAX_WATCHING,
    Forward,
    NodeDown,
    NodeUp,
    RevocationsChanged,
    decode_cluster,
    encode_cluster,
)
from p2ptun.signal.errors import SignalDecodeError

names = st.from_regex(r"[a-z0-9][a-z0-9._-]{0,20}", fullmatch=True)
instances = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=64)
messages = st.one_of(
    st.builds(
        NodeUp,
        instances,
        names,
        st.frozensets(names, max_size=20),
        st.one_of(st.none(), st.text("0123456789abcdef", min_size=1, max_size=64)),
        st.binary(max_size=300),
    ),
    st.builds(NodeDown, instances, names),
    st.builds(Forward, instances, names, names, st.binary(max_size=2000)),
    st.builds(
        RevocationsChanged,
        instances,
        st.text("0123456789abcdef", max_size=64),
        st.binary(max_size=500),
    ),
)


@given(messages)
def test_round_trip(msg: NodeUp | NodeDown | Forward | RevocationsChanged) -> None:
    data = encode_cluster(msg)
    assert decode_cluster(data) == msg
    with pytest.raises(SignalDecodeError):
        decode_cluster(data[:-1])


@given(st.binary(max_size=400))
def test_hostile_bytes_only_raise_decode_errors(data: bytes) -> None:
    for blob in (data, MAGIC + data):
        with contextlib.suppress(SignalDecodeError):
            decode_cluster(blob)


@given(messages, st.integers(min_value=0, max_value=400), st.integers(0, 255))
def test_corrupted_messages_decode_or_are_refused(
    msg: NodeUp | NodeDown | Forward | RevocationsChanged, where: int, value: int
) -> None:
    data = bytearray(encode_cluster(msg))
    data[where % len(data)] = value
    with contextlib.suppress(SignalDecodeError):
        decode_cluster(bytes(data))


def test_bounds() -> None:
    too_many = frozenset(f"n{i}" for i in range(MAX_WATCHING + 1))
    with pytest.raises(ValueError):
        encode_cluster(NodeUp("a", "x", too_many))
    with pytest.raises(ValueError):
        encode_cluster(NodeDown("", "x"))
    with pytest.raises(SignalDecodeError, match="too long"):
        decode_cluster(MAGIC + bytes(300_000))
    with pytest.raises(SignalDecodeError, match="unknown"):
        decode_cluster(MAGIC + bytes([9, 1]) + b"a")
