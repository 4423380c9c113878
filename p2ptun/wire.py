"""Bounded binary fields: the one writer and reader under the signaling messages and the
membership documents (certificates, grants, invites, revocation lists).

Integers are big-endian (network order). A string is UTF-8 behind a one- or two-byte length; a
byte string behind a two-byte length; an IP address or prefix is its version (4 or 6), its 4 or
16 bytes and a prefix length.

:class:`WireReader` never leaks ``struct.error``, ``IndexError`` or ``UnicodeDecodeError``:
every shortfall or bad value goes through :meth:`WireReader.error`, which each user overrides
to raise its own decode error (signaling's, membership's), so that a caller catches one class.
"""

from __future__ import annotations

import ipaddress
import re
import struct

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
"""Node, network and group names: the node names of the config (1-63 characters)."""
MAX_NAME_LEN = 63

_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_U64 = struct.Struct("!Q")


def check_name(name: str, what: str = "name") -> str:
    """``name`` if it is a valid node, network or group name, else :class:`ValueError`."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise ValueError(
            f"{name!r} is not a valid {what} (1-63 characters: a-z, 0-9, '.', '_', '-', "
            "starting with a letter or digit)"
        )
    return name


class WireWriter:
    """Appends fields to a growing buffer; :meth:`getvalue` returns the bytes."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def u8(self, value: int) -> WireWriter:
        self._buf.append(value)
        return self

    def u16(self, value: int) -> WireWriter:
        self._buf += _U16.pack(value)
        return self

    def u32(self, value: int) -> WireWriter:
        self._buf += _U32.pack(value)
        return self

    def u64(self, value: int) -> WireWriter:
        self._buf += _U64.pack(value)
        return self

    def raw(self, data: bytes) -> WireWriter:
        self._buf += data
        return self

    def str8(self, text: str) -> WireWriter:
        data = text.encode("utf-8")
        if len(data) > 0xFF:
            raise ValueError("string longer than 255 bytes")
        self._buf.append(len(data))
        self._buf += data
        return self

    def str16(self, text: str) -> WireWriter:
        return self.bytes16(text.encode("utf-8"))

    def bytes16(self, data: bytes) -> WireWriter:
        if len(data) > 0xFFFF:
            raise ValueError("byte string longer than 65535 bytes")
        self._buf += _U16.pack(len(data))
        self._buf += data
        return self

    def name(self, name: str, what: str = "node name") -> WireWriter:
        return self.str8(check_name(name, what))

    def ip(self, value: IPInterface | IPNetwork) -> WireWriter:
        """An address with its prefix length, or a network (its address and prefix)."""
        if isinstance(value, ipaddress.IPv4Network | ipaddress.IPv6Network):
            address: ipaddress.IPv4Address | ipaddress.IPv6Address = value.network_address
            prefix = value.prefixlen
        else:
            address = value.ip
            prefix = value.network.prefixlen
        self._buf.append(value.version)
        self._buf += address.packed
        self._buf.append(prefix)
        return self

    def getvalue(self) -> bytes:
        return bytes(self._buf)


class WireReader:
    """Reads fields from ``data``; every shortfall or bad value raises ``self.error(...)``."""

    __slots__ = ("_data", "_pos")

    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)
        self._pos = 0

    def error(self, problem: str) -> Exception:
        """The decode error to raise for ``problem`` (subclasses name their own class)."""
        return ValueError(problem)

    @property
    def position(self) -> int:
        return self._pos

    @property
    def remaining(self) -> int:
        return len(self._data) - self._pos

    def slice(self, start: int, end: int) -> bytes:
        return bytes(self._data[start:end])

    def _take(self, n: int) -> memoryview:
        end = self._pos + n
        if end > len(self._data):
            raise self.error("truncated")
        view = self._data[self._pos : end]
        self._pos = end
        return view

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
            raise self.error("a boolean is neither 0 nor 1")
        return value == 1

    def _text(self, data: memoryview) -> str:
        try:
            return str(data, "utf-8")
        except UnicodeDecodeError:
            raise self.error("a string is not UTF-8") from None

    def str8(self) -> str:
        return self._text(self._take(self.u8()))

    def str16(self, limit: int = 0xFFFF) -> str:
        n = self.u16()
        if n > limit:
            raise self.error(f"a string of {n} bytes exceeds {limit}")
        return self._text(self._take(n))

    def bytes16(self, limit: int = 0xFFFF) -> bytes:
        n = self.u16()
        if n > limit:
            raise self.error(f"a field of {n} bytes exceeds {limit}")
        return bytes(self._take(n))

    def name(self, what: str = "node name") -> str:
        text = self.str8()
        if not NAME_RE.fullmatch(text):
            raise self.error(f"invalid {what} {text[:70]!r}")
        return text

    def _address(self) -> tuple[bytes, int]:
        version = self.u8()
        if version not in (4, 6):
            raise self.error(f"IP version {version}")
        packed = self.raw(4 if version == 4 else 16)
        prefix = self.u8()
        if prefix > (32 if version == 4 else 128):
            raise self.error(f"prefix length {prefix} for IPv{version}")
        return packed, prefix

    def interface(self) -> IPInterface:
        packed, prefix = self._address()
        return ipaddress.ip_interface(f"{ipaddress.ip_address(packed)}/{prefix}")

    def network(self) -> IPNetwork:
        packed, prefix = self._address()
        ip = ipaddress.ip_address(packed)
        try:
            return ipaddress.ip_network(f"{ip}/{prefix}")
        except ValueError:
            raise self.error(f"route {ip}/{prefix} has host bits set") from None

    def finish(self) -> None:
        """Require that every byte was consumed."""
        if self._pos != len(self._data):
            raise self.error(f"{len(self._data) - self._pos} trailing bytes")
