"""Attribute value codecs (RFC 8489 §14, RFC 8445 §7.1.1, RFC 8656 §18).

Each known attribute type has a decoder ``(value, transaction_id) -> object`` and an encoder
``(object, transaction_id) -> bytes`` working on the attribute *value* only (no type/length
header, no padding). The transaction id is needed by the XOR-ed address attributes.

Python types of decoded values:

========================================  ==============================================
MAPPED-ADDRESS, XOR-MAPPED-ADDRESS,       :data:`p2ptun.addr.Address` ``(host, port)``,
ALTERNATE-SERVER, XOR-PEER-ADDRESS,       host in RFC 5952 text, as glibc's
XOR-RELAYED-ADDRESS                       ``inet_ntop`` writes it
USERNAME, REALM, NONCE, SOFTWARE,         ``str`` (UTF-8)
ALTERNATE-DOMAIN
USERHASH, DATA, RESERVATION-TOKEN,        ``bytes``
MESSAGE-INTEGRITY(-SHA256)
FINGERPRINT, PRIORITY, LIFETIME,          ``int``
CHANNEL-NUMBER, REQUESTED-TRANSPORT,
REQUESTED-ADDRESS-FAMILY,
ADDITIONAL-ADDRESS-FAMILY
ICE-CONTROLLING, ICE-CONTROLLED           ``int`` (64-bit tie-breaker)
USE-CANDIDATE, DONT-FRAGMENT              ``True`` (the attribute has no value)
EVEN-PORT                                 ``bool`` (the R bit)
ERROR-CODE                                :class:`ErrorValue`
ADDRESS-ERROR-CODE                        :class:`AddressErrorValue`
ICMP                                      :class:`IcmpValue`
UNKNOWN-ATTRIBUTES                        ``tuple[int, ...]``
PASSWORD-ALGORITHM                        :class:`PasswordAlgorithmValue`
PASSWORD-ALGORITHMS                       ``tuple[PasswordAlgorithmValue, ...]``
anything else                             ``bytes`` (the raw value)
========================================  ==============================================
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Callable
from typing import Any, NamedTuple

from p2ptun.addr import Address, is_ipv6
from p2ptun.stun.constants import MAGIC_COOKIE, MAGIC_COOKIE_BYTES, AttrType, StunDecodeError

_U8_3X = struct.Struct("!B3x")
_U16 = struct.Struct("!H")
_U16_2X = struct.Struct("!H2x")
_U32 = struct.Struct("!I")
_U64 = struct.Struct("!Q")
_ADDR_HEAD = struct.Struct("!xBH")
_ERROR_HEAD = struct.Struct("!2xBB")
_ADDR_ERROR_HEAD = struct.Struct("!BxBB")
_ICMP = struct.Struct("!2xBBI")
_ALGO_HEAD = struct.Struct("!HH")

_COOKIE_HIGH = MAGIC_COOKIE >> 16
_U16X8 = struct.Struct("!8H")


class ErrorValue(NamedTuple):
    """ERROR-CODE (RFC 8489 §14.8): a code 300-699 and a UTF-8 reason phrase."""

    code: int
    reason: str = ""


class AddressErrorValue(NamedTuple):
    """ADDRESS-ERROR-CODE (RFC 8656 §18.12): the family the error is about, a code, a reason."""

    family: int
    code: int
    reason: str = ""


class IcmpValue(NamedTuple):
    """ICMP (RFC 8656 §18.13): type, code and 32 bits of error data of a relayed ICMP packet."""

    icmp_type: int
    icmp_code: int
    data: int = 0


class PasswordAlgorithmValue(NamedTuple):
    """One entry of PASSWORD-ALGORITHM(S) (RFC 8489 §14.11, §14.12)."""

    algorithm: int
    parameters: bytes = b""


Decoder = Callable[[bytes, bytes], Any]
Encoder = Callable[[Any, bytes], bytes]


def _fail(what: str) -> StunDecodeError:
    return StunDecodeError(what)


# -- addresses (RFC 8489 §14.1, §14.2) ----------------------------------------------------------


#: Address texts and packed addresses remembered (the same few peers recur on every check).
_ADDRESS_CACHE = 1024
_packed: dict[str, tuple[int, bytes]] = {}
_texts: dict[bytes, str] = {}


def _pack_host(host: str) -> tuple[int, bytes]:
    """(family, packed address) for a literal IP; a ``%scope`` suffix is dropped."""
    entry = _packed.get(host)
    if entry is not None:
        return entry
    text = host.split("%", 1)[0] if "%" in host else host
    try:
        if is_ipv6(text):
            entry = 2, ipaddress.IPv6Address(text).packed
        else:
            entry = 1, ipaddress.IPv4Address(text).packed
    except ValueError:
        raise ValueError(f"{text!r} is not a literal IP address") from None
    if len(_packed) >= _ADDRESS_CACHE:
        _packed.clear()
    _packed[host] = entry
    return entry


def _host_text(packed: bytes) -> str:
    """The text of a packed IPv4 (4 bytes) or IPv6 (16 bytes) address."""
    text = _texts.get(packed)
    if text is None:
        text = _ipv4_text(packed) if len(packed) == 4 else _ipv6_text(packed)
        if len(_texts) >= _ADDRESS_CACHE:
            _texts.clear()
        _texts[packed] = text
    return text


def _ipv4_text(packed: bytes) -> str:
    return f"{packed[0]}.{packed[1]}.{packed[2]}.{packed[3]}"


def _ipv6_text(packed: bytes) -> str:
    """RFC 5952 §4 text, as glibc's ``inet_ntop`` writes it: lower-case hex without leading
    zeros, the longest run of two or more zero fields (the first of equal runs) as ``::``, and
    an IPv4-mapped (``::ffff:a.b.c.d``) or IPv4-compatible (``::a.b.c.d``) address with its
    last 32 bits in dotted decimal."""
    words = _U16X8.unpack(packed)
    best, best_len, i = -1, 1, 0
    while i < 8:
        if words[i]:
            i += 1
            continue
        j = i + 1
        while j < 8 and not words[j]:
            j += 1
        if j - i > best_len:
            best, best_len = i, j - i
        i = j
    if best == 0 and (best_len == 6 or (best_len == 5 and words[5] == 0xFFFF)):
        return ("::ffff:" if best_len == 5 else "::") + _ipv4_text(packed[12:])
    if best < 0:
        return ":".join([f"{w:x}" for w in words])
    head = ":".join([f"{w:x}" for w in words[:best]])
    tail = ":".join([f"{w:x}" for w in words[best + best_len :]])
    return f"{head}::{tail}"


def decode_address(value: bytes, transaction_id: bytes) -> Address:
    """MAPPED-ADDRESS / ALTERNATE-SERVER (RFC 8489 §14.1, §14.15)."""
    n = len(value)
    if n < 4:
        raise _fail("address attribute too short")
    family, port = _ADDR_HEAD.unpack_from(value)
    if (family == 1 and n == 8) or (family == 2 and n == 20):
        return _host_text(bytes(value[4:])), port
    raise _fail(f"bad address family {family} or length {n}")


def encode_address(value: Address, transaction_id: bytes) -> bytes:
    host, port = value
    family, packed = _pack_host(host)
    return _ADDR_HEAD.pack(family, port) + packed


def decode_xor_address(value: bytes, transaction_id: bytes) -> Address:
    """XOR-MAPPED-ADDRESS and friends (RFC 8489 §14.2): port XOR the cookie's high 16 bits,
    address XOR the cookie (IPv4) or the cookie followed by the transaction id (IPv6)."""
    n = len(value)
    if n < 4:
        raise _fail("address attribute too short")
    family, xport = _ADDR_HEAD.unpack_from(value)
    port = xport ^ _COOKIE_HIGH
    if family == 1 and n == 8:
        addr = _U32.unpack_from(value, 4)[0] ^ MAGIC_COOKIE
        return _host_text(_U32.pack(addr)), port
    if family == 2 and n == 20:
        mask = int.from_bytes(MAGIC_COOKIE_BYTES + transaction_id, "big")
        addr = int.from_bytes(value[4:20], "big") ^ mask
        return _host_text(addr.to_bytes(16, "big")), port
    raise _fail(f"bad address family {family} or length {n}")


def encode_xor_address(value: Address, transaction_id: bytes) -> bytes:
    host, port = value
    family, packed = _pack_host(host)
    head = _ADDR_HEAD.pack(family, port ^ _COOKIE_HIGH)
    if family == 1:
        return head + _U32.pack(_U32.unpack(packed)[0] ^ MAGIC_COOKIE)
    mask = int.from_bytes(MAGIC_COOKIE_BYTES + transaction_id, "big")
    return head + (int.from_bytes(packed, "big") ^ mask).to_bytes(16, "big")


# -- simple scalars ------------------------------------------------------------------------------


def _decode_text(value: bytes, transaction_id: bytes) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise _fail("text attribute is not UTF-8") from None


def _encode_text(value: str, transaction_id: bytes) -> bytes:
    return value.encode("utf-8")


def _decode_bytes(value: bytes, transaction_id: bytes) -> bytes:
    return value


def _encode_bytes(value: bytes, transaction_id: bytes) -> bytes:
    return bytes(value)


def _fixed_bytes(size: int) -> Decoder:
    def decode(value: bytes, transaction_id: bytes) -> bytes:
        if len(value) != size:
            raise _fail(f"attribute must be {size} bytes, got {len(value)}")
        return value

    return decode


def _decode_u32(value: bytes, transaction_id: bytes) -> int:
    if len(value) != 4:
        raise _fail("32-bit attribute must be 4 bytes")
    result: int = _U32.unpack(value)[0]
    return result


def _encode_u32(value: int, transaction_id: bytes) -> bytes:
    return _U32.pack(value)


def _decode_u64(value: bytes, transaction_id: bytes) -> int:
    if len(value) != 8:
        raise _fail("64-bit attribute must be 8 bytes")
    result: int = _U64.unpack(value)[0]
    return result


def _encode_u64(value: int, transaction_id: bytes) -> bytes:
    return _U64.pack(value)


def _decode_u16_2x(value: bytes, transaction_id: bytes) -> int:
    """CHANNEL-NUMBER (RFC 8656 §18.1): 16 bits, then 16 RFFU bits."""
    if len(value) != 4:
        raise _fail("attribute must be 4 bytes")
    result: int = _U16_2X.unpack(value)[0]
    return result


def _encode_u16_2x(value: int, transaction_id: bytes) -> bytes:
    return _U16_2X.pack(value)


def _decode_u8_3x(value: bytes, transaction_id: bytes) -> int:
    """REQUESTED-TRANSPORT, (ADDITIONAL-/REQUESTED-)ADDRESS-FAMILY: 8 bits then 24 RFFU bits."""
    if len(value) != 4:
        raise _fail("attribute must be 4 bytes")
    result: int = _U8_3X.unpack(value)[0]
    return result


def _encode_u8_3x(value: int, transaction_id: bytes) -> bytes:
    return _U8_3X.pack(value)


def _decode_flag(value: bytes, transaction_id: bytes) -> bool:
    """USE-CANDIDATE (RFC 8445 §7.1.2), DONT-FRAGMENT (RFC 8656 §18.8): no value."""
    if value:
        raise _fail("flag attribute must be empty")
    return True


def _encode_flag(value: object, transaction_id: bytes) -> bytes:
    return b""


def _decode_even_port(value: bytes, transaction_id: bytes) -> bool:
    """EVEN-PORT (RFC 8656 §18.6): one byte, the top bit is R (reserve the next port)."""
    if len(value) != 1:
        raise _fail("EVEN-PORT must be 1 byte")
    return bool(value[0] & 0x80)


def _encode_even_port(value: bool, transaction_id: bytes) -> bytes:
    return b"\x80" if value else b"\x00"


# -- structured ----------------------------------------------------------------------------------


def _decode_error(value: bytes, transaction_id: bytes) -> ErrorValue:
    """ERROR-CODE (RFC 8489 §14.8): 21 reserved bits, class (3 bits), number, reason."""
    if len(value) < 4:
        raise _fail("ERROR-CODE too short")
    klass, number = _ERROR_HEAD.unpack_from(value)
    klass &= 0x07
    if not 3 <= klass <= 6 or number > 99:
        raise _fail(f"bad ERROR-CODE class {klass} number {number}")
    return ErrorValue(klass * 100 + number, _decode_text(value[4:], transaction_id))


def _encode_error(value: ErrorValue | tuple[int, str], transaction_id: bytes) -> bytes:
    code, reason = value
    if not 300 <= code <= 699:
        raise ValueError(f"error code {code} is not in 300-699")
    return _ERROR_HEAD.pack(code // 100, code % 100) + reason.encode("utf-8")


def _decode_address_error(value: bytes, transaction_id: bytes) -> AddressErrorValue:
    """ADDRESS-ERROR-CODE (RFC 8656 §18.12): family, 11 reserved bits, class, number, reason."""
    if len(value) < 4:
        raise _fail("ADDRESS-ERROR-CODE too short")
    family, klass, number = _ADDR_ERROR_HEAD.unpack_from(value)
    klass &= 0x07
    if not 3 <= klass <= 6 or number > 99:
        raise _fail(f"bad ADDRESS-ERROR-CODE class {klass} number {number}")
    reason = _decode_text(value[4:], transaction_id)
    return AddressErrorValue(family, klass * 100 + number, reason)


def _encode_address_error(
    value: AddressErrorValue | tuple[int, int, str], transaction_id: bytes
) -> bytes:
    family, code, reason = value
    if not 300 <= code <= 699:
        raise ValueError(f"error code {code} is not in 300-699")
    return _ADDR_ERROR_HEAD.pack(family, code // 100, code % 100) + reason.encode("utf-8")


def _decode_icmp(value: bytes, transaction_id: bytes) -> IcmpValue:
    """ICMP (RFC 8656 §18.13): 16 reserved bits, type, code, 32 bits of error data."""
    if len(value) != 8:
        raise _fail("ICMP must be 8 bytes")
    icmp_type, icmp_code, data = _ICMP.unpack(value)
    return IcmpValue(icmp_type, icmp_code, data)


def _encode_icmp(value: IcmpValue | tuple[int, int, int], transaction_id: bytes) -> bytes:
    icmp_type, icmp_code, data = value
    return _ICMP.pack(icmp_type, icmp_code, data)


def _decode_unknown_attributes(value: bytes, transaction_id: bytes) -> tuple[int, ...]:
    """UNKNOWN-ATTRIBUTES (RFC 8489 §14.9): a list of 16-bit attribute types."""
    if len(value) & 1:
        raise _fail("UNKNOWN-ATTRIBUTES has an odd length")
    return tuple(t for (t,) in _U16.iter_unpack(value))


def _encode_unknown_attributes(value: tuple[int, ...] | list[int], transaction_id: bytes) -> bytes:
    return b"".join(_U16.pack(t) for t in value)


def _parse_algorithm(value: bytes, offset: int) -> tuple[PasswordAlgorithmValue, int]:
    if offset + 4 > len(value):
        raise _fail("truncated password algorithm")
    algorithm, plen = _ALGO_HEAD.unpack_from(value, offset)
    start = offset + 4
    end = start + plen
    padded = start + ((plen + 3) & ~3)
    if padded > len(value):
        raise _fail("truncated password algorithm parameters")
    return PasswordAlgorithmValue(algorithm, value[start:end]), padded


def _pack_algorithm(value: PasswordAlgorithmValue | tuple[int, bytes]) -> bytes:
    algorithm, params = value
    pad = -len(params) & 3
    return _ALGO_HEAD.pack(algorithm, len(params)) + params + b"\x00" * pad


def _decode_password_algorithm(value: bytes, transaction_id: bytes) -> PasswordAlgorithmValue:
    """PASSWORD-ALGORITHM (RFC 8489 §14.12): algorithm, parameter length, parameters."""
    result, end = _parse_algorithm(value, 0)
    if end != len(value):
        raise _fail("trailing bytes in PASSWORD-ALGORITHM")
    return result


def _encode_password_algorithm(value: PasswordAlgorithmValue, transaction_id: bytes) -> bytes:
    return _pack_algorithm(value)


def _decode_password_algorithms(
    value: bytes, transaction_id: bytes
) -> tuple[PasswordAlgorithmValue, ...]:
    """PASSWORD-ALGORITHMS (RFC 8489 §14.11): a list of PASSWORD-ALGORITHM bodies."""
    out = []
    offset = 0
    while offset < len(value):
        algorithm, offset = _parse_algorithm(value, offset)
        out.append(algorithm)
    return tuple(out)


def _encode_password_algorithms(
    value: tuple[PasswordAlgorithmValue, ...] | list[PasswordAlgorithmValue], transaction_id: bytes
) -> bytes:
    return b"".join(_pack_algorithm(a) for a in value)


def _decode_mi_sha256(value: bytes, transaction_id: bytes) -> bytes:
    """MESSAGE-INTEGRITY-SHA256 (RFC 8489 §14.6): 16 to 32 bytes, a multiple of 4."""
    if not 16 <= len(value) <= 32 or len(value) & 3:
        raise _fail("bad MESSAGE-INTEGRITY-SHA256 length")
    return value


A = AttrType

#: Decoders by attribute type. Types missing here decode to their raw ``bytes``.
DECODERS: dict[int, Decoder] = {
    A.MAPPED_ADDRESS: decode_address,
    A.ALTERNATE_SERVER: decode_address,
    A.XOR_MAPPED_ADDRESS: decode_xor_address,
    A.XOR_PEER_ADDRESS: decode_xor_address,
    A.XOR_RELAYED_ADDRESS: decode_xor_address,
    A.USERNAME: _decode_text,
    A.REALM: _decode_text,
    A.NONCE: _decode_text,
    A.SOFTWARE: _decode_text,
    A.ALTERNATE_DOMAIN: _decode_text,
    A.USERHASH: _fixed_bytes(32),
    A.MESSAGE_INTEGRITY: _fixed_bytes(20),
    A.MESSAGE_INTEGRITY_SHA256: _decode_mi_sha256,
    A.FINGERPRINT: _decode_u32,
    A.ERROR_CODE: _decode_error,
    A.UNKNOWN_ATTRIBUTES: _decode_unknown_attributes,
    A.PASSWORD_ALGORITHMS: _decode_password_algorithms,
    A.PASSWORD_ALGORITHM: _decode_password_algorithm,
    A.PRIORITY: _decode_u32,
    A.USE_CANDIDATE: _decode_flag,
    A.ICE_CONTROLLED: _decode_u64,
    A.ICE_CONTROLLING: _decode_u64,
    A.CHANNEL_NUMBER: _decode_u16_2x,
    A.LIFETIME: _decode_u32,
    A.DATA: _decode_bytes,
    A.REQUESTED_ADDRESS_FAMILY: _decode_u8_3x,
    A.EVEN_PORT: _decode_even_port,
    A.REQUESTED_TRANSPORT: _decode_u8_3x,
    A.DONT_FRAGMENT: _decode_flag,
    A.RESERVATION_TOKEN: _fixed_bytes(8),
    A.ADDITIONAL_ADDRESS_FAMILY: _decode_u8_3x,
    A.ADDITIONAL_ADDRESS_FAMILY_DRAFT: _decode_u8_3x,
    A.ADDRESS_ERROR_CODE_DRAFT: _decode_address_error,
    A.ADDRESS_ERROR_CODE: _decode_address_error,
    A.ICMP: _decode_icmp,
}

#: Encoders by attribute type. Types missing here take ``bytes`` values, written as they are.
ENCODERS: dict[int, Encoder] = {
    A.MAPPED_ADDRESS: encode_address,
    A.ALTERNATE_SERVER: encode_address,
    A.XOR_MAPPED_ADDRESS: encode_xor_address,
    A.XOR_PEER_ADDRESS: encode_xor_address,
    A.XOR_RELAYED_ADDRESS: encode_xor_address,
    A.USERNAME: _encode_text,
    A.REALM: _encode_text,
    A.NONCE: _encode_text,
    A.SOFTWARE: _encode_text,
    A.ALTERNATE_DOMAIN: _encode_text,
    A.FINGERPRINT: _encode_u32,
    A.ERROR_CODE: _encode_error,
    A.UNKNOWN_ATTRIBUTES: _encode_unknown_attributes,
    A.PASSWORD_ALGORITHMS: _encode_password_algorithms,
    A.PASSWORD_ALGORITHM: _encode_password_algorithm,
    A.PRIORITY: _encode_u32,
    A.USE_CANDIDATE: _encode_flag,
    A.ICE_CONTROLLED: _encode_u64,
    A.ICE_CONTROLLING: _encode_u64,
    A.CHANNEL_NUMBER: _encode_u16_2x,
    A.LIFETIME: _encode_u32,
    A.REQUESTED_ADDRESS_FAMILY: _encode_u8_3x,
    A.EVEN_PORT: _encode_even_port,
    A.REQUESTED_TRANSPORT: _encode_u8_3x,
    A.DONT_FRAGMENT: _encode_flag,
    A.ADDITIONAL_ADDRESS_FAMILY: _encode_u8_3x,
    A.ADDITIONAL_ADDRESS_FAMILY_DRAFT: _encode_u8_3x,
    A.ADDRESS_ERROR_CODE: _encode_address_error,
    A.ADDRESS_ERROR_CODE_DRAFT: _encode_address_error,
    A.ICMP: _encode_icmp,
}

#: Every attribute type this codec understands (for RFC 8489 §6.3.1 unknown-attribute checks).
KNOWN_ATTRIBUTES: frozenset[int] = frozenset(int(t) for t in AttrType)


def decode_value(attr_type: int, value: bytes, transaction_id: bytes) -> Any:
    """Typed value of one attribute; raises :class:`StunDecodeError` if it is malformed."""
    decoder = DECODERS.get(attr_type)
    if decoder is None:
        return value
    return decoder(value, transaction_id)


def encode_value(attr_type: int, value: Any, transaction_id: bytes) -> bytes:
    """Wire value (unpadded) of one attribute; raises ValueError/TypeError for a bad value."""
    encoder = ENCODERS.get(attr_type)
    if encoder is None:
        if not isinstance(value, bytes | bytearray | memoryview):
            raise TypeError(f"attribute 0x{attr_type:04x} needs a bytes value")
        return bytes(value)
    try:
        return encoder(value, transaction_id)
    except struct.error as exc:
        raise ValueError(f"bad value for attribute 0x{attr_type:04x}: {exc}") from None
