"""The bounded binary encoding shared by certificates, grants, invites and revocation lists,
and their text forms.

Integers are big-endian. A string is UTF-8 behind a one-byte length; a byte string behind a
two-byte length; an IP address is its version (4 or 6), its 4 or 16 bytes and a prefix length.
:class:`Reader` raises only :class:`~p2ptun.membership.errors.MembershipDecodeError`.

Text forms: a certificate or revocation list is armored like PEM (``-----BEGIN P2PTUN
CERTIFICATE-----``, base64 lines, ``-----END ...``); an invite is one line, a prefix and
unpadded URL-safe base64, so that it survives a chat window or a terminal.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
import struct

from p2ptun.membership.errors import MembershipDecodeError

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
"""Node, network and group names: the node names of the config (1-63 characters)."""
DNS_LABEL_RE = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")

_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_U64 = struct.Struct("!Q")

MAX_ARMORED = 64 * 1024
"""Longest text form read (certificates are a few hundred bytes, revocation lists at most
tens of kilobytes)."""


def check_name(name: str, what: str = "name") -> str:
    """``name`` if it is a valid node, network or group name, else ValueError."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise ValueError(
            f"{name!r} is not a valid {what} (1-63 characters: a-z, 0-9, '.', '_', '-', "
            "starting with a letter or digit)"
        )
    return name


class Writer:
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

    def bytes16(self, data: bytes) -> Writer:
        if len(data) > 0xFFFF:
            raise ValueError("byte string longer than 65535 bytes")
        self._buf += _U16.pack(len(data))
        self._buf += data
        return self

    def ip(self, value: IPInterface | IPNetwork) -> Writer:
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


class Reader:
    """Reads fields of ``what`` (named in errors); every shortfall or bad value raises
    MembershipDecodeError."""

    __slots__ = ("_data", "_pos", "what")

    def __init__(self, data: bytes, what: str) -> None:
        self._data = memoryview(data)
        self._pos = 0
        self.what = what

    def error(self, problem: str) -> MembershipDecodeError:
        return MembershipDecodeError(f"not a valid {self.what}: {problem}")

    @property
    def position(self) -> int:
        return self._pos

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

    def str8(self) -> str:
        data = self._take(self.u8())
        try:
            return str(data, "utf-8")
        except UnicodeDecodeError:
            raise self.error("a string is not UTF-8") from None

    def bytes16(self, limit: int) -> bytes:
        n = self.u16()
        if n > limit:
            raise self.error(f"a field of {n} bytes exceeds {limit}")
        return bytes(self._take(n))

    def name(self, what: str) -> str:
        text = self.str8()
        if not NAME_RE.fullmatch(text):
            raise self.error(f"invalid {what} {text[:70]!r}")
        return text

    def _address(self) -> tuple[int, bytes, int]:
        version = self.u8()
        if version not in (4, 6):
            raise self.error(f"IP version {version}")
        packed = self.raw(4 if version == 4 else 16)
        prefix = self.u8()
        if prefix > (32 if version == 4 else 128):
            raise self.error(f"prefix length {prefix} for IPv{version}")
        return version, packed, prefix

    def interface(self) -> IPInterface:
        _version, packed, prefix = self._address()
        ip = ipaddress.ip_address(packed)
        return ipaddress.ip_interface(f"{ip}/{prefix}")

    def network(self) -> IPNetwork:
        _version, packed, prefix = self._address()
        ip = ipaddress.ip_address(packed)
        try:
            return ipaddress.ip_network(f"{ip}/{prefix}")
        except ValueError:
            raise self.error(f"route {ip}/{prefix} has host bits set") from None

    def finish(self) -> None:
        if self._pos != len(self._data):
            raise self.error(f"{len(self._data) - self._pos} trailing bytes")


# -- text forms ----------------------------------------------------------------------------------


def armor(label: str, data: bytes) -> str:
    """PEM-like text: BEGIN line, base64 in lines of 64, END line (ends with a newline)."""
    b64 = base64.b64encode(data).decode("ascii")
    lines = [b64[i : i + 64] for i in range(0, len(b64), 64)]
    return "\n".join([f"-----BEGIN {label}-----", *lines, f"-----END {label}-----"]) + "\n"


_ARMOR_RE = re.compile(r"-----BEGIN ([A-Z0-9 ]{1,40})-----(.*?)-----END \1-----", re.S)


def dearmor(text: str, label: str, what: str) -> bytes:
    """The bytes inside the first armored block of ``text``, which must carry ``label``."""
    if len(text) > MAX_ARMORED:
        raise MembershipDecodeError(f"not a valid {what}: longer than {MAX_ARMORED} characters")
    match = _ARMOR_RE.search(text)
    if match is None:
        raise MembershipDecodeError(
            f"not a valid {what}: no '-----BEGIN {label}-----' ... '-----END {label}-----' block"
        )
    if match.group(1) != label:
        raise MembershipDecodeError(
            f"not a valid {what}: this is a {match.group(1).lower()}, not a {label.lower()}"
        )
    body = "".join(match.group(2).split())
    try:
        return base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        raise MembershipDecodeError(f"not a valid {what}: the base64 inside is damaged") from None


def encode_token(prefix: str, data: bytes) -> str:
    """One line: ``prefix`` and unpadded URL-safe base64."""
    return prefix + base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def decode_token(text: str, prefix: str, what: str, limit: int = 4096) -> bytes:
    text = text.strip()
    if not text.startswith(prefix):
        raise MembershipDecodeError(f"not a valid {what}: it does not start with {prefix!r}")
    body = text[len(prefix) :]
    if len(body) > limit or not re.fullmatch(r"[A-Za-z0-9_-]*", body):
        raise MembershipDecodeError(f"not a valid {what}: damaged (cut or changed when copied?)")
    try:
        return base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    except (binascii.Error, ValueError):
        raise MembershipDecodeError(
            f"not a valid {what}: damaged (cut or changed when copied?)"
        ) from None
