"""NAT behaviour discovery with STUN (RFC 5780), both sides, sans-I/O.

**The server** (:func:`behavior_response`) answers Binding requests on four transport
addresses: its primary address A1:P1, and the three it makes with its alternate address and
port A2:P2 — A1:P2, A2:P1, A2:P2. Every success response carries XOR-MAPPED-ADDRESS,
RESPONSE-ORIGIN (where it is sent from, §7.3) and OTHER-ADDRESS (the address that differs from
the one the request came to in both IP and port, §7.4); a CHANGE-REQUEST (§7.2) moves the
response's source to the other IP and/or the other port (§6.1). The caller sends the response
from the address returned with it.

**The client** asks those addresses (§4), and this module turns the answers into verdicts:

- mapping (§4.3): test I to the primary address gives the mapped address X1 and the
  OTHER-ADDRESS; X1 equal to the local address means no NAT. Test II from the same socket to
  A2:P1: X2 == X1 means endpoint-independent mapping; else test III to A2:P2: X3 == X2 means
  address-dependent, else address-and-port-dependent;
- filtering (§4.4), from a socket that talked to nothing else: test II asks A1:P1 to answer
  from A2:P2 (change IP and port) — an answer means endpoint-independent filtering; else test
  III asks it to answer from A1:P2 (change port) — an answer means address-dependent, else
  address-and-port-dependent;
- hairpinning (§4.5): a Binding request to the mapped address X1 from a second socket behind
  the same NAT arrives at the first, or does not.

Attributes are encoded here rather than in :mod:`p2ptun.stun.attributes`: the codec's known
set is what the other servers check CHANGE-REQUEST against, and a server that cannot honour
it must keep answering 420 (§7.2) so that a client does not take its ordinary answer for one
from the other address.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from p2ptun.addr import Address
from p2ptun.stun.attributes import KNOWN_ATTRIBUTES, decode_address, encode_address
from p2ptun.stun.constants import AttrType, ErrorCode, MessageClass, Method, StunDecodeError
from p2ptun.stun.message import Message
from p2ptun.stun.server import SOFTWARE, error_response, unknown_comprehension_required

CHANGE_REQUEST = 0x0003
"""RFC 5780 §7.2: flags 0x4 change IP, 0x2 change port (comprehension-required)."""
RESPONSE_ORIGIN = 0x802B
"""RFC 5780 §7.3: the address the response was sent from."""
OTHER_ADDRESS = 0x802C
"""RFC 5780 §7.4: the server's address that differs in both IP and port."""
CHANGE_IP = 0x4
CHANGE_PORT = 0x2

#: What the behaviour server understands: everything the codec knows, and CHANGE-REQUEST.
SERVER_KNOWN = KNOWN_ATTRIBUTES | {CHANGE_REQUEST}

_U32 = struct.Struct("!I")


def change_request(change_ip: bool, change_port: bool) -> bytes:
    """The CHANGE-REQUEST value (RFC 5780 §7.2)."""
    return _U32.pack((CHANGE_IP if change_ip else 0) | (CHANGE_PORT if change_port else 0))


def change_flags(request: Message) -> tuple[bool, bool]:
    """(change IP, change port) of a request's CHANGE-REQUEST; raises StunDecodeError if the
    attribute is malformed (§7.2: four bytes)."""
    raw = request.raw(CHANGE_REQUEST)
    if raw is None:
        return False, False
    if len(raw) != 4:
        raise StunDecodeError("CHANGE-REQUEST must be 4 bytes")
    flags = _U32.unpack(raw)[0]
    return bool(flags & CHANGE_IP), bool(flags & CHANGE_PORT)


def _address_attr(message: Message, attr_type: int) -> Address | None:
    raw = message.raw(attr_type)
    if raw is None:
        return None
    try:
        return decode_address(raw, message.transaction_id)
    except StunDecodeError:
        return None


def other_address(response: Message) -> Address | None:
    """OTHER-ADDRESS of a response (None if absent or malformed)."""
    return _address_attr(response, OTHER_ADDRESS)


def response_origin(response: Message) -> Address | None:
    """RESPONSE-ORIGIN of a response (None if absent or malformed)."""
    return _address_attr(response, RESPONSE_ORIGIN)


def binding_request(
    random_bytes: Callable[[int], bytes], *, change_ip: bool = False, change_port: bool = False
) -> Message:
    """A Binding request, with CHANGE-REQUEST when either flag is set."""
    tid = random_bytes(12)
    request = Message.request(Method.BINDING, tid)
    if change_ip or change_port:
        request.add(CHANGE_REQUEST, change_request(change_ip, change_port))
    return request


# -- the server ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerAddresses:
    """The behaviour server's primary address A1:P1 and its alternate A2:P2."""

    primary: Address
    alternate: Address

    def all(self) -> tuple[Address, Address, Address, Address]:
        """A1:P1, A1:P2, A2:P1, A2:P2."""
        (a1, p1), (a2, p2) = self.primary, self.alternate
        return (a1, p1), (a1, p2), (a2, p1), (a2, p2)

    def moved(self, local: Address, change_ip: bool, change_port: bool) -> Address:
        """``local`` (one of :meth:`all`) with its IP and/or port swapped for the other one."""
        (a1, p1), (a2, p2) = self.primary, self.alternate
        ip, port = local
        if change_ip:
            ip = a2 if ip == a1 else a1
        if change_port:
            port = p2 if port == p1 else p1
        return ip, port


