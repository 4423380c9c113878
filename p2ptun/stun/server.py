"""Server-side helpers: unknown-attribute checks, error responses, a stateless Binding server.

:func:`handle_binding` is the whole embedded STUN server (RFC 8489 §6.3, §7): bytes and the
source address in, response bytes (or None: drop) out. TURN and ICE servers use
:func:`unknown_comprehension_required` and :func:`error_response` for their own requests.
"""

from __future__ import annotations

from collections.abc import Container, Iterable
from typing import Any

from p2ptun import __version__
from p2ptun.addr import Address
from p2ptun.stun.attributes import KNOWN_ATTRIBUTES
from p2ptun.stun.constants import (
    AttrType,
    ErrorCode,
    MessageClass,
    Method,
    StunDecodeError,
)
from p2ptun.stun.message import Message, is_stun, message_length, split_message_type

#: SOFTWARE value the embedded server sends (RFC 8489 §14.14).
SOFTWARE = f"p2ptun {__version__}"


def unknown_comprehension_required(
    message: Message, known: Container[int] = KNOWN_ATTRIBUTES
) -> list[int]:
    """Comprehension-required attribute types (< 0x8000) in ``message`` that are not in
    ``known``, each once, in wire order (RFC 8489 §6.3.1: answer a request with 420 listing
    them in UNKNOWN-ATTRIBUTES; ignore them in indications and responses, §6.3.2, §6.3.3).

    Linear in the number of attributes (a set remembers those already listed), which a decoded
    message bounds by :data:`~p2ptun.stun.constants.MAX_ATTRIBUTES`; so is the answer's
    UNKNOWN-ATTRIBUTES. Every server usage (the Binding server, TURN's requests and Send
    indications over UDP, TCP and TLS, ICE's checks) goes through here."""
    unknown: list[int] = []
    seen: set[int] = set()
    for attr_type, _ in message.attributes:
        if attr_type < 0x8000 and attr_type not in seen and attr_type not in known:
            seen.add(attr_type)
            unknown.append(attr_type)
    return unknown


def error_response(
    request: Message,
    code: int,
    reason: str | None = None,
    *,
    unknown_attributes: Iterable[int] | None = None,
    attributes: Iterable[tuple[int, Any]] = (),
) -> Message:
    """Error response to ``request`` with ERROR-CODE (RFC 8489 §14.8); for 420 pass the
    ``unknown_attributes`` to list in UNKNOWN-ATTRIBUTES (§14.13). Encode it with the key and
    fingerprint the usage calls for."""
    extra: list[tuple[int, Any]] = []
    if unknown_attributes is not None:
        extra.append((AttrType.UNKNOWN_ATTRIBUTES, tuple(unknown_attributes)))
    extra.extend(attributes)
    return request.error(code, reason, extra)


def binding_success(request: Message, source: Address, software: str | None = SOFTWARE) -> Message:
    """Binding success response (RFC 8489 §7.3.1): XOR-MAPPED-ADDRESS of the request's source
    transport address, and SOFTWARE when given."""
    response = request.success([(AttrType.XOR_MAPPED_ADDRESS, source)])
    if software:
        response.add(AttrType.SOFTWARE, software)
    return response


def binding_response(
    request: Message, source: Address, *, software: str | None = SOFTWARE
) -> Message | None:
    """What a plain STUN server answers to a decoded message (RFC 8489 §6.3), or None to drop.

    - not a request (indication, response): None (§6.3.2, §6.3.3);
    - FINGERPRINT present but wrong: None (§7.3);
    - a method other than Binding: 400 (§6.3.1);
    - unknown comprehension-required attributes: 420 with UNKNOWN-ATTRIBUTES (§6.3.1);
    - otherwise the success response with XOR-MAPPED-ADDRESS and SOFTWARE.

    No authentication: the embedded server is the unauthenticated Binding usage (§13).
    """
    if request.message_class != MessageClass.REQUEST:
        return None
    if request.fingerprint is not None and not request.check_fingerprint():
        return None
    extra: list[tuple[int, Any]] = [(AttrType.SOFTWARE, software)] if software else []
    if request.method != Method.BINDING:
        return error_response(request, ErrorCode.BAD_REQUEST, attributes=extra)
    unknown = unknown_comprehension_required(request)
    if unknown:
        return error_response(
            request, ErrorCode.UNKNOWN_ATTRIBUTE, unknown_attributes=unknown, attributes=extra
        )
    return binding_success(request, source, software)


def handle_binding(
    data: bytes | bytearray | memoryview, source: Address, *, software: str | None = SOFTWARE
) -> bytes | None:
    """Stateless Binding server: one received datagram (or stream frame) in, the encoded
    response with FINGERPRINT out, or None when the input must be dropped (not STUN,
    malformed, not a request, bad fingerprint). Never raises on network input.

    A request whose framing is sound but whose known attributes are malformed (say, a USERNAME
    that is not UTF-8) gets 400 Bad Request (RFC 8489 §6.3.1); anything worse is dropped.
    """
    try:
        request = Message.decode(data)
    except StunDecodeError:
        header = _request_header(data)
        if header is None:
            return None
        extra: list[tuple[int, Any]] = [(AttrType.SOFTWARE, software)] if software else []
        return error_response(header, ErrorCode.BAD_REQUEST, attributes=extra).encode(
            fingerprint=True
        )
    response = binding_response(request, source, software=software)
    if response is None:
        return None
    return response.encode(fingerprint=True)


def _request_header(data: bytes | bytearray | memoryview) -> Message | None:
    """An attribute-less request with the method and transaction id of ``data``, if its header
    is a well-formed request header whose length matches; else None."""
    if not is_stun(data) or message_length(data) != len(data) or len(data) & 3:
        return None
    method, klass = split_message_type((data[0] << 8) | data[1])
    if klass != MessageClass.REQUEST:
        return None
    return Message(method, klass, bytes(data[8:20]))
