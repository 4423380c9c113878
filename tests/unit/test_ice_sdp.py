"""RFC 8839 grammar: candidate lines, descriptions, credentials; round-trips, interop, fuzz."""

from __future__ import annotations

import dataclasses
import ipaddress
import os

import aioice
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2ptun.errors import DecodeError
from p2ptun.ice.candidate import (
    Candidate,
    CandidateType,
    TcpType,
    Transport,
    compute_priority,
)
from p2ptun.ice.sdp import (
    MAX_CANDIDATES,
    MAX_DESCRIPTION_LENGTH,
    MAX_EXTENSIONS,
    MAX_LINE_LENGTH,
    IceCredentials,
    IceDescription,
    IceParseError,
    UnsupportedCandidateError,
    generate_credentials,
    parse_candidate,
    validate_pwd,
    validate_ufrag,
)

UFRAG = "ANfJ"
PWD = "c2VjcmV0c2VjcmV0c2VjcmV0"  # 24 ice-chars

# --- hypothesis strategies ---------------------------------------------------------------------

ICE_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
TOKEN_CHARS = ICE_CHARS.replace("/", "") + "-.!%*_`'~"
VCHARS = "".join(chr(c) for c in range(0x21, 0x7F))

ips = st.ip_addresses().map(str)
extension_names = st.text(TOKEN_CHARS, min_size=1, max_size=12).filter(
    lambda n: n.lower() not in {"typ", "raddr", "rport", "tcptype"}
)
extensions = st.lists(
    st.tuples(extension_names, st.text(VCHARS, min_size=1, max_size=12)), max_size=5
).map(tuple)


@st.composite
def candidates(draw: st.DrawFn, udp_only: bool = False) -> Candidate:
    transport = Transport.UDP if udp_only else draw(st.sampled_from(list(Transport)))
    has_raddr = draw(st.booleans())
    return Candidate(
        foundation=draw(st.text(ICE_CHARS, min_size=1, max_size=32)),
        component=draw(st.integers(1, 256)),
        transport=transport,
        priority=draw(st.integers(1, 2**31 - 1)),
        host=draw(ips),
        port=draw(st.integers(1, 65535)),
        type=draw(st.sampled_from(list(CandidateType))),
        related_address=draw(ips) if has_raddr else None,
        related_port=draw(st.integers(0, 65535)) if has_raddr else None,
        tcptype=draw(st.sampled_from(list(TcpType))) if transport is Transport.TCP else None,
        extensions=draw(extensions),
    )


@st.composite
def descriptions(draw: st.DrawFn) -> IceDescription:
    return IceDescription(
        ufrag=draw(st.text(ICE_CHARS, min_size=4, max_size=256)),
        pwd=draw(st.text(ICE_CHARS, min_size=22, max_size=256)),
        candidates=tuple(draw(st.lists(candidates(), max_size=8))),
        lite=draw(st.booleans()),
        options=tuple(draw(st.lists(st.text(ICE_CHARS, min_size=1, max_size=10), max_size=3))),
        end_of_candidates=draw(st.booleans()),
    )


# --- real-world candidate lines ----------------------------------------------------------------

