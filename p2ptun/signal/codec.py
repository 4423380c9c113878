"""Bounded binary reading and writing for signaling messages.

All integers are big-endian (network order). Strings are UTF-8 with a length prefix (8 or 16
bits); byte strings have a 16-bit length prefix. :class:`Reader` raises only
:class:`~p2ptun.signal.errors.SignalDecodeError`, so decoders built on it never leak
``struct.error``, ``IndexError`` or ``UnicodeDecodeError``.
"""

from __future__ import annotations

import re
import struct

from p2ptun.signal.errors import SignalDecodeError

NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
"""Node names, exactly as :data:`p2ptun.config.NAME_RE` allows them (1-63 characters)."""
MAX_NAME_LEN = 63

_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_U64 = struct.Struct("!Q")


def check_name(name: str) -> str:
    """Return ``name`` if it is a valid node name, else raise :class:`ValueError`."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise ValueError(f"{name!r} is not a valid node name")
    return name


class Writer:
    """Appends fields to a growing buffer; :meth:`getvalue` returns the bytes."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def u8(self, value: int) -> Writer:
        self._buf.append(value)
        return self

    def u16(self, value: int) -> Writer:
        self._buf += _U16.pack(value)
        return self

    def u32(self, value: int) -> Writer:
        self._buf += _U32.pack(value)
        return self

    def u64(self, value: int) -> Writer:
        self._buf += _U64.pack(value)
        return self

    def raw(self, data: bytes) -> Writer:
        self._buf += data
        return self

    def str8(self, text: str) -> Writer:
        data = text.encode("utf-8")
        if len(data) > 0xFF:
            raise ValueError("string longer than 255 bytes")
        self._buf.append(len(data))
        self._buf += data
        return self

    def str16(self, text: str) -> Writer:
        return self.bytes16(text.encode("utf-8"))

    def bytes16(self, data: bytes) -> Writer:
        if len(data) > 0xFFFF:
            raise ValueError("byte string longer than 65535 bytes")
        self._buf += _U16.pack(len(data))
        self._buf += data
        return self

    def name(self, name: str) -> Writer:
        return self.str8(check_name(name))

    def getvalue(self) -> bytes:
        return bytes(self._buf)


class Reader:
    """Reads fields from ``data``; every shortfall or bad value raises SignalDecodeError."""

    __slots__ = ("_data", "_pos")

    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)
        self._pos = 0

    def _take(self, n: int) -> memoryview:
        end = self._pos + n
        if end > len(self._data):
            raise SignalDecodeError("truncated message")
        view = self._data[self._pos : end]
        self._pos = end
        return view

    @property
    def remaining(self) -> int:
        return len(self._data) - self._pos

    def u8(self) -> int:
        return self._take(1)[0]

    def u16(self) -> int:
        value: int = _U16.unpack(self._take(2))[0]
        return value

    def u32(self) -> int:
        value: int = _U32.unpack(self._take(4))[0]
        return value

    def u64(self) -> int:
        value: int = _U64.unpack(self._take(8))[0]
        return value

    def raw(self, n: int) -> bytes:
        return bytes(self._take(n))

    def boolean(self) -> bool:
        value = self.u8()
        if value > 1:
            raise SignalDecodeError("boolean is neither 0 nor 1")
        return value == 1

    def _text(self, data: memoryview) -> str:
        try:
            return str(data, "utf-8")
        except UnicodeDecodeError:
            raise SignalDecodeError("string is not UTF-8") from None

    def str8(self) -> str:
        return self._text(self._take(self.u8()))

    def str16(self, limit: int = 0xFFFF) -> str:
        n = self.u16()
        if n > limit:
            raise SignalDecodeError(f"string of {n} bytes exceeds {limit}")
        return self._text(self._take(n))

    def bytes16(self, limit: int = 0xFFFF) -> bytes:
        n = self.u16()
        if n > limit:
            raise SignalDecodeError(f"byte string of {n} bytes exceeds {limit}")
        return bytes(self._take(n))

    def name(self) -> str:
        text = self.str8()
        if not NAME_RE.fullmatch(text):
            raise SignalDecodeError("invalid node name")
        return text

    def finish(self) -> None:
        """Require that every byte was consumed."""
        if self._pos != len(self._data):
            raise SignalDecodeError(f"{len(self._data) - self._pos} trailing bytes")
