"""The text form of ICE parameters: RFC 8839 attribute grammar, parsed strictly.

What one agent signals to the other is an :class:`IceDescription` — ufrag and password,
ICE-lite flag, ICE options, candidates and end-of-candidates — written as newline-separated
SDP attribute lines (RFC 8839 §5, RFC 8840 §9 for trickled fragments)::

    a=ice-ufrag:Tm9kZQ
    a=ice-pwd:c2VjcmV0LXNlY3JldC1zZWNyZXQ
    a=ice-options:trickle
    a=candidate:1 1 udp 2130706431 192.0.2.1 50000 typ host
    a=end-of-candidates

Parsing accepts lines with or without the leading ``a=`` and never raises anything but
:class:`IceParseError` (a :class:`p2ptun.errors.DecodeError`), with a reason that names what is
wrong. Input is bounded: :data:`MAX_LINE_LENGTH` characters per candidate line,
:data:`MAX_DESCRIPTION_LENGTH` per description, :data:`MAX_CANDIDATES` candidates.

Well-formed candidates that p2ptun cannot use raise the subclass
:class:`UnsupportedCandidateError` from :func:`parse_candidate`, and are skipped (and counted)
by :meth:`IceDescription.parse`, as RFC 8839 §5.1 asks for unknown transports and types:

- a transport other than UDP or TCP (TCP candidates, RFC 6544, *are* parsed; the agent does not
  pair them with its UDP candidates);
- a candidate type other than host, srflx, prflx, relay;
- a connection address that is a host name rather than an IP literal. Decision: p2ptun does not
  resolve candidate names. Peers that hide their addresses behind mDNS ``.local`` names
  (browsers) or FQDNs are still reached through the peer-reflexive candidates their checks
  create (RFC 8445 §7.3.1.3), and the sans-I/O core never has to do DNS lookups on names an
  untrusted peer chose.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from p2ptun.addr import is_hostname, is_ip
from p2ptun.errors import DecodeError
from p2ptun.ice.candidate import (
    MAX_PRIORITY,
    RESERVED_EXTENSION_NAMES,
    Candidate,
    CandidateType,
    TcpType,
    Transport,
)

__all__ = [
    "MAX_CANDIDATES",
    "MAX_DESCRIPTION_LENGTH",
    "MAX_EXTENSIONS",
    "MAX_LINE_LENGTH",
    "PWD_MAX_LENGTH",
    "PWD_MIN_LENGTH",
    "UFRAG_MAX_LENGTH",
    "UFRAG_MIN_LENGTH",
    "IceCredentials",
    "IceDescription",
    "IceParseError",
    "UnsupportedCandidateError",
    "generate_credentials",
    "parse_candidate",
    "validate_pwd",
    "validate_ufrag",
]

#: Longest candidate line accepted (real ones are under 200 characters).
MAX_LINE_LENGTH = 1024
#: Most ``name value`` extension pairs accepted on one candidate line.
MAX_EXTENSIONS = 32
#: Most candidate lines accepted in one description.
MAX_CANDIDATES = 100
#: Longest description text accepted.
MAX_DESCRIPTION_LENGTH = 128 * 1024
# Most non-candidate lines accepted in one description (ufrag, pwd, options, unknown ...).
_MAX_OTHER_LINES = 32

#: ``ufrag = 4*256ice-char`` (RFC 8839 §5.4).
UFRAG_MIN_LENGTH = 4
UFRAG_MAX_LENGTH = 256
#: ``password = 22*256ice-char`` (RFC 8839 §5.4).
PWD_MIN_LENGTH = 22
PWD_MAX_LENGTH = 256

_ICE_CHARS = re.compile(r"[A-Za-z0-9+/]+")
_TOKEN = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")
_BAD_CHAR = re.compile(r"[^\x20-\x7e]")
# Looks like an IPv4 address but is not one (``1.2.3``, ``01.2.3.4``): not a host name either.
_DIGITS_AND_DOTS = re.compile(r"[0-9.]+")


class IceParseError(DecodeError):
    """Text that is not valid RFC 8839 ICE attribute syntax (or exceeds our bounds)."""


class UnsupportedCandidateError(IceParseError):
    """A well-formed candidate p2ptun cannot use: unknown transport or type, or a host name.

    RFC 8839 §5.1 says such candidates are ignored; :meth:`IceDescription.parse` skips them.
    """


def _check_chars(text: str, what: str) -> None:
    bad = _BAD_CHAR.search(text)
    if bad is not None:
        raise IceParseError(
            f"{what} contains the non-printable or non-ASCII character {bad.group()!r} "
            f"at position {bad.start()}"
        )


def _number(text: str, what: str, max_digits: int) -> int:
    if not text.isascii() or not text.isdigit():
        raise IceParseError(f"{what} {text!r} is not a decimal number")
    if len(text) > max_digits:
        raise IceParseError(f"{what} {text!r} has more than {max_digits} digits")
    return int(text)


def _address(text: str, what: str) -> tuple[str | None, str | None]:
    """``(ip, None)`` for an IP literal, ``(None, reason)`` for a host name; else raise."""
    if is_ip(text):
        if "%" in text:
            raise IceParseError(f"{what} {text!r} carries an IPv6 zone, which SDP cannot")
        return text, None
    if is_hostname(text) and not _DIGITS_AND_DOTS.fullmatch(text):
        kind = "an mDNS name" if text.lower().rstrip(".").endswith(".local") else "a host name"
        return None, f"{what} {text!r} is {kind}; p2ptun only uses IP addresses"
    raise IceParseError(f"{what} {text!r} is neither an IP address nor a host name")


def _strip_candidate_prefix(text: str) -> str:
    if text.startswith("a="):
        text = text[2:]
        if not text.startswith("candidate:"):
            raise IceParseError("attribute is not 'candidate:'")
    if text.startswith("candidate:"):
        text = text[len("candidate:") :]
    return text


def parse_candidate(text: str) -> Candidate:
    """Parse one candidate (RFC 8839 §5.1): ``a=candidate:...``, ``candidate:...`` or bare.

    Grammar: ``foundation component transport priority address port typ type [raddr a]
    [rport p] *(name value)``, fields separated by single spaces; surrounding whitespace and a
    line ending are ignored. Keywords, transport and type are case-insensitive (ABNF strings);
    ``raddr``/``rport``/``tcptype`` are accepted anywhere among the extensions (implementations
    differ), at most once each. Addresses are normalised (:class:`Candidate`).

    Raises :class:`UnsupportedCandidateError` for a well-formed line with an unknown transport
    or type or a host-name address, :class:`IceParseError` for anything else wrong — and
    nothing else.
    """
    if not isinstance(text, str):
        raise IceParseError(f"candidate must be text, not {type(text).__name__}")
    if len(text) > MAX_LINE_LENGTH:
        raise IceParseError(f"candidate line is {len(text)} characters, at most {MAX_LINE_LENGTH}")
    text = text.strip(" \t\r\n")
    _check_chars(text, "candidate")
    return _parse_candidate_value(_strip_candidate_prefix(text))


def _parse_candidate_value(value: str) -> Candidate:
    """Parse the attribute value after ``candidate:`` (printable ASCII already checked)."""
    fields = value.split(" ")
    if "" in fields:
        raise IceParseError("candidate has an empty field (fields are separated by one space)")
    if len(fields) < 8:
        raise IceParseError(f"candidate has {len(fields)} fields, at least 8 are needed")
    if len(fields) % 2 != 0:
        raise IceParseError(f"candidate extension {fields[-1]!r} has no value")
    if (len(fields) - 8) // 2 > MAX_EXTENSIONS:
        raise IceParseError(f"candidate has more than {MAX_EXTENSIONS} extensions")
    foundation, component_text, transport_text, priority_text, host, port_text, typ, kind = fields[
        :8
    ]
    unsupported: str | None = None

    if not _ICE_CHARS.fullmatch(foundation) or len(foundation) > 32:
        raise IceParseError(f"foundation {foundation!r} is not 1-32 ice-chars")
    component = _number(component_text, "component", 3)
    if not 1 <= component <= 256:
        raise IceParseError(f"component {component} is out of range 1-256")
    if not _TOKEN.fullmatch(transport_text):
        raise IceParseError(f"transport {transport_text!r} is not a token")
    transport: Transport | None
    try:
        transport = Transport(transport_text.lower())
    except ValueError:
        transport = None
        unsupported = f"transport {transport_text!r} is not supported"
    priority = _number(priority_text, "priority", 10)
    if not 1 <= priority <= MAX_PRIORITY:
        raise IceParseError(f"priority {priority} is out of range 1-{MAX_PRIORITY}")
    ip, name_reason = _address(host, "connection address")
    unsupported = unsupported or name_reason
    port = _number(port_text, "port", 5)
    if not 1 <= port <= 65535:
        raise IceParseError(f"port {port} is out of range 1-65535")
    if typ.lower() != "typ":
        raise IceParseError(f"expected 'typ' after the port, found {typ!r}")
    if not _TOKEN.fullmatch(kind):
        raise IceParseError(f"candidate type {kind!r} is not a token")
    cand_type: CandidateType | None
    try:
        cand_type = CandidateType(kind.lower())
    except ValueError:
        cand_type = None
        unsupported = unsupported or f"candidate type {kind!r} is not supported"

    related_address: str | None = None
    related_port: int | None = None
    tcptype_text: str | None = None
    extensions: list[tuple[str, str]] = []
    seen: set[str] = set()
    for i in range(8, len(fields), 2):
        name, val = fields[i], fields[i + 1]
        if not _TOKEN.fullmatch(name):
            raise IceParseError(f"extension name {name!r} is not a token")
        key = name.lower()
        if key in RESERVED_EXTENSION_NAMES:
            if key in seen:
                raise IceParseError(f"{key!r} appears twice")
            seen.add(key)
        if key == "typ":
            raise IceParseError("'typ' appears twice")
        if key == "raddr":
            related_address, reason = _address(val, "raddr")
            unsupported = unsupported or reason
        elif key == "rport":
            related_port = _number(val, "rport", 5)
            if related_port > 65535:
                raise IceParseError(f"rport {related_port} is out of range 0-65535")
        elif key == "tcptype":
            tcptype_text = val
        else:
            extensions.append((name, val))

    tcptype: TcpType | None = None
    if tcptype_text is not None:
        try:
            tcptype = TcpType(tcptype_text.lower())
        except ValueError:
            raise IceParseError(f"tcptype {tcptype_text!r} is not active, passive or so") from None
    if unsupported is not None:
        raise UnsupportedCandidateError(unsupported)
    assert transport is not None and cand_type is not None and ip is not None
    try:
        return Candidate(
            foundation=foundation,
            component=component,
            transport=transport,
            priority=priority,
            host=ip,
            port=port,
            type=cand_type,
            related_address=related_address,
            related_port=related_port,
            tcptype=tcptype,
            extensions=tuple(extensions),
        )
    except ValueError as exc:
        raise IceParseError(f"invalid candidate: {exc}") from None


def validate_ufrag(ufrag: str) -> str:
    """Return ``ufrag`` if it is 4–256 ice-chars (RFC 8839 §5.4), else raise IceParseError."""
    return _validate_secret(ufrag, "ice-ufrag", UFRAG_MIN_LENGTH, UFRAG_MAX_LENGTH)


def validate_pwd(pwd: str) -> str:
    """Return ``pwd`` if it is 22–256 ice-chars (RFC 8839 §5.4), else raise IceParseError."""
    return _validate_secret(pwd, "ice-pwd", PWD_MIN_LENGTH, PWD_MAX_LENGTH)


def _validate_secret(value: str, what: str, low: int, high: int) -> str:
    if not isinstance(value, str):
        raise IceParseError(f"{what} must be text")
    if not low <= len(value) <= high:
        raise IceParseError(f"{what} is {len(value)} characters, must be {low}-{high}")
    if not _ICE_CHARS.fullmatch(value):
        raise IceParseError(f"{what} may only contain letters, digits, '+' and '/'")
    return value


@dataclass(frozen=True)
class IceCredentials:
    """An ICE username fragment and password (RFC 8445 §5.3), validated on construction."""

    ufrag: str
    pwd: str = field(repr=False)

    def __post_init__(self) -> None:
        validate_ufrag(self.ufrag)
        validate_pwd(self.pwd)


def generate_credentials(random_bytes: Callable[[int], bytes]) -> IceCredentials:
    """Fresh credentials from an injected random source, e.g. ``secrets.token_bytes``.

    RFC 8445 §5.3 asks for at least 24 bits of randomness in the ufrag and 128 in the
    password; these get 48 bits (8 ice-chars) and 144 bits (24 ice-chars). The random bytes
    are written in the base64 alphabet, which is exactly the ice-char set, 6 bits a character.
    """
    ufrag_bytes = random_bytes(6)
    pwd_bytes = random_bytes(18)
    if len(ufrag_bytes) != 6 or len(pwd_bytes) != 18:
        raise ValueError("random source returned the wrong number of bytes")
    return IceCredentials(
        ufrag=base64.b64encode(ufrag_bytes).decode("ascii"),
        pwd=base64.b64encode(pwd_bytes).decode("ascii"),
    )


def _validate_option(tag: str) -> str:
    if not isinstance(tag, str) or not _ICE_CHARS.fullmatch(tag) or len(tag) > 256:
        raise IceParseError(f"ice-option {tag!r} is not 1-256 ice-chars")
    return tag


@dataclass(frozen=True)
class IceDescription:
    """What one agent signals: credentials, options and candidates (RFC 8839 §5).

    ``ufrag``/``pwd`` are required (also in trickled fragments, RFC 8840 §9, where they tell
    which ICE generation the candidates belong to). ``lite`` is ``a=ice-lite`` (§5.3),
    ``options`` the ``a=ice-options`` tags in order (§5.6, e.g. ``trickle``),
    ``end_of_candidates`` ``a=end-of-candidates`` (RFC 8840 §8.2). ``ignored_candidates``
    counts candidate lines :meth:`parse` skipped as unsupported; it is not serialised and does
    not take part in comparisons.

    Construction validates credentials and options (IceParseError); :meth:`to_text` and
    :meth:`parse` round-trip: ``IceDescription.parse(d.to_text()) == d``.
    """

    ufrag: str
    pwd: str = field(repr=False)
    candidates: tuple[Candidate, ...] = ()
    lite: bool = False
    options: tuple[str, ...] = ()
    end_of_candidates: bool = False
    ignored_candidates: int = field(default=0, compare=False)

    def __post_init__(self) -> None:
        validate_ufrag(self.ufrag)
        validate_pwd(self.pwd)
        for tag in self.options:
            _validate_option(tag)
        for cand in self.candidates:
            if not isinstance(cand, Candidate):
                raise IceParseError(f"{cand!r} is not a Candidate")

    @property
    def credentials(self) -> IceCredentials:
        """ufrag and pwd together."""
        return IceCredentials(self.ufrag, self.pwd)

    @property
    def trickle(self) -> bool:
        """Whether the sender supports trickle ICE (``ice-options:trickle``, RFC 8840 §4)."""
        return "trickle" in self.options

    def to_lines(self) -> list[str]:
        """The attribute lines, each with ``a=``, in a fixed order."""
        lines = [f"a=ice-ufrag:{self.ufrag}", f"a=ice-pwd:{self.pwd}"]
        if self.lite:
            lines.append("a=ice-lite")
        if self.options:
            lines.append("a=ice-options:" + " ".join(self.options))
        lines += ["a=" + cand.to_attribute() for cand in self.candidates]
        if self.end_of_candidates:
            lines.append("a=end-of-candidates")
        return lines

    def to_text(self) -> str:
        """The attribute lines joined by ``\\n``, with a final newline."""
        return "\n".join(self.to_lines()) + "\n"

    @classmethod
    def parse(cls, text: str) -> IceDescription:
        """Parse newline-separated attribute lines (``\\n`` or ``\\r\\n``; ``a=`` optional).

        Recognised: ``candidate``, ``ice-ufrag``, ``ice-pwd``, ``ice-lite``, ``ice-options``,
        ``end-of-candidates``; each but ``candidate`` at most once, ufrag and pwd required.
        Other well-formed attributes (``ice-pacing``, ``mid``, ...) are ignored, as SDP
        ignores attributes it does not know, so newer peers can add some. Blank lines are
        ignored. Unsupported candidates are skipped and counted in ``ignored_candidates``.
        Raises only :class:`IceParseError`, whose message starts with the line number.
        """
        if not isinstance(text, str):
            raise IceParseError(f"description must be text, not {type(text).__name__}")
        if len(text) > MAX_DESCRIPTION_LENGTH:
            raise IceParseError(
                f"description is {len(text)} characters, at most {MAX_DESCRIPTION_LENGTH}"
            )
        ufrag: str | None = None
        pwd: str | None = None
        lite = False
        options: tuple[str, ...] | None = None
        end_of_candidates = False
        candidates: list[Candidate] = []
        ignored = 0
        candidate_lines = 0
        other_lines = 0
        for number, raw in enumerate(text.split("\n"), start=1):
            line = raw[:-1] if raw.endswith("\r") else raw
            if line.strip(" \t") == "":
                continue
            try:
                _check_chars(line, "line")
                body = line[2:] if line.startswith("a=") else line
                name, sep, value = body.partition(":")
                if not _TOKEN.fullmatch(name):
                    raise IceParseError(f"{name!r} is not an attribute name")
                if name == "candidate":
                    candidate_lines += 1
                    if candidate_lines > MAX_CANDIDATES:
                        raise IceParseError(f"more than {MAX_CANDIDATES} candidates")
                    try:
                        candidates.append(_parse_candidate_value(value))
                    except UnsupportedCandidateError:
                        ignored += 1
                    continue
                other_lines += 1
                if other_lines > _MAX_OTHER_LINES:
                    raise IceParseError(f"more than {_MAX_OTHER_LINES} non-candidate lines")
                if name in ("ice-ufrag", "ice-pwd", "ice-options"):
                    if not sep:
                        raise IceParseError(f"{name} needs a value")
                elif name in ("ice-lite", "end-of-candidates") and sep:
                    raise IceParseError(f"{name} takes no value")
                if name == "ice-ufrag":
                    if ufrag is not None:
                        raise IceParseError("ice-ufrag appears twice")
                    ufrag = validate_ufrag(value)
                elif name == "ice-pwd":
                    if pwd is not None:
                        raise IceParseError("ice-pwd appears twice")
                    pwd = validate_pwd(value)
                elif name == "ice-lite":
                    if lite:
                        raise IceParseError("ice-lite appears twice")
                    lite = True
                elif name == "ice-options":
                    if options is not None:
                        raise IceParseError("ice-options appears twice")
                    tags = value.split(" ")
                    options = tuple(_validate_option(tag) for tag in tags)
                elif name == "end-of-candidates":
                    if end_of_candidates:
                        raise IceParseError("end-of-candidates appears twice")
                    end_of_candidates = True
            except IceParseError as exc:
                raise type(exc)(f"line {number}: {exc}") from None
        if ufrag is None:
            raise IceParseError("no ice-ufrag")
        if pwd is None:
            raise IceParseError("no ice-pwd")
        return cls(
            ufrag=ufrag,
            pwd=pwd,
            candidates=tuple(candidates),
            lite=lite,
            options=options or (),
            end_of_candidates=end_of_candidates,
            ignored_candidates=ignored,
        )