# Lines in the shapes Chrome (libwebrtc), Firefox and aioice emit (addresses are documentation
# ranges and private ranges).
REAL_WORLD = [
    (
        "candidate:1467250027 1 udp 2122260223 192.168.0.196 46243 typ host generation 0 "
        "ufrag ANfJ network-id 1 network-cost 10",
        dict(
            foundation="1467250027",
            type=CandidateType.HOST,
            host="192.168.0.196",
            port=46243,
            priority=2122260223,
            extensions=(
                ("generation", "0"),
                ("ufrag", "ANfJ"),
                ("network-id", "1"),
                ("network-cost", "10"),
            ),
        ),
    ),
    (
        "a=candidate:3213232342 1 udp 1686052607 203.0.113.50 46243 typ srflx raddr "
        "192.168.0.196 rport 46243 generation 0 ufrag ANfJ network-id 1",
        dict(type=CandidateType.SRFLX, related_address="192.168.0.196", related_port=46243),
    ),
    (
        "candidate:2927513581 1 udp 41885439 198.51.100.20 63072 typ relay raddr 203.0.113.50 "
        "rport 46243 generation 0 ufrag ANfJ network-id 1",
        dict(type=CandidateType.RELAY, host="198.51.100.20", related_address="203.0.113.50"),
    ),
    (
        "candidate:1853887674 1 tcp 1518280447 192.168.0.196 9 typ host tcptype active "
        "generation 0 ufrag ANfJ network-id 1",
        dict(transport=Transport.TCP, tcptype=TcpType.ACTIVE, port=9),
    ),
    (
        "candidate:2999745851 1 udp 2122129151 2001:db8:85a3::8a2e:370:7334 59871 typ host "
        "generation 0 ufrag ANfJ network-id 2",
        dict(host="2001:db8:85a3::8a2e:370:7334"),
    ),
    (
        "candidate:0 1 UDP 2122252543 2001:DB8:0:0:0:0:0:1 50433 typ host",
        dict(foundation="0", transport=Transport.UDP, host="2001:db8::1", extensions=()),
    ),
    (
        "candidate:1 1 UDP 1686052863 203.0.113.9 50433 typ srflx raddr 0.0.0.0 rport 0",
        dict(related_address="0.0.0.0", related_port=0),
    ),
    (
        "candidate:2 1 TCP 2105524479 192.168.1.2 9 typ host tcptype active",
        dict(transport=Transport.TCP),
    ),
    (
        "candidate:4 2 UDP 92217086 2001:db8::20 50999 typ relay raddr 2001:db8::20 rport 50999",
        dict(component=2, type=CandidateType.RELAY, related_address="2001:db8::20"),
    ),
    (
        "a61e9f6ab3ba1e0d16b17c9a9e07c3b6 1 udp 2130706431 10.0.0.5 52033 typ host",
        dict(foundation="a61e9f6ab3ba1e0d16b17c9a9e07c3b6", priority=2130706431),
    ),
    (
        "candidate:5 1 udp 1694498815 203.0.113.7 4000 typ srflx generation 0 raddr 10.0.0.5 "
        "rport 52033\r\n",
        dict(related_address="10.0.0.5", related_port=52033, extensions=(("generation", "0"),)),
    ),
]


@pytest.mark.parametrize(("line", "expected"), REAL_WORLD)
def test_real_world_lines(line: str, expected: dict[str, object]) -> None:
    cand = parse_candidate(line)
    for name, value in expected.items():
        assert getattr(cand, name) == value, name
    # Canonical form is a fixed point, with or without the a= prefix.
    assert parse_candidate(cand.to_attribute()) == cand
    assert parse_candidate("a=" + cand.to_attribute()) == cand
    assert parse_candidate(cand.to_sdp()) == cand


def test_canonical_text() -> None:
    cand = parse_candidate(
        "candidate:7 1 UDP 1686052607 203.0.113.50 1000 typ SRFLX foo bar rport 5 raddr 10.0.0.1"
    )
    assert (
        cand.to_sdp()
        == "7 1 udp 1686052607 203.0.113.50 1000 typ srflx raddr 10.0.0.1 rport 5 foo bar"
    )
    assert str(cand) == "candidate:" + cand.to_sdp()


@pytest.mark.parametrize(
    "line",
    [
        # Chrome with mDNS host names.
        "candidate:3 1 udp 2113937151 9b36eaac-bb2e-49bb-bb78-21c6dfe2a2ea.local 54811 typ host "
        "generation 0 network-cost 999",
        "candidate:3 1 udp 2113937151 turn.example.net 54811 typ host",
        "candidate:3 1 udp 1 192.0.2.1 5 typ srflx raddr x.local rport 5",
        "candidate:3 1 sctp 1 192.0.2.1 5 typ host",
        "candidate:3 1 ssltcp 1 192.0.2.1 5 typ host",
        "candidate:3 1 udp 1 192.0.2.1 5 typ unknowntype",
    ],
)
def test_unsupported_candidates(line: str) -> None:
    with pytest.raises(UnsupportedCandidateError) as info:
        parse_candidate(line)
    assert isinstance(info.value, IceParseError) and isinstance(info.value, DecodeError)


