"""ICE candidates and candidate pairs (RFC 8445 §5.1, §6.1.2), pure and sans-I/O.

This module is the data model the ICE agent builds on:

- :class:`Candidate`, an immutable candidate as it is signalled (RFC 8839 §5.1 fields), with its
  text form in :meth:`Candidate.to_sdp` (the parser, :func:`p2ptun.ice.sdp.parse_candidate`,
  lives with the rest of the grammar in :mod:`p2ptun.ice.sdp`);
- the recommended priority formula (§5.1.2.1) and the RFC 8421 dual-stack local preferences
  (:func:`compute_priority`, :func:`assign_local_preferences`);
- foundations (§5.1.1.3, :func:`compute_foundation`) and constructors of local candidates that
  fill both in (:func:`make_host_candidate`, :func:`make_srflx_candidate`,
  :func:`make_relay_candidate`, :func:`make_prflx_candidate`);
- redundant candidate elimination (§5.1.3, :func:`eliminate_redundant`);
- candidate pairs: which candidates pair (§6.1.2.2, :func:`can_pair`) and their priority
  (§6.1.2.3, :func:`pair_priority`). The check list itself — pairs formed from bases only, in
  priority order, bounded in size (§6.1.2.4) — is :class:`p2ptun.ice.checklist.CheckList`.

Nothing here does I/O, reads a clock or draws randomness. Host addresses are IP literals (the
parser rejects host names, see :mod:`p2ptun.ice.sdp`), normalised with :mod:`ipaddress` so they
compare equal to what the socket layer reports (``2001:db8::1``, never ``2001:DB8:0::1``).
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

from p2ptun.addr import Address

__all__ = [
    "DEFAULT_MAX_PAIRS",
    "MAX_LOCAL_PREFERENCE",
    "MAX_PRIORITY",
    "TYPE_PREFERENCES",
    "Candidate",
    "CandidatePair",
    "CandidateType",
    "PairFoundation",
    "TcpType",
    "Transport",
    "assign_local_preferences",
    "can_pair",
    "candidate_base",
    "compute_foundation",
    "compute_priority",
    "eliminate_redundant",
    "make_host_candidate",
    "make_prflx_candidate",
    "make_relay_candidate",
    "make_srflx_candidate",
    "pair_priority",
    "peer_reflexive_priority",
]


class CandidateType(str, Enum):
    """Candidate types (RFC 8445 §5.1.1; ``cand-type`` in RFC 8839 §5.1)."""

    HOST = "host"
    SRFLX = "srflx"
    PRFLX = "prflx"
    RELAY = "relay"

    @property
    def type_preference(self) -> int:
        """The recommended type preference of RFC 8445 §5.1.2.2."""
        return TYPE_PREFERENCES[self]


class Transport(str, Enum):
    """Candidate transport protocols we can parse (RFC 8839 §5.1 ``transport``).

    p2ptun only uses UDP; TCP candidates (RFC 6544) are parsed so that they can be recognised
    and ignored cleanly (:func:`can_pair` never pairs a TCP candidate with a UDP one).
    """

    UDP = "udp"
    TCP = "tcp"


class TcpType(str, Enum):
    """The ``tcptype`` of an RFC 6544 TCP candidate (§4.5)."""

    ACTIVE = "active"
    PASSIVE = "passive"
    SO = "so"


#: Recommended type preferences, RFC 8445 §5.1.2.2.
TYPE_PREFERENCES: dict[CandidateType, int] = {
    CandidateType.HOST: 126,
    CandidateType.PRFLX: 110,
    CandidateType.SRFLX: 100,
    CandidateType.RELAY: 0,
}

#: Largest local preference (RFC 8445 §5.1.2.1: 0..65535).
MAX_LOCAL_PREFERENCE = 0xFFFF
#: Largest candidate priority (RFC 8445 §5.1.2.1: a positive integer between 1 and 2^31 - 1).
MAX_PRIORITY = 2**31 - 1
#: Default limit on candidate pairs in the check list set (RFC 8445 §6.1.2.4).
DEFAULT_MAX_PAIRS = 100

_ICE_CHARS = re.compile(r"[A-Za-z0-9+/]+")
# RFC 3261 ``token``, which RFC 8839 uses for extension attribute names.
_TOKEN = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")
# RFC 5234 VCHAR: printable ASCII without the space.
_VCHARS = re.compile(r"[\x21-\x7e]+")
# Extension names the grammar itself gives a meaning to; they cannot be generic extensions.
RESERVED_EXTENSION_NAMES = frozenset({"typ", "raddr", "rport", "tcptype"})


def _normalize_ip(host: str, what: str) -> str:
    """``host`` as the canonical text of an IP literal; ValueError if it is not one."""
    if "%" in host:
        raise ValueError(f"{what} {host!r} carries an IPv6 zone, which a candidate cannot")
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        raise ValueError(f"{what} {host!r} is not an IP address") from None


def _ip_version(host: str) -> int:
    return ipaddress.ip_address(host).version


def _is_link_local(host: str) -> bool:
    ip = ipaddress.ip_address(host)
    return ip.version == 6 and ip.is_link_local


@dataclass(frozen=True)
class Candidate:
    """One ICE candidate, local or remote (RFC 8445 §5.1; text form RFC 8839 §5.1).

    Fields mirror the ``candidate`` attribute: ``foundation`` (1–32 ice-chars), ``component``
    (1–256; p2ptun only uses component 1 but carries what it is given), ``transport``,
    ``priority`` (1 .. 2^31-1), ``host``/``port`` (the transport address, ``host`` an IP literal,
    normalised on construction), ``type``, ``related_address``/``related_port`` (``raddr`` and
    ``rport``), ``tcptype`` (required for TCP, forbidden for UDP, RFC 6544 §4.5) and
    ``extensions``: every other ``name value`` pair (``generation``, ``network-id``, ``ufrag``,
    ...) in order, kept verbatim so that unknown ones survive a round-trip.

    The related address follows RFC 8445 §5.1.1.2 / RFC 8839 §5.1: for a server- or
    peer-reflexive candidate it is the candidate's base, for a relayed candidate the mapped
    (server-reflexive) address the TURN server saw; host candidates have none. See
    :func:`candidate_base`.

    Construction validates every field and raises ValueError with a reason;
    :func:`p2ptun.ice.sdp.parse_candidate` turns that into
    :class:`p2ptun.ice.sdp.IceParseError`. Candidates are hashable and compare by value.
    """

    foundation: str
    component: int
    transport: Transport
    priority: int
    host: str
    port: int
    type: CandidateType
    related_address: str | None = None
    related_port: int | None = None
    tcptype: TcpType | None = None
    extensions: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.foundation, str) or not _ICE_CHARS.fullmatch(self.foundation):
            raise ValueError(f"foundation {self.foundation!r} is not 1-32 ice-chars")
        if len(self.foundation) > 32:
            raise ValueError(f"foundation is {len(self.foundation)} characters, at most 32")
        if not isinstance(self.component, int) or not 1 <= self.component <= 256:
            raise ValueError(f"component {self.component!r} is out of range 1-256")
        if not isinstance(self.transport, Transport):
            raise ValueError(f"transport {self.transport!r} is not a Transport")
        if not isinstance(self.priority, int) or not 1 <= self.priority <= MAX_PRIORITY:
            raise ValueError(f"priority {self.priority!r} is out of range 1-{MAX_PRIORITY}")
        if not isinstance(self.host, str):
            raise ValueError(f"host {self.host!r} is not a string")
        object.__setattr__(self, "host", _normalize_ip(self.host, "address"))
        if not isinstance(self.port, int) or not 1 <= self.port <= 65535:
            raise ValueError(f"port {self.port!r} is out of range 1-65535")
        if not isinstance(self.type, CandidateType):
            raise ValueError(f"type {self.type!r} is not a CandidateType")
        if self.related_address is not None:
            if not isinstance(self.related_address, str):
                raise ValueError(f"raddr {self.related_address!r} is not a string")
            object.__setattr__(
                self, "related_address", _normalize_ip(self.related_address, "raddr")
            )
        if self.related_port is not None and (
            not isinstance(self.related_port, int) or not 0 <= self.related_port <= 65535
        ):
            raise ValueError(f"rport {self.related_port!r} is out of range 0-65535")
        if self.transport is Transport.TCP:
            if not isinstance(self.tcptype, TcpType):
                raise ValueError("a TCP candidate needs a tcptype (RFC 6544 §4.5)")
        elif self.tcptype is not None:
            raise ValueError("tcptype is only allowed on TCP candidates")
        if not isinstance(self.extensions, tuple):
            raise ValueError("extensions must be a tuple of (name, value) pairs")
        for item in self.extensions:
            if not (isinstance(item, tuple) and len(item) == 2):
                raise ValueError(f"extension {item!r} is not a (name, value) pair")
            name, value = item
            if not isinstance(name, str) or not _TOKEN.fullmatch(name):
                raise ValueError(f"extension name {name!r} is not a token")
            if name.lower() in RESERVED_EXTENSION_NAMES:
                raise ValueError(f"extension name {name!r} is reserved by the grammar")
            if not isinstance(value, str) or not _VCHARS.fullmatch(value):
                raise ValueError(f"extension {name} has an empty or non-printable value")

    @property
    def address(self) -> Address:
        """The candidate's transport address ``(host, port)``."""
        return (self.host, self.port)

    @property
    def related(self) -> Address | None:
        """``(raddr, rport)`` when both are present, else None."""
        if self.related_address is None or self.related_port is None:
            return None
        return (self.related_address, self.related_port)

    @property
    def ip_version(self) -> int:
        """4 or 6."""
        return _ip_version(self.host)

    def extension(self, name: str) -> str | None:
        """The value of the first extension called ``name`` (case-sensitive), or None."""
        for key, value in self.extensions:
            if key == name:
                return value
        return None

    def to_sdp(self) -> str:
        """The attribute value without ``candidate:`` (RFC 8839 §5.1), as aioice writes it.

        Related address, related port and tcptype come right after the type, then the other
        extensions in their original order: this is the canonical form, which
        :func:`p2ptun.ice.sdp.parse_candidate` reads back to an equal candidate.
        """
        parts = [
            self.foundation,
            str(self.component),
            self.transport.value,
            str(self.priority),
            self.host,
            str(self.port),
            "typ",
            self.type.value,
        ]
        if self.related_address is not None:
            parts += ["raddr", self.related_address]
        if self.related_port is not None:
            parts += ["rport", str(self.related_port)]
        if self.tcptype is not None:
            parts += ["tcptype", self.tcptype.value]
        for name, value in self.extensions:
            parts += [name, value]
        return " ".join(parts)

    def to_attribute(self) -> str:
        """``candidate:<value>``: the attribute as it appears after ``a=`` (RFC 8839 §5.1)."""
        return "candidate:" + self.to_sdp()

    def __str__(self) -> str:
        return self.to_attribute()