def behavior_response(
    data: bytes | bytearray | memoryview,
    source: Address,
    local: Address,
    addresses: ServerAddresses,
    *,
    software: str | None = SOFTWARE,
) -> tuple[bytes, Address] | None:
    """Answer one datagram that came from ``source`` to our ``local`` address (one of
    ``addresses.all()``): the encoded response (with FINGERPRINT) and the address to send it
    from, or None to drop it (not a request, malformed beyond a reply, bad fingerprint).
    Never raises on network input."""
    try:
        request = Message.decode(data)
    except StunDecodeError:
        return None
    if request.message_class != MessageClass.REQUEST:
        return None
    if request.fingerprint is not None and not request.check_fingerprint():
        return None
    extra: list[tuple[int, Any]] = [(AttrType.SOFTWARE, software)] if software else []
    if request.method != Method.BINDING:
        return error_response(request, ErrorCode.BAD_REQUEST, attributes=extra).encode(
            fingerprint=True
        ), local
    unknown = unknown_comprehension_required(request, SERVER_KNOWN)
    if unknown:
        response = error_response(
            request, ErrorCode.UNKNOWN_ATTRIBUTE, unknown_attributes=unknown, attributes=extra
        )
        return response.encode(fingerprint=True), local
    try:
        change_ip, change_port = change_flags(request)
    except StunDecodeError:
        response = error_response(request, ErrorCode.BAD_REQUEST, attributes=extra)
        return response.encode(fingerprint=True), local
    origin = addresses.moved(local, change_ip, change_port)
    tid = request.transaction_id
    response = request.success([(AttrType.XOR_MAPPED_ADDRESS, source)])
    response.add(RESPONSE_ORIGIN, encode_address(origin, tid))
    response.add(OTHER_ADDRESS, encode_address(addresses.moved(local, True, True), tid))
    if software:
        response.add(AttrType.SOFTWARE, software)
    return response.encode(fingerprint=True), origin


def is_binding_request(data: bytes | bytearray | memoryview) -> bool:
    """A cheap look at the header: a STUN Binding request (type 0x0001, the magic cookie)?
    For a shell that hands these to :func:`behavior_response` before its other servers."""
    return (
        len(data) >= 20
        and data[0] == 0
        and data[1] == 1
        and bytes(data[4:8]) == b"\x21\x12\xa4\x42"
    )


# -- the client's verdicts ---------------------------------------------------------------------


class Behaviour(enum.Enum):
    """RFC 4787 §4.1 / §5 behaviours, as RFC 5780 §4.3 and §4.4 find them."""

    NO_NAT = "no-nat"
    ENDPOINT_INDEPENDENT = "endpoint-independent"
    ADDRESS_DEPENDENT = "address-dependent"
    ADDRESS_AND_PORT_DEPENDENT = "address-and-port-dependent"
    UNKNOWN = "unknown"


def mapping_behaviour(
    local: Address | None,
    test1: Address | None,
    test2: Address | None,
    test3: Address | None,
) -> Behaviour:
    """RFC 5780 §4.3 from the mapped addresses of tests I, II and III (None: no answer).
    ``local`` is the socket's own address when known (a host without NAT maps to itself)."""
    if test1 is None:
        return Behaviour.UNKNOWN
    if local is not None and test1 == local:
        return Behaviour.NO_NAT
    if test2 is None:
        return Behaviour.UNKNOWN
    if test2 == test1:
        return Behaviour.ENDPOINT_INDEPENDENT
    if test3 is None:
        return Behaviour.UNKNOWN
    if test3 == test2:
        return Behaviour.ADDRESS_DEPENDENT
    return Behaviour.ADDRESS_AND_PORT_DEPENDENT


def filtering_behaviour(test1: bool, test2: bool, test3: bool) -> Behaviour:
    """RFC 5780 §4.4 from whether tests I (plain), II (change IP and port) and III (change
    port) were answered."""
    if not test1:
        return Behaviour.UNKNOWN
    if test2:
        return Behaviour.ENDPOINT_INDEPENDENT
    if test3:
        return Behaviour.ADDRESS_DEPENDENT
    return Behaviour.ADDRESS_AND_PORT_DEPENDENT


def verdict(
    udp: bool, mapping: Behaviour, filtering: Behaviour, relay_over_stream: bool | None
) -> str:
    """One line for a user: what this host's NAT means for its connections
    (docs/ARCHITECTURE.md §4: direct when hole punching can work, relayed otherwise)."""
    if not udp:
        stream = {
            True: "TURN over TCP/TLS reachable",
            False: "no TURN over TCP/TLS either: no connections",
            None: "no TURN over TCP/TLS configured: no connections",
        }[relay_over_stream]
        return f"UDP blocked: relayed with every peer ({stream})"
    if mapping is Behaviour.NO_NAT:
        return "no NAT (public address): direct with every peer"
    if mapping is Behaviour.ENDPOINT_INDEPENDENT:
        if filtering is Behaviour.ENDPOINT_INDEPENDENT:
            return "easy NAT (full cone): direct with every peer"
        return "easy NAT: direct with most peers (relayed only with some behind hard NATs)"
    if mapping in (Behaviour.ADDRESS_DEPENDENT, Behaviour.ADDRESS_AND_PORT_DEPENDENT):
        return "hard NAT (symmetric): direct only with peers on easy NATs, relayed otherwise"
    return "NAT behaviour unknown: the STUN server does not do RFC 5780 (no OTHER-ADDRESS)"


__all__ = [
    "CHANGE_REQUEST",
    "OTHER_ADDRESS",
    "RESPONSE_ORIGIN",
    "SERVER_KNOWN",
    "Behaviour",
    "ServerAddresses",
    "behavior_response",
    "binding_request",
    "change_flags",
    "change_request",
    "filtering_behaviour",
    "is_binding_request",
    "mapping_behaviour",
    "other_address",
    "response_origin",
    "verdict",
]