def test_unsupported_reason_is_clear() -> None:
    with pytest.raises(UnsupportedCandidateError, match="mDNS name"):
        parse_candidate("1 1 udp 1 abc.local 5 typ host")


GOOD = "candidate:1 1 udp 2130706431 192.0.2.1 5000 typ host"


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("", "fields"),
        ("candidate:", "fields"),
        ("1 1 udp 2130706431 192.0.2.1 5000 typ", "fields"),
        ("1 1 udp 2130706431 192.0.2.1 5000 type host", "'typ'"),
        ("1 1 udp 2130706431 192.0.2.1 5000 typ host generation", "no value"),
        ("1 1 udp 2130706431 192.0.2.1 5000 typ host  generation 0", "empty field"),
        ("1 1 udp 2130706431 192.0.2.1\t5000 typ host", "non-printable"),
        ("1 1 udp 2130706431 192.0.2.1 5000 typ h\u00f6st", "non-ASCII"),
        ("1 1 udp 0 192.0.2.1 5000 typ host", "priority"),
        ("1 1 udp 2147483648 192.0.2.1 5000 typ host", "priority"),
        ("1 1 udp 12345678901 192.0.2.1 5000 typ host", "digits"),
        ("1 1 udp +5 192.0.2.1 5000 typ host", "decimal"),
        ("1 1 udp 1_000 192.0.2.1 5000 typ host", "decimal"),
        ("1 1 udp \uff11 192.0.2.1 5000 typ host", "non-ASCII"),
        ("1 0 udp 1 192.0.2.1 5000 typ host", "component"),
        ("1 257 udp 1 192.0.2.1 5000 typ host", "component"),
        ("1 1000 udp 1 192.0.2.1 5000 typ host", "digits"),
        ("1 1 udp 1 192.0.2.1 0 typ host", "port"),
        ("1 1 udp 1 192.0.2.1 65536 typ host", "port"),
        ("1 1 udp 1 192.0.2.1 -1 typ host", "decimal"),
        ("1 1 udp 1 192.0.2.1 5000 typ host rport x", "rport"),
        ("1 1 udp 1 192.0.2.1 5000 typ host rport 70000", "rport"),
        ("1 1 udp 1 192.0.2.1 5000 typ host raddr 1.2.3.4 raddr 1.2.3.4", "twice"),
        ("1 1 udp 1 192.0.2.1 5000 typ host raddr _bad_", "raddr"),
        ("1 1 udp 1 192.0.2.1 5000 typ host typ host", "twice"),
        ("1 1 udp 1 fe80::1%eth0 5000 typ host", "address"),
        ("1 1 udp 1 01.2.3.4 5000 typ host", "address"),
        ("1 1 udp 1 1.2.3 5000 typ host", "address"),
        ("1 1 udp 1 [2001:db8::1] 5000 typ host", "address"),
        ("1 1 tcp 1 192.0.2.1 9 typ host", "tcptype"),
        ("1 1 tcp 1 192.0.2.1 9 typ host tcptype sideways", "tcptype"),
        ("1 1 udp 1 192.0.2.1 9 typ host tcptype active", "tcptype"),
        ("1-2 1 udp 1 192.0.2.1 9 typ host", "foundation"),
        ("a" * 33 + " 1 udp 1 192.0.2.1 9 typ host", "foundation"),
        ("1 1 u/dp 1 192.0.2.1 9 typ host", "transport"),
        ("1 1 udp 1 192.0.2.1 9 typ ho/st", "type"),
        ("1 1 udp 1 192.0.2.1 9 typ host na/me value", "token"),
        ("a=ice-ufrag:abcd", "candidate"),
        ("candidate:candidate:1 1 udp 1 192.0.2.1 9 typ host", "foundation"),
        ("1 1 udp 1 192.0.2.1 9 typ host " + "x y " * (MAX_EXTENSIONS + 1), "extensions"),
        (GOOD + " x " + "y" * MAX_LINE_LENGTH, "characters"),
    ],
)
def test_malformed_candidates(line: str, reason: str) -> None:
    with pytest.raises(IceParseError, match=reason) as info:
        parse_candidate(line)
    assert not isinstance(info.value, UnsupportedCandidateError)


