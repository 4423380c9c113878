"""STUN messages: header, attribute list, MESSAGE-INTEGRITY(-SHA256), FINGERPRINT (RFC 8489).

A :class:`Message` holds the method, class, transaction id and the ordered list of
``(attr_type, value)`` pairs with typed values (see :mod:`p2ptun.stun.attributes`). The
three "trailer" attributes MESSAGE-INTEGRITY, MESSAGE-INTEGRITY-SHA256 and FINGERPRINT are not in
that list: :meth:`Message.encode` computes them, and :meth:`Message.decode` records where they
were so :meth:`Message.check_integrity` and :meth:`Message.check_fingerprint` can verify them
over the exact bytes received.
"""

from __future__ import annotations

import hmac
import struct
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from p2ptun.addr import Address
from p2ptun.stun.attributes import (
    DECODERS,
    AddressErrorValue,
    ErrorValue,
    IcmpValue,
    PasswordAlgorithmValue,
    encode_value,
)
from p2ptun.stun.constants import (
    FINGERPRINT_XOR,
    HEADER_LENGTH,
    MAGIC_COOKIE,
    MAGIC_COOKIE_BYTES,
    MAX_ATTRIBUTES,
    REASON_PHRASES,
    AttrType,
    MessageClass,
    Method,
    StunDecodeError,
)

_HEADER = struct.Struct("!HHI12s")
_ATTR_HEAD = struct.Struct("!HH")
_U32 = struct.Struct("!I")
_U16 = struct.Struct("!H")
_PADDING = (b"", b"\x00\x00\x00", b"\x00\x00", b"\x00")

_MI = int(AttrType.MESSAGE_INTEGRITY)
_MI256 = int(AttrType.MESSAGE_INTEGRITY_SHA256)
_FP = int(AttrType.FINGERPRINT)
_TRAILERS = frozenset((_MI, _MI256, _FP))

_METHODS: dict[int, int] = {int(m): m for m in Method}
_CLASSES = tuple(MessageClass)
_MAX_BODY = 0xFFFF & ~3


def message_type(method: int, message_class: int) -> int:
    """The 14-bit message type: method bits M0-M11 interleaved with C0, C1 (RFC 8489 §5)."""
    return (
        (method & 0x000F)
        | ((method & 0x0070) << 1)
        | ((method & 0x0F80) << 2)
        | ((message_class & 1) << 4)
        | ((message_class & 2) << 7)
    )


def split_message_type(mtype: int) -> tuple[int, MessageClass]:
    """Inverse of :func:`message_type`: (method, class)."""
    method = (mtype & 0x000F) | ((mtype & 0x00E0) >> 1) | ((mtype & 0x3E00) >> 2)
    klass = ((mtype >> 4) & 1) | ((mtype >> 7) & 2)
    return _METHODS.get(method, method), _CLASSES[klass]


def is_stun(data: bytes | bytearray | memoryview) -> bool:
    """Cheap demultiplexing test (RFC 8489 §5, RFC 7983): the first byte is 0-3 and bytes
    4-8 carry the magic cookie. Does not validate anything else; :meth:`Message.decode` does.
    (A first byte of 0-3 means methods below 0x100, which covers every method defined.)"""
    return len(data) >= HEADER_LENGTH and data[0] < 4 and data[4:8] == MAGIC_COOKIE_BYTES


def message_length(data: bytes | bytearray | memoryview) -> int | None:
    """Total size of the STUN message starting at ``data[0]`` (header + body), or None if fewer
    than 4 bytes are available. For framing STUN over stream transports (RFC 8489 §6.2.2)."""
    if len(data) < 4:
        return None
    return HEADER_LENGTH + ((data[2] << 8) | data[3])


def random_transaction_id(random_bytes: Callable[[int], bytes]) -> bytes:
    """A transaction id: 96 bits from ``random_bytes`` (RFC 8489 §5 asks for a uniform and
    random choice: the shell passes a CSPRNG such as ``os.urandom``, tests a seeded source).
    Raises ValueError if the source does not return 12 bytes."""
    tid = bytes(random_bytes(12))
    if len(tid) != 12:
        raise ValueError("random_bytes(12) must return 12 bytes")
    return tid


