"""The sealed RelayGrant: a peer relay's TURN server and credentials for one peer."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2ptun.signal.errors import SignalDecodeError
from p2ptun.signal.messages import MAX_TEXT
from p2ptun.signal.negotiation import Negotiation, NegotiationState
from p2ptun.signal.seal import (
    Offer,
    RelayGrant,
    SealedBody,
    decode_body,
    encode_body,
)

short = st.text(max_size=200)
grants = st.builds(RelayGrant, short, short, short, st.integers(0, 2**64 - 1))


@given(grants, st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1))
def test_round_trip(grant: RelayGrant, counter: int, ts: int) -> None:
    body = SealedBody(counter, ts, grant)
    assert decode_body(encode_body(body)) == body


@given(grants, st.data())
@settings(max_examples=500)
def test_mutated_grants_raise_only_decode_errors(grant: RelayGrant, data: st.DataObject) -> None:
    wire = bytearray(encode_body(SealedBody(1, 2, grant)))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(wire) - 1))
        wire[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(wire)))
    for blob in (bytes(wire), bytes(wire[:cut]), bytes(wire) + b"\0"):
        with contextlib.suppress(SignalDecodeError):
            decode_body(blob)


def test_fields_are_bounded_both_ways() -> None:
    with pytest.raises(ValueError):
        encode_body(SealedBody(1, 2, RelayGrant("x" * (MAX_TEXT + 1), "u", "p")))
    good = encode_body(SealedBody(1, 2, RelayGrant("turn:192.0.2.2:3479", "u", "p")))
    # A length field that claims more than MAX_TEXT is refused before reading.
    at = good.index(b"turn:") - 2
    bad = good[:at] + (MAX_TEXT + 1).to_bytes(2, "big") + good[at + 2 :]
    with pytest.raises(SignalDecodeError):
        decode_body(bad)


def test_negotiation_passes_a_grant_in_any_state_and_keeps_its_state() -> None:
    n = Negotiation(b"\x01" * 32, b"\x02" * 32)
    grant = RelayGrant("turn:192.0.2.2:3479?transport=udp", "1900000000:bob", "pw")
    assert n.on_receive(grant) is not None
    assert n.state is NegotiationState.IDLE
    n.on_send(grant)
    assert n.state is NegotiationState.IDLE
    n.on_send(Offer(7, "desc"))
    accepted = n.on_receive(grant)
    assert accepted is not None and accepted.message == grant
    assert n.state is NegotiationState.OFFERING and n.session == 7
    assert "pw" not in repr(grant)