def test_malformed_beats_unsupported() -> None:
    # A line that is both unusable and malformed is reported as malformed.
    with pytest.raises(IceParseError) as info:
        parse_candidate("1 1 sctp 1 x.local 0 typ host")
    assert not isinstance(info.value, UnsupportedCandidateError)


def test_non_text_input() -> None:
    with pytest.raises(IceParseError):
        parse_candidate(b"1 1 udp 1 192.0.2.1 9 typ host")  # type: ignore[arg-type]
    with pytest.raises(IceParseError):
        IceDescription.parse(None)  # type: ignore[arg-type]


# --- round-trips ---------------------------------------------------------------------------------


@given(candidates())
def test_candidate_round_trip(cand: Candidate) -> None:
    assert parse_candidate(cand.to_sdp()) == cand
    assert parse_candidate(cand.to_attribute()) == cand
    assert parse_candidate("a=" + cand.to_attribute() + "\r\n") == cand


@given(descriptions())
def test_description_round_trip(desc: IceDescription) -> None:
    text = desc.to_text()
    assert IceDescription.parse(text) == desc
    assert IceDescription.parse(text.replace("\n", "\r\n")) == desc
    # The "a=" prefix is optional on input.
    assert IceDescription.parse(text.replace("a=", "", 1)) == desc


# --- descriptions --------------------------------------------------------------------------------


def test_description_text_form() -> None:
    host = parse_candidate("candidate:1 1 udp 2130706431 192.0.2.1 5000 typ host")
    desc = IceDescription(
        UFRAG, PWD, (host,), lite=True, options=("trickle",), end_of_candidates=True
    )
    assert desc.to_text() == (
        "a=ice-ufrag:ANfJ\n"
        f"a=ice-pwd:{PWD}\n"
        "a=ice-lite\n"
        "a=ice-options:trickle\n"
        "a=candidate:1 1 udp 2130706431 192.0.2.1 5000 typ host\n"
        "a=end-of-candidates\n"
    )
    assert desc.trickle and desc.credentials == IceCredentials(UFRAG, PWD)
    assert PWD not in repr(desc)


