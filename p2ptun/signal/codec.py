"""Bounded binary reading and writing for signaling messages.

The fields are those of :mod:`p2ptun.wire` (big-endian integers, length-prefixed UTF-8 and
byte strings). :class:`Reader` raises only :class:`~p2ptun.signal.errors.SignalDecodeError`, so
decoders built on it never leak ``struct.error``, ``IndexError`` or ``UnicodeDecodeError``.
"""

from __future__ import annotations

from p2ptun import wire
from p2ptun.signal.errors import SignalDecodeError
from p2ptun.wire import MAX_NAME_LEN, NAME_RE
from p2ptun.wire import WireWriter as Writer

__all__ = ["MAX_NAME_LEN", "NAME_RE", "Reader", "Writer", "check_name"]


def check_name(name: str) -> str:
    """Return ``name`` if it is a valid node name, else raise :class:`ValueError`."""
    return wire.check_name(name, "node name")


class Reader(wire.WireReader):
    """Reads fields from ``data``; every shortfall or bad value raises SignalDecodeError."""

    __slots__ = ()

    def error(self, problem: str) -> SignalDecodeError:
        return SignalDecodeError(problem)