# --- priorities (RFC 8445 §5.1.2, RFC 8421) --------------------------------------------------


def compute_priority(
    candidate_type: CandidateType, local_preference: int, component: int = 1
) -> int:
    """Candidate priority by the recommended formula of RFC 8445 §5.1.2.1.

    ``priority = 2^24 * type_preference + 2^8 * local_preference + (256 - component)``, with the
    type preferences of §5.1.2.2 (host 126, prflx 110, srflx 100, relay 0). For example a host
    candidate with local preference 65535 on component 1 has priority
    ``126 * 2^24 + 65535 * 2^8 + 255 = 2130706431``.
    """
    if not 0 <= local_preference <= MAX_LOCAL_PREFERENCE:
        raise ValueError(f"local preference {local_preference} is out of range 0-65535")
    if not 1 <= component <= 256:
        raise ValueError(f"component {component} is out of range 1-256")
    return (candidate_type.type_preference << 24) + (local_preference << 8) + (256 - component)


def peer_reflexive_priority(local: Candidate) -> int:
    """The PRIORITY attribute for a check sent from ``local`` (RFC 8445 §7.1.1).

    The priority the candidate would have as peer-reflexive: the same local preference and
    component (the low 24 bits of a recommended-formula priority), type preference 110.
    """
    return (CandidateType.PRFLX.type_preference << 24) | (local.priority & 0xFFFFFF)