def test_description_from_browser_fragment() -> None:
    text = (
        "a=ice-ufrag:EsAw\r\n"
        "a=ice-pwd:P2uYro0UCOQ4zxjKXaWCBui1\r\n"
        "a=ice-options:trickle renomination\r\n"
        "a=ice-pacing:50\r\n"
        "a=mid:0\r\n"
        "\r\n"
        "a=candidate:1467250027 1 udp 2122260223 192.168.0.196 46243 typ host generation 0\r\n"
        "a=candidate:3 1 udp 2113937151 9b36eaac-bb2e-49bb-bb78-21c6dfe2a2ea.local 54811 "
        "typ host\r\n"
        "a=candidate:1853887674 1 tcp 1518280447 192.168.0.196 9 typ host tcptype active\r\n"
        "a=end-of-candidates\r\n"
    )
    desc = IceDescription.parse(text)
    assert (desc.ufrag, desc.pwd) == ("EsAw", "P2uYro0UCOQ4zxjKXaWCBui1")
    assert desc.options == ("trickle", "renomination") and desc.trickle
    assert [c.transport for c in desc.candidates] == [Transport.UDP, Transport.TCP]
    assert desc.ignored_candidates == 1
    assert desc.end_of_candidates and not desc.lite


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "no ice-ufrag"),
        (f"a=ice-pwd:{PWD}", "no ice-ufrag"),
        ("a=ice-ufrag:abcd", "no ice-pwd"),
        (f"a=ice-ufrag:abc\na=ice-pwd:{PWD}", "line 1: ice-ufrag is 3 characters"),
        (f"a=ice-ufrag:{'a' * 257}\na=ice-pwd:{PWD}", "ice-ufrag is 257"),
        ("a=ice-ufrag:abcd\na=ice-pwd:" + "p" * 21, "line 2: ice-pwd is 21 characters"),
        ("a=ice-ufrag:abcd\na=ice-pwd:" + "p" * 257, "ice-pwd is 257"),
        (f"a=ice-ufrag:ab-d\na=ice-pwd:{PWD}", "letters, digits"),
        (f"a=ice-ufrag:abcd\na=ice-ufrag:abcd\na=ice-pwd:{PWD}", "line 2: ice-ufrag appears twice"),
        (f"a=ice-ufrag:abcd\na=ice-pwd:{PWD}\na=ice-pwd:{PWD}", "ice-pwd appears twice"),
        (f"a=ice-ufrag:abcd\na=ice-pwd:{PWD}\na=ice-lite\na=ice-lite", "ice-lite appears twice"),
        (f"a=ice-ufrag:abcd\na=ice-pwd:{PWD}\na=ice-lite:yes", "takes no value"),
        (f"a=ice-ufrag\na=ice-pwd:{PWD}", "needs a value"),
        (f"a=ice-ufrag:abcd\na=ice-pwd:{PWD}\na=ice-options:", "ice-option"),
        (f"a=ice-ufrag:abcd\na=ice-pwd:{PWD}\na=ice-options:a  b", "ice-option"),
        (f"a=ice-ufrag:abcd\na=ice-pwd:{PWD}\na=ice-options:a\na=ice-options:b", "twice"),
        (f"a=ice-ufrag:abcd\na=ice-pwd:{PWD}\na=end-of-candidates\na=end-of-candidates", "twice"),
        (f"a=ice-ufrag:abcd\na=ice-pwd:{PWD}\na=end-of-candidates:1", "takes no value"),
        (f"a=ice-ufrag:abcd\na=ice-pwd:{PWD}\nm=audio 9 UDP/TLS/RTP/SAVPF 0", "line 3"),
        (f"a=ice-ufrag:abcd\na=ice-pwd:{PWD}\na=candidate:1 1 udp 0 1.2.3.4 5 typ host", "line 3"),
        (
            f"a=ice-ufrag:abcd\na=ice-pwd:{PWD}\n"
            "a=candidate:a=candidate:1 1 udp 1 1.2.3.4 5 typ host",
            "line 3",
        ),
        (f"a=ice-ufrag:abcd\na=ice-pwd:{PWD}\na=x:\x00", "non-printable"),
        (f"a=ice-ufrag:abcd\na=ice-pwd:{PWD}\n" + "a=x-foo:1\n" * 40, "non-candidate lines"),
    ],
)
def test_malformed_descriptions(text: str, reason: str) -> None:
    with pytest.raises(IceParseError, match=reason):
        IceDescription.parse(text)


def test_description_bounds() -> None:
    head = f"a=ice-ufrag:abcd\na=ice-pwd:{PWD}\n"
    line = "a=candidate:1 1 udp 1 192.0.2.1 5 typ host\n"
    assert len(IceDescription.parse(head + line * MAX_CANDIDATES).candidates) == MAX_CANDIDATES
    with pytest.raises(IceParseError, match="more than 100 candidates"):
        IceDescription.parse(head + line * (MAX_CANDIDATES + 1))
    unsupported = "a=candidate:1 1 udp 1 x.local 5 typ host\n"
    with pytest.raises(IceParseError, match="candidates"):
        IceDescription.parse(head + unsupported * (MAX_CANDIDATES + 1))
    with pytest.raises(IceParseError, match="characters"):
        IceDescription.parse(head + "\n" * MAX_DESCRIPTION_LENGTH)


