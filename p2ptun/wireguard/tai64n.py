"""TAI64N timestamps for handshake initiations (whitepaper §5.1, §5.4.2).

A TAI64N label is 12 bytes: a big-endian 64-bit TAI second count offset by 2^62, then a
big-endian 32-bit nanosecond count. WireGuard only needs the labels to increase from one
initiation to the next, and compares them as byte strings. Like other implementations we add
the 10-second TAI−UTC offset of 1972 to the UNIX time (without leap seconds) and round the
nanoseconds down to a multiple of 2^24 ns (about 16.8 ms), so the label does not reveal the
sender's clock at finer grain than the initiation rate limit (50 per second) needs.
"""

from __future__ import annotations

import math
import struct

TAI64N_LEN = 12
TAI64_EPOCH = (1 << 62) + 10
"""The TAI64 label of 1970-01-01 00:00:00 UTC, as WireGuard counts it."""
NANOSECOND_GRAIN = 1 << 24
"""Nanosecond values are rounded down to a multiple of this."""

_TAI64N = struct.Struct(">QI")


def encode(unix_time: float) -> bytes:
    """The whitened TAI64N label of a UNIX time in seconds (``time.time()``)."""
    if not math.isfinite(unix_time) or unix_time < 0:
        raise ValueError("UNIX time must be a non-negative finite number")
    seconds = int(unix_time)
    nanos = min(int((unix_time - seconds) * 1e9), 999_999_999)
    nanos -= nanos % NANOSECOND_GRAIN
    return _TAI64N.pack(TAI64_EPOCH + seconds, nanos)


def decode(label: bytes) -> tuple[int, int]:
    """``(unix_seconds, nanoseconds)`` of a 12-byte label; ValueError if it is not 12 bytes."""
    if len(label) != TAI64N_LEN:
        raise ValueError("TAI64N label must be 12 bytes")
    seconds, nanos = _TAI64N.unpack(label)
    return seconds - TAI64_EPOCH, nanos


def is_newer(label: bytes, than: bytes) -> bool:
    """True if ``label`` is strictly later than ``than`` (big-endian byte comparison)."""
    return label > than