@dataclass(slots=True)
class Message:
    """One STUN message.

    ``attributes`` is the ordered list of ``(attr_type, value)`` pairs, excluding
    MESSAGE-INTEGRITY, MESSAGE-INTEGRITY-SHA256 and FINGERPRINT, and excluding whatever followed
    an integrity attribute on the wire (RFC 8489 §14.5, §14.6: receivers ignore it). Typed
    accessors return the first occurrence of an attribute (RFC 8489 §5: only the first needs to
    be processed); ``get_all`` returns every occurrence.
    """

    method: int
    message_class: MessageClass
    transaction_id: bytes
    attributes: list[tuple[int, Any]] = field(default_factory=list)
    #: Received MESSAGE-INTEGRITY value (HMAC-SHA1), if any.
    message_integrity: bytes | None = field(default=None, compare=False)
    #: Received MESSAGE-INTEGRITY-SHA256 value, if any (16 to 32 bytes).
    message_integrity_sha256: bytes | None = field(default=None, compare=False)
    #: Received FINGERPRINT value, if any.
    fingerprint: int | None = field(default=None, compare=False)
    _raw: bytes | None = field(default=None, compare=False, repr=False)
    _mi_offset: int = field(default=-1, compare=False, repr=False)
    _mi256_offset: int = field(default=-1, compare=False, repr=False)
    _fp_offset: int = field(default=-1, compare=False, repr=False)

    def __post_init__(self) -> None:
        if len(self.transaction_id) != 12:
            raise ValueError("a STUN transaction id is 12 bytes")

    # -- construction ----------------------------------------------------------------------------

    @classmethod
    def request(
        cls, method: int, transaction_id: bytes, attributes: Iterable[tuple[int, Any]] = ()
    ) -> Message:
        """A request with the given attributes."""
        return cls(method, MessageClass.REQUEST, transaction_id, list(attributes))

    @classmethod
    def indication(
        cls, method: int, transaction_id: bytes, attributes: Iterable[tuple[int, Any]] = ()
    ) -> Message:
        """An indication with the given attributes."""
        return cls(method, MessageClass.INDICATION, transaction_id, list(attributes))

    def success(self, attributes: Iterable[tuple[int, Any]] = ()) -> Message:
        """A success response to this request: same method and transaction id."""
        return Message(self.method, MessageClass.SUCCESS, self.transaction_id, list(attributes))

    def error(
        self, code: int, reason: str | None = None, attributes: Iterable[tuple[int, Any]] = ()
    ) -> Message:
        """An error response to this request carrying ERROR-CODE (RFC 8489 §14.8), followed by
        ``attributes``. The reason defaults to the RFC's phrase for the code."""
        if reason is None:
            reason = REASON_PHRASES.get(code, "")
        attrs: list[tuple[int, Any]] = [(AttrType.ERROR_CODE, ErrorValue(code, reason))]
        attrs.extend(attributes)
        return Message(self.method, MessageClass.ERROR, self.transaction_id, attrs)

    def add(self, attr_type: int, value: Any = True) -> Message:
        """Append one attribute; returns ``self`` so calls chain. The value defaults to ``True``,
        what the value-less USE-CANDIDATE and DONT-FRAGMENT take."""
        if attr_type in _TRAILERS:
            raise ValueError("integrity and fingerprint attributes are added by encode()")
        self.attributes.append((attr_type, value))
        return self

    # -- access ------------------------------------------------------------------------------------

    def get(self, attr_type: int, default: Any = None) -> Any:
        """Typed value of the first ``attr_type`` attribute, or ``default``."""
        for t, v in self.attributes:
            if t == attr_type:
                return v
        return default

    def get_all(self, attr_type: int) -> list[Any]:
        """Typed values of every ``attr_type`` attribute, in wire order."""
        return [v for t, v in self.attributes if t == attr_type]

    def __contains__(self, attr_type: object) -> bool:
        return any(t == attr_type for t, _ in self.attributes)

    def types(self) -> Iterator[int]:
        """Attribute types in wire order (trailers excluded)."""
        return (t for t, _ in self.attributes)

    def raw(self, attr_type: int) -> bytes | None:
        """Wire value (unpadded) of the first ``attr_type`` attribute, or None."""
        for t, v in self.attributes:
            if t == attr_type:
                return encode_value(t, v, self.transaction_id)
        return None

    def raw_attributes(self) -> list[tuple[int, bytes]]:
        """Every attribute as ``(type, wire value)``. Values are re-encoded from the typed form,
        so reserved bits and padding come out zero."""
        tid = self.transaction_id
        return [(t, encode_value(t, v, tid)) for t, v in self.attributes]

    @property
    def message_type(self) -> int:
        """The 14-bit message type field."""
        return message_type(self.method, self.message_class)

    @property
    def is_request(self) -> bool:
        return self.message_class == MessageClass.REQUEST

    @property
    def is_indication(self) -> bool:
        return self.message_class == MessageClass.INDICATION

    @property
    def is_response(self) -> bool:
        return self.message_class >= MessageClass.SUCCESS

    # RFC 8489 §14 attributes
    @property
    def mapped_address(self) -> Address | None:
        """MAPPED-ADDRESS (RFC 8489 §14.1)."""
        result: Address | None = self.get(AttrType.MAPPED_ADDRESS)
        return result

    @property
    def xor_mapped_address(self) -> Address | None:
        """XOR-MAPPED-ADDRESS (RFC 8489 §14.2)."""
        result: Address | None = self.get(AttrType.XOR_MAPPED_ADDRESS)
        return result

    @property
    def username(self) -> str | None:
        """USERNAME (RFC 8489 §14.3)."""
        result: str | None = self.get(AttrType.USERNAME)
        return result

    @property
    def userhash(self) -> bytes | None:
        """USERHASH (RFC 8489 §14.4)."""
        result: bytes | None = self.get(AttrType.USERHASH)
        return result

    @property
    def error_code(self) -> ErrorValue | None:
        """ERROR-CODE (RFC 8489 §14.8) as ``(code, reason)``."""
        result: ErrorValue | None = self.get(AttrType.ERROR_CODE)
        return result

    @property
    def realm(self) -> str | None:
        """REALM (RFC 8489 §14.9)."""
        result: str | None = self.get(AttrType.REALM)
        return result

    @property
    def nonce(self) -> str | None:
        """NONCE (RFC 8489 §14.10)."""
        result: str | None = self.get(AttrType.NONCE)
        return result

    @property
    def password_algorithms(self) -> tuple[PasswordAlgorithmValue, ...] | None:
        """PASSWORD-ALGORITHMS (RFC 8489 §14.11)."""
        result: tuple[PasswordAlgorithmValue, ...] | None = self.get(AttrType.PASSWORD_ALGORITHMS)
        return result

    @property
    def password_algorithm(self) -> PasswordAlgorithmValue | None:
        """PASSWORD-ALGORITHM (RFC 8489 §14.12)."""
        result: PasswordAlgorithmValue | None = self.get(AttrType.PASSWORD_ALGORITHM)
        return result

    @property
    def unknown_attributes(self) -> tuple[int, ...] | None:
        """UNKNOWN-ATTRIBUTES (RFC 8489 §14.13)."""
        result: tuple[int, ...] | None = self.get(AttrType.UNKNOWN_ATTRIBUTES)
        return result

    @property
    def software(self) -> str | None:
        """SOFTWARE (RFC 8489 §14.14)."""
        result: str | None = self.get(AttrType.SOFTWARE)
        return result

    @property
    def alternate_server(self) -> Address | None:
        """ALTERNATE-SERVER (RFC 8489 §14.15)."""
        result: Address | None = self.get(AttrType.ALTERNATE_SERVER)
        return result

    # RFC 8445 §16.1 attributes
    @property
    def priority(self) -> int | None:
        """PRIORITY (RFC 8445 §7.1.1)."""
        result: int | None = self.get(AttrType.PRIORITY)
        return result

    @property
    def use_candidate(self) -> bool:
        """USE-CANDIDATE present (RFC 8445 §7.1.2)."""
        return AttrType.USE_CANDIDATE in self

    @property
    def ice_controlling(self) -> int | None:
        """ICE-CONTROLLING tie-breaker (RFC 8445 §7.1.3)."""
        result: int | None = self.get(AttrType.ICE_CONTROLLING)
        return result

    @property
    def ice_controlled(self) -> int | None:
        """ICE-CONTROLLED tie-breaker (RFC 8445 §7.1.3)."""
        result: int | None = self.get(AttrType.ICE_CONTROLLED)
        return result

    # RFC 8656 §18 attributes
    @property
    def channel_number(self) -> int | None:
        """CHANNEL-NUMBER (RFC 8656 §18.1)."""
        result: int | None = self.get(AttrType.CHANNEL_NUMBER)
        return result

    @property
    def lifetime(self) -> int | None:
        """LIFETIME in seconds (RFC 8656 §18.2)."""
        result: int | None = self.get(AttrType.LIFETIME)
        return result

    @property
    def xor_peer_address(self) -> Address | None:
        """First XOR-PEER-ADDRESS (RFC 8656 §18.3)."""
        result: Address | None = self.get(AttrType.XOR_PEER_ADDRESS)
        return result

    @property
    def xor_peer_addresses(self) -> list[Address]:
        """Every XOR-PEER-ADDRESS; CreatePermission may carry several (RFC 8656 §9.1)."""
        return self.get_all(AttrType.XOR_PEER_ADDRESS)

    @property
    def data(self) -> bytes | None:
        """DATA (RFC 8656 §18.4)."""
        result: bytes | None = self.get(AttrType.DATA)
        return result

    @property
    def xor_relayed_address(self) -> Address | None:
        """First XOR-RELAYED-ADDRESS (RFC 8656 §18.5)."""
        result: Address | None = self.get(AttrType.XOR_RELAYED_ADDRESS)
        return result

    @property
    def xor_relayed_addresses(self) -> list[Address]:
        """Every XOR-RELAYED-ADDRESS; a dual-stack allocation has two (RFC 8656 §7.3)."""
        return self.get_all(AttrType.XOR_RELAYED_ADDRESS)

    @property
    def requested_address_family(self) -> int | None:
        """REQUESTED-ADDRESS-FAMILY (RFC 8656 §18.10)."""
        result: int | None = self.get(AttrType.REQUESTED_ADDRESS_FAMILY)
        return result

    @property
    def even_port(self) -> bool | None:
        """EVEN-PORT R bit, or None if absent (RFC 8656 §18.6)."""
        result: bool | None = self.get(AttrType.EVEN_PORT)
        return result

    @property
    def requested_transport(self) -> int | None:
        """REQUESTED-TRANSPORT protocol number (RFC 8656 §18.7)."""
        result: int | None = self.get(AttrType.REQUESTED_TRANSPORT)
        return result

    @property
    def dont_fragment(self) -> bool:
        """DONT-FRAGMENT present (RFC 8656 §18.8)."""
        return AttrType.DONT_FRAGMENT in self

    @property
    def reservation_token(self) -> bytes | None:
        """RESERVATION-TOKEN (RFC 8656 §18.9)."""
        result: bytes | None = self.get(AttrType.RESERVATION_TOKEN)
        return result

    @property
    def additional_address_family(self) -> int | None:
        """ADDITIONAL-ADDRESS-FAMILY (RFC 8656 §18.11), or else its pre-RFC code point."""
        result: int | None = self.get(AttrType.ADDITIONAL_ADDRESS_FAMILY)
        if result is None:
            result = self.get(AttrType.ADDITIONAL_ADDRESS_FAMILY_DRAFT)
        return result

    @property
    def address_error_code(self) -> AddressErrorValue | None:
        """ADDRESS-ERROR-CODE (RFC 8656 §18.12), or else its pre-RFC code point."""
        result: AddressErrorValue | None = self.get(AttrType.ADDRESS_ERROR_CODE)
        if result is None:
            result = self.get(AttrType.ADDRESS_ERROR_CODE_DRAFT)
        return result

    @property
    def icmp(self) -> IcmpValue | None:
        """ICMP (RFC 8656 §18.13)."""
        result: IcmpValue | None = self.get(AttrType.ICMP)
        return result

    # -- encoding ------------------------------------------------------------------------------

    def encode(
        self,
        key: bytes | None = None,
        *,
        sha1: bool = True,
        sha256: bool = False,
        fingerprint: bool = False,
        padding: bytes = b"\x00",
    ) -> bytes:
        """Serialize the message.

        With ``key``, append MESSAGE-INTEGRITY (``sha1``, RFC 8489 §14.5) and/or
        MESSAGE-INTEGRITY-SHA256 (``sha256``, §14.6), each an HMAC over the message so far with
        the length field covering up to and including that attribute. With ``fingerprint``,
        append FINGERPRINT last (§14.7). ``padding`` is the byte that pads values to 4 bytes;
        receivers ignore it (§14), zero is what RFC 8489 asks senders to use.
        """
        tid = self.transaction_id
        buf = bytearray(HEADER_LENGTH)
        mtype = message_type(self.method, self.message_class)
        pad_byte = padding[:1] or b"\x00"
        pad_cache = {0: b"", 1: pad_byte * 3, 2: pad_byte * 2, 3: pad_byte}
        for attr_type, value in self.attributes:
            if attr_type in _TRAILERS:
                raise ValueError("integrity and fingerprint attributes are added by encode()")
            data = encode_value(attr_type, value, tid)
            size = len(data)
            if size > 0xFFFF:
                raise ValueError(f"attribute 0x{attr_type:04x} value too long ({size} bytes)")
            buf += _ATTR_HEAD.pack(attr_type, size)
            buf += data
            buf += pad_cache[size & 3]
        if key is not None:
            if not (sha1 or sha256):
                raise ValueError("a key was given but neither sha1 nor sha256 integrity")
            if sha1:
                _HEADER.pack_into(buf, 0, mtype, len(buf) - HEADER_LENGTH + 24, MAGIC_COOKIE, tid)
                mac = hmac.digest(key, buf, "sha1")
                buf += _ATTR_HEAD.pack(_MI, 20)
                buf += mac
            if sha256:
                _HEADER.pack_into(buf, 0, mtype, len(buf) - HEADER_LENGTH + 36, MAGIC_COOKIE, tid)
                mac = hmac.digest(key, buf, "sha256")
                buf += _ATTR_HEAD.pack(_MI256, 32)
                buf += mac
        if fingerprint:
            _HEADER.pack_into(buf, 0, mtype, len(buf) - HEADER_LENGTH + 8, MAGIC_COOKIE, tid)
            crc = zlib.crc32(buf) ^ FINGERPRINT_XOR
            buf += _ATTR_HEAD.pack(_FP, 4)
            buf += _U32.pack(crc)
        body = len(buf) - HEADER_LENGTH
        if body > _MAX_BODY:
            raise ValueError(f"message too long ({body} bytes of attributes)")
        _HEADER.pack_into(buf, 0, mtype, body, MAGIC_COOKIE, tid)
        return bytes(buf)

    # -- decoding --------------------------------------------------------------------------------

    @classmethod
    def decode(cls, data: bytes | bytearray | memoryview) -> Message:
        """Parse one whole STUN message (RFC 8489 §5, §14, §15).

        ``data`` must be exactly the message (one UDP datagram, or one frame cut with
        :func:`message_length` on a stream). Raises :class:`StunDecodeError` and nothing else
        on malformed input: short header, top bits not zero, wrong cookie, length not a multiple
        of 4 or not matching ``len(data)``, truncated attributes, malformed values of known
        attributes, anything after FINGERPRINT, or more than :data:`MAX_ATTRIBUTES`
        attributes (so one message's cost is bounded). Attributes after MESSAGE-INTEGRITY (other
        than MESSAGE-INTEGRITY-SHA256 and FINGERPRINT) and after MESSAGE-INTEGRITY-SHA256
        (other than FINGERPRINT) are ignored, as §14.5 and §14.6 require.
        """
        if not isinstance(data, bytes):
            data = bytes(data)
        size = len(data)
        if size < HEADER_LENGTH:
            raise StunDecodeError("shorter than a STUN header")
        mtype, length, cookie, tid = _HEADER.unpack_from(data)
        if mtype & 0xC000:
            raise StunDecodeError("top two bits of a STUN message must be zero")
        if cookie != MAGIC_COOKIE:
            raise StunDecodeError("bad magic cookie")
        if length & 3:
            raise StunDecodeError("message length is not a multiple of 4")
        if length + HEADER_LENGTH != size:
            raise StunDecodeError(f"length field {length} does not match {size - 20} bytes")
        method, klass = split_message_type(mtype)
        msg = cls(method, klass, tid)
        attrs = msg.attributes
        decoders = DECODERS
        offset = HEADER_LENGTH
        # 0: plain attributes; 1: after MESSAGE-INTEGRITY; 2: after MESSAGE-INTEGRITY-SHA256
        state = 0
        count = 0
        while offset < size:
            count += 1
            if count > MAX_ATTRIBUTES:
                raise StunDecodeError(f"more than {MAX_ATTRIBUTES} attributes")
            attr_type, attr_len = _ATTR_HEAD.unpack_from(data, offset)
            start = offset + 4
            end = start + attr_len
            following = start + ((attr_len + 3) & ~3)
            if following > size:
                raise StunDecodeError(f"attribute 0x{attr_type:04x} overruns the message")
            if attr_type == _FP:
                if attr_len != 4:
                    raise StunDecodeError("FINGERPRINT must be 4 bytes")
                if following != size:
                    raise StunDecodeError("FINGERPRINT is not the last attribute")
                msg.fingerprint = _U32.unpack_from(data, start)[0]
                msg._fp_offset = offset
            elif attr_type == _MI:
                if state == 0:
                    if attr_len != 20:
                        raise StunDecodeError("MESSAGE-INTEGRITY must be 20 bytes")
                    msg.message_integrity = data[start:end]
                    msg._mi_offset = offset
                    state = 1
            elif attr_type == _MI256:
                if state < 2:
                    if not 16 <= attr_len <= 32 or attr_len & 3:
                        raise StunDecodeError("bad MESSAGE-INTEGRITY-SHA256 length")
                    msg.message_integrity_sha256 = data[start:end]
                    msg._mi256_offset = offset
                    state = 2
            elif state == 0:
                decoder = decoders.get(attr_type)
                value = data[start:end]
                attrs.append((attr_type, value if decoder is None else decoder(value, tid)))
            offset = following
        msg._raw = data
        return msg

    # -- verification ------------------------------------------------------------------------------

    def _signed_prefix(self, offset: int, attr_size: int) -> bytearray:
        """The bytes an integrity attribute at ``offset`` covers: everything before it, with the
        header's length field adjusted to end just after it (RFC 8489 §14.5, §14.6)."""
        raw = self._raw
        assert raw is not None
        prefix = bytearray(raw[:offset])
        _U16.pack_into(prefix, 2, offset + 4 + attr_size - HEADER_LENGTH)
        return prefix

    def check_message_integrity(self, key: bytes) -> bool:
        """Verify MESSAGE-INTEGRITY (HMAC-SHA1, RFC 8489 §14.5) of a decoded message."""
        if self._mi_offset < 0 or self.message_integrity is None:
            return False
        mac = hmac.digest(key, self._signed_prefix(self._mi_offset, 20), "sha1")
        return hmac.compare_digest(mac, self.message_integrity)

    def check_message_integrity_sha256(self, key: bytes) -> bool:
        """Verify MESSAGE-INTEGRITY-SHA256 (RFC 8489 §14.6), truncated or not, of a decoded
        message."""
        value = self.message_integrity_sha256
        if self._mi256_offset < 0 or value is None:
            return False
        prefix = self._signed_prefix(self._mi256_offset, len(value))
        mac = hmac.digest(key, prefix, "sha256")[: len(value)]
        return hmac.compare_digest(mac, value)

    def check_integrity(self, key: bytes) -> bool:
        """Verify the strongest integrity attribute present: MESSAGE-INTEGRITY-SHA256 if there
        is one, else MESSAGE-INTEGRITY (RFC 8489 §9.1.3, §9.2.4). False if there is neither."""
        if self.message_integrity_sha256 is not None:
            return self.check_message_integrity_sha256(key)
        return self.check_message_integrity(key)

    @property
    def has_integrity(self) -> bool:
        """True if MESSAGE-INTEGRITY or MESSAGE-INTEGRITY-SHA256 was received."""
        return self.message_integrity is not None or self.message_integrity_sha256 is not None

    def check_fingerprint(self) -> bool:
        """Verify FINGERPRINT (RFC 8489 §14.7): CRC-32 of everything before it, XOR 0x5354554e.
        False if the message had none."""
        raw = self._raw
        if self._fp_offset < 0 or raw is None or self.fingerprint is None:
            return False
        crc = zlib.crc32(memoryview(raw)[: self._fp_offset]) ^ FINGERPRINT_XOR
        return crc == self.fingerprint


def decode(data: bytes | bytearray | memoryview) -> Message:
    """Shorthand for :meth:`Message.decode`."""
    return Message.decode(data)


def peek_transaction_id(data: bytes | bytearray | memoryview) -> bytes | None:
    """The transaction id of a datagram that looks like STUN, without decoding it."""
    if not is_stun(data):
        return None
    return bytes(data[8:20])