def test_description_validates_on_construction() -> None:
    with pytest.raises(IceParseError):
        IceDescription("abc", PWD)
    with pytest.raises(IceParseError):
        IceDescription(UFRAG, "short")
    with pytest.raises(IceParseError):
        IceDescription(UFRAG, PWD, options=("a b",))


# --- credentials ---------------------------------------------------------------------------------


def test_generate_credentials_deterministic_source() -> None:
    counter = iter(range(256))

    def fake(n: int) -> bytes:
        return bytes(next(counter) for _ in range(n))

    creds = generate_credentials(fake)
    assert creds.ufrag == "AAECAwQF"  # base64 of 00 01 02 03 04 05
    assert len(creds.pwd) == 24
    assert validate_ufrag(creds.ufrag) == creds.ufrag
    assert validate_pwd(creds.pwd) == creds.pwd
    assert creds.pwd not in repr(creds)


def test_generate_credentials_random() -> None:
    a, b = generate_credentials(os.urandom), generate_credentials(os.urandom)
    assert a != b
    assert len(a.ufrag) * 6 >= 24 and len(a.pwd) * 6 >= 128


def test_generate_credentials_rejects_short_source() -> None:
    with pytest.raises(ValueError):
        generate_credentials(lambda n: b"\x00")


@given(st.binary(min_size=24, max_size=24))
def test_generated_credentials_are_valid(data: bytes) -> None:
    chunks = iter([data[:6], data[6:]])
    creds = generate_credentials(lambda n: next(chunks))
    desc = IceDescription(creds.ufrag, creds.pwd)
    assert IceDescription.parse(desc.to_text()).credentials == creds


# --- interop with aioice's candidate text ------------------------------------------------------


@given(candidates(udp_only=True), st.none() | st.integers(0, 99))
def test_aioice_reads_ours(cand: Candidate, generation: int | None) -> None:
    if generation is not None:
        cand = dataclasses.replace(cand, extensions=(("generation", str(generation)),))
    theirs = aioice.Candidate.from_sdp(cand.to_sdp())
    assert theirs.foundation == cand.foundation
    assert theirs.component == cand.component
    assert theirs.transport == cand.transport.value
    assert theirs.priority == cand.priority
    assert theirs.host == cand.host
    assert theirs.port == cand.port
    assert theirs.type == cand.type.value
    assert theirs.related_address == cand.related_address
    assert theirs.related_port == cand.related_port
    assert theirs.generation == generation


@st.composite
def aioice_candidates(draw: st.DrawFn) -> aioice.Candidate:
    kind = draw(st.sampled_from(["host", "srflx", "prflx", "relay"]))
    host = draw(ips)
    related = kind != "host" and draw(st.booleans())
    transport = draw(st.sampled_from(["udp", "tcp"]))
    return aioice.Candidate(
        foundation=aioice.candidate.candidate_foundation(kind, transport, host),
        component=draw(st.integers(1, 256)),
        transport=transport,
        priority=aioice.candidate.candidate_priority(1, kind, draw(st.integers(0, 65535))),
        host=host,
        port=draw(st.integers(1, 65535)),
        type=kind,
        related_address=draw(ips) if related else None,
        related_port=draw(st.integers(0, 65535)) if related else None,
        tcptype=draw(st.sampled_from(["active", "passive", "so"])) if transport == "tcp" else None,
        generation=draw(st.none() | st.integers(0, 10)),
    )


