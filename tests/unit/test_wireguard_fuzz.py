"""Fuzzing: WireGuard decoders raise only WireGuardDecodeError, and a device never crashes."""

from __future__ import annotations

import contextlib
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from p2ptun.keys import clamp
from p2ptun.wireguard import Device
from p2ptun.wireguard.errors import WireGuardDecodeError
from p2ptun.wireguard.messages import decode, decode_transport_header, message_type

_SIZES = [148, 92, 64, 32, 48]


def _datagrams() -> st.SearchStrategy[bytes]:
    """Random bytes, plus bytes that pass the header check with plausible lengths."""
    shaped = st.builds(
        lambda kind, size, body: bytes([kind, 0, 0, 0]) + body[: max(size - 4, 0)],
        st.integers(0, 6),
        st.sampled_from(_SIZES) | st.integers(0, 200),
        st.binary(min_size=0, max_size=200),
    )
    return st.binary(max_size=300) | shaped


@settings(max_examples=600, deadline=None)
@given(_datagrams())
def test_decoders_raise_only_decode_error(data: bytes) -> None:
    for fn in (decode, message_type, decode_transport_header):
        with contextlib.suppress(WireGuardDecodeError):
            fn(data)


_R = random.Random(3)
_DEVICE = Device(clamp(_R.randbytes(32)), rng=_R.randbytes, wall_clock=lambda: 1e9)
_PEER = _DEVICE.add_peer(clamp(_R.randbytes(32)), allowed_ips=["10.0.0.0/24"])


@settings(max_examples=400, deadline=None)
@given(_datagrams(), st.booleans())
def test_device_drops_garbage_without_raising(data: bytes, under_load: bool) -> None:
    _DEVICE.under_load = under_load
    assert _DEVICE.receive_datagram(data, 1.0, ("192.0.2.1", 1)) is None
    assert _PEER.pop_packets() == []