def assign_local_preferences(addresses: Iterable[str]) -> dict[str, int]:
    """Unique local preferences for a host's interface addresses (RFC 8445 §5.1.2.1, RFC 8421).

    ``addresses`` is given most preferred first within each family (e.g. in interface order,
    unreliable interfaces last, RFC 8421 §3). IPv6 is preferred, but the families are
    intermingled so that a broken family cannot starve the other (RFC 8421 §4): first a head
    start of ``(N4 + N6) // N4`` IPv6 addresses, then one IPv4 and one IPv6 address in turn,
    then whatever is left. Preferences count down from 65535 in that order, so each address gets
    a distinct value; candidates gathered through an address (its host candidate and the
    server-reflexive and relayed candidates obtained from it) use the address's preference,
    which keeps local preferences unique per type as §5.1.2.1 requires.

    Example: two IPv4 and six IPv6 addresses get the order v6 v6 v6 v6 v4 v6 v4 v6 and the
    preferences 65535 down to 65528. Duplicates are ignored; the keys are normalised IP text.
    Raises ValueError for a string that is not an IP address.
    """
    v4: list[str] = []
    v6: list[str] = []
    seen: set[str] = set()
    for raw in addresses:
        host = _normalize_ip(raw, "address")
        if host in seen:
            continue
        seen.add(host)
        (v6 if _ip_version(host) == 6 else v4).append(host)
    order: list[str] = []
    if v4:
        head_start = min(len(v6), (len(v4) + len(v6)) // len(v4))
        order += v6[:head_start]
        rest6 = v6[head_start:]
        for i in range(max(len(v4), len(rest6))):
            if i < len(v4):
                order.append(v4[i])
            if i < len(rest6):
                order.append(rest6[i])
    else:
        order = v6
    if len(order) > MAX_LOCAL_PREFERENCE + 1:
        raise ValueError(f"{len(order)} addresses are more than 65536 local preferences")
    return {host: MAX_LOCAL_PREFERENCE - i for i, host in enumerate(order)}


# --- foundations (RFC 8445 §5.1.1.3) ---------------------------------------------------------


def compute_foundation(
    candidate_type: CandidateType,
    base_ip: str,
    server_ip: str | None = None,
    transport: Transport = Transport.UDP,
) -> str:
    """A foundation per RFC 8445 §5.1.1.3: deterministic, 8 hex characters.

    Two candidates get the same foundation exactly when they have the same type, their bases
    have the same IP address (ports do not matter), they were obtained from STUN/TURN servers
    with the same IP address (``server_ip``; None for host and peer-reflexive candidates) and
    over the same transport. Different inputs collide only with the probability of a 32-bit hash
    collision. For relayed candidates, pass as ``base_ip`` the local address the allocation was
    made from, so relays reached through different interfaces get different foundations.
    """
    base = _normalize_ip(base_ip, "base address")
    server = _normalize_ip(server_ip, "server address") if server_ip is not None else "-"
    key = f"{candidate_type.value}|{transport.value}|{base}|{server}".encode("ascii")
    return hashlib.blake2s(key, digest_size=4).hexdigest()


# --- constructing local candidates ------------------------------------------------------------


def make_host_candidate(
    address: Address,
    local_preference: int,
    component: int = 1,
    extensions: tuple[tuple[str, str], ...] = (),
) -> Candidate:
    """A host candidate on a local socket address (RFC 8445 §5.1.1.1); its base is itself."""
    return Candidate(
        foundation=compute_foundation(CandidateType.HOST, address[0]),
        component=component,
        transport=Transport.UDP,
        priority=compute_priority(CandidateType.HOST, local_preference, component),
        host=address[0],
        port=address[1],
        type=CandidateType.HOST,
        extensions=extensions,
    )


def make_srflx_candidate(
    mapped: Address,
    base: Address,
    server_ip: str,
    local_preference: int,
    component: int = 1,
    extensions: tuple[tuple[str, str], ...] = (),
) -> Candidate:
    """A server-reflexive candidate (RFC 8445 §5.1.1.2).

    ``mapped`` is the XOR-MAPPED-ADDRESS a STUN server at ``server_ip`` reported for a request
    sent from ``base``; the related address is the base. ``local_preference`` is the base
    interface's preference (:func:`assign_local_preferences`).
    """
    return Candidate(
        foundation=compute_foundation(CandidateType.SRFLX, base[0], server_ip),
        component=component,
        transport=Transport.UDP,
        priority=compute_priority(CandidateType.SRFLX, local_preference, component),
        host=mapped[0],
        port=mapped[1],
        type=CandidateType.SRFLX,
        related_address=base[0],
        related_port=base[1],
        extensions=extensions,
    )


def make_relay_candidate(
    relayed: Address,
    mapped: Address,
    base_ip: str,
    server_ip: str,
    local_preference: int,
    component: int = 1,
    extensions: tuple[tuple[str, str], ...] = (),
) -> Candidate:
    """A relayed candidate (RFC 8445 §5.1.1.2) from a TURN allocation.

    ``relayed`` is the XOR-RELAYED-ADDRESS, ``mapped`` the XOR-MAPPED-ADDRESS of the allocation
    (signalled as the related address, RFC 8839 §5.1); ``base_ip`` is the local address the
    allocation was made from and ``server_ip`` the TURN server's address (both for the
    foundation). The base of a relayed candidate is the candidate itself.
    """
    return Candidate(
        foundation=compute_foundation(CandidateType.RELAY, base_ip, server_ip),
        component=component,
        transport=Transport.UDP,
        priority=compute_priority(CandidateType.RELAY, local_preference, component),
        host=relayed[0],
        port=relayed[1],
        type=CandidateType.RELAY,
        related_address=mapped[0],
        related_port=mapped[1],
        extensions=extensions,
    )


def make_prflx_candidate(
    address: Address,
    priority: int,
    *,
    base: Address | None = None,
    foundation: str | None = None,
    component: int = 1,
) -> Candidate:
    """A peer-reflexive candidate learnt from a connectivity check (RFC 8445 §7.2.5.3.1, §7.3.1.3).

    Local (from a check's XOR-MAPPED-ADDRESS): pass ``base`` (the local candidate the check was
    sent from, which becomes the related address) and the ``priority`` that was sent in the
    check's PRIORITY attribute; the foundation is computed from the base.

    Remote (from the source of a check we received): pass ``priority`` from the request's
    PRIORITY attribute and a ``foundation`` that differs from those of every other remote
    candidate; ``base`` stays None (we do not know the peer's base).
    """
    if foundation is None:
        if base is None:
            raise ValueError("a peer-reflexive candidate needs a base or a foundation")
        foundation = compute_foundation(CandidateType.PRFLX, base[0])
    return Candidate(
        foundation=foundation,
        component=component,
        transport=Transport.UDP,
        priority=priority,
        host=address[0],
        port=address[1],
        type=CandidateType.PRFLX,
        related_address=base[0] if base is not None else None,
        related_port=base[1] if base is not None else None,
    )


def candidate_base(candidate: Candidate) -> Address | None:
    """The base of a *local* candidate (RFC 8445 §5.1.1): the address checks are sent from.

    Host and relayed candidates are their own base; server- and peer-reflexive candidates carry
    their base as the related address (as the ``make_*`` constructors build them). None for a
    reflexive candidate without a related address (only possible for remote candidates, whose
    base we cannot know anyway).
    """
    if candidate.type in (CandidateType.HOST, CandidateType.RELAY):
        return candidate.address
    return candidate.related


def eliminate_redundant(candidates: Iterable[Candidate]) -> list[Candidate]:
    """Drop redundant local candidates (RFC 8445 §5.1.3).

    A candidate is redundant when another one has the same transport address and the same
    base (and component and transport protocol); of such a group only the highest-priority
    candidate is kept, at the position of the first of the group (ties keep the first). A
    server-reflexive candidate equal to its host candidate (no NAT) is therefore dropped.
    """
    best: dict[tuple[object, ...], Candidate] = {}
    order: list[tuple[object, ...]] = []
    for cand in candidates:
        key = (cand.component, cand.transport, cand.address, candidate_base(cand))
        kept = best.get(key)
        if kept is None:
            order.append(key)
            best[key] = cand
        elif cand.priority > kept.priority:
            best[key] = cand
    return [best[key] for key in order]


# --- candidate pairs (RFC 8445 §6.1.2) --------------------------------------------------------

#: A pair foundation: the local and remote candidate foundations (RFC 8445 §6.1.2.6 — kept as a
#: tuple rather than concatenated, so that different pairs can never run together).
PairFoundation = tuple[str, str]


def pair_priority(controlling_priority: int, controlled_priority: int) -> int:
    """Candidate pair priority, RFC 8445 §6.1.2.3.

    ``2^32 * MIN(G, D) + 2 * MAX(G, D) + (1 if G > D else 0)``, where G is the priority of the
    controlling agent's candidate and D the controlled agent's. Both agents compute the same
    value for the same pair, so their check lists are ordered alike.
    """
    g, d = controlling_priority, controlled_priority
    return (min(g, d) << 32) + 2 * max(g, d) + (1 if g > d else 0)


@dataclass(frozen=True)
class CandidatePair:
    """A local candidate paired with a remote one (RFC 8445 §6.1.2.2).

    Only the two candidates: the agent keeps check state (frozen/waiting/..., nominated, valid)
    alongside, keyed by the pair if it likes (pairs are hashable).
    """

    local: Candidate
    remote: Candidate

    @property
    def foundation(self) -> PairFoundation:
        """``(local.foundation, remote.foundation)`` (RFC 8445 §6.1.2.6)."""
        return (self.local.foundation, self.remote.foundation)

    def priority(self, ice_controlling: bool) -> int:
        """:func:`pair_priority` from this agent's point of view (RFC 8445 §6.1.2.3)."""
        if ice_controlling:
            return pair_priority(self.local.priority, self.remote.priority)
        return pair_priority(self.remote.priority, self.local.priority)


def can_pair(local: Candidate, remote: Candidate) -> bool:
    """Whether RFC 8445 §6.1.2.2 pairs these two candidates.

    Same component, same transport protocol (so TCP candidates never pair with our UDP ones)
    and same IP address family; an IPv6 link-local address pairs only with another link-local
    address (a link-local address cannot reach a global one).
    """
    return (
        local.component == remote.component
        and local.transport is remote.transport
        and local.ip_version == remote.ip_version
        and _is_link_local(local.host) == _is_link_local(remote.host)
    )