@given(aioice_candidates())
def test_we_read_aioice(theirs: aioice.Candidate) -> None:
    ours = parse_candidate(theirs.to_sdp())
    assert ours.foundation == theirs.foundation
    assert ours.component == theirs.component
    assert ours.transport.value == theirs.transport
    assert ours.priority == theirs.priority
    assert ours.host == str(ipaddress.ip_address(theirs.host))
    assert ours.port == theirs.port
    assert ours.type.value == theirs.type
    assert ours.related_address == theirs.related_address
    assert ours.related_port == theirs.related_port
    assert (ours.tcptype.value if ours.tcptype else None) == theirs.tcptype
    gen = ours.extension("generation")
    assert (int(gen) if gen is not None else None) == theirs.generation
    # And back: aioice reads our text of its candidate to the same thing.
    assert aioice.Candidate.from_sdp(ours.to_sdp()).to_sdp() == theirs.to_sdp()


@pytest.mark.parametrize("kind", ["host", "srflx", "prflx", "relay"])
@pytest.mark.parametrize("local_pref", [0, 1, 65534, 65535])
def test_priority_agrees_with_aioice(kind: str, local_pref: int) -> None:
    ours = compute_priority(CandidateType(kind), local_pref, 1)
    assert ours == aioice.candidate.candidate_priority(1, kind, local_pref)


# --- fuzz: only IceParseError ------------------------------------------------------------------


def _parse_or_parse_error(text: str) -> Candidate | None:
    try:
        cand = parse_candidate(text)
    except IceParseError:
        return None
    # Whatever parses has a canonical form that parses to the same candidate.
    assert parse_candidate(cand.to_sdp()) == cand
    return cand


def _describe_or_parse_error(text: str) -> None:
    try:
        desc = IceDescription.parse(text)
    except IceParseError:
        return
    assert IceDescription.parse(desc.to_text()) == desc


@given(st.text(max_size=300))
def test_fuzz_arbitrary_text(text: str) -> None:
    _parse_or_parse_error(text)
    _parse_or_parse_error("candidate:" + text)
    _describe_or_parse_error(text)
    _describe_or_parse_error(f"a=ice-ufrag:abcd\na=ice-pwd:{PWD}\n{text}")


FUZZ_ALPHABET = st.sampled_from(
    [*" :.-+/\t\r\n%[]0123456789abcdefxyzABC\x00\x7f\u00e9\uff11", "typ", "raddr", "rport"]
)


@st.composite
def mutated(draw: st.DrawFn, text: str) -> str:
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["delete", "insert", "replace", "swap", "duplicate", "truncate"]))
        i = draw(st.integers(0, len(text)))
        j = draw(st.integers(i, min(len(text), i + 12)))
        if op == "delete":
            text = text[:i] + text[j:]
        elif op == "insert":
            text = text[:i] + draw(FUZZ_ALPHABET) + text[i:]
        elif op == "replace":
            text = text[:i] + "".join(draw(st.lists(FUZZ_ALPHABET, max_size=4))) + text[j:]
        elif op == "swap":
            fields = text.split(" ")
            a = draw(st.integers(0, len(fields) - 1))
            b = draw(st.integers(0, len(fields) - 1))
            fields[a], fields[b] = fields[b], fields[a]
            text = " ".join(fields)
        elif op == "duplicate":
            text = text[:j] + text[i:j] + text[j:]
        else:
            text = text[:i]
    return text


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), candidates())
def test_fuzz_mutated_candidate_lines(data: st.DataObject, cand: Candidate) -> None:
    _parse_or_parse_error(data.draw(mutated("a=" + cand.to_attribute())))


@pytest.mark.parametrize(("line", "_expected"), REAL_WORLD)
@given(data=st.data())
def test_fuzz_mutated_real_world_lines(
    line: str, _expected: dict[str, object], data: st.DataObject
) -> None:
    _parse_or_parse_error(data.draw(mutated(line)))


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), descriptions())
def test_fuzz_mutated_descriptions(data: st.DataObject, desc: IceDescription) -> None:
    _describe_or_parse_error(data.draw(mutated(desc.to_text())))
