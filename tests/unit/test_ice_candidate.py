"""Candidate model: priorities, RFC 8421 preferences, foundations, redundancy, pairs."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2ptun.ice.candidate import (
    Candidate,
    CandidatePair,
    CandidateType,
    TcpType,
    Transport,
    assign_local_preferences,
    can_pair,
    candidate_base,
    compute_foundation,
    compute_priority,
    eliminate_redundant,
    make_host_candidate,
    make_prflx_candidate,
    make_relay_candidate,
    make_srflx_candidate,
    pair_priority,
    peer_reflexive_priority,
)

HOST, SRFLX, PRFLX, RELAY = (
    CandidateType.HOST,
    CandidateType.SRFLX,
    CandidateType.PRFLX,
    CandidateType.RELAY,
)
STUN_IP = "198.51.100.1"
TURN_IP = "198.51.100.2"


def remote(
    host: str, port: int, priority: int, typ: CandidateType = HOST, fnd: str = "r"
) -> Candidate:
    return Candidate(fnd, 1, Transport.UDP, priority, host, port, typ)


# --- priority (RFC 8445 §5.1.2.1) ----------------------------------------------------------


def test_type_preferences() -> None:
    assert [t.type_preference for t in (HOST, PRFLX, SRFLX, RELAY)] == [126, 110, 100, 0]


@pytest.mark.parametrize(
    ("typ", "local_pref", "component", "expected"),
    [
        # 126 * 2^24 + 65535 * 2^8 + (256 - 1)
        (HOST, 65535, 1, 2113929216 + 16776960 + 255),
        (HOST, 65535, 1, 2130706431),
        (PRFLX, 65535, 1, 1862270975),
        (SRFLX, 65535, 1, 1694498815),
        (RELAY, 65535, 1, 16777215),
        (HOST, 0, 256, 2113929216),
        (RELAY, 0, 256, 0),
        # The table in RFC 8421 §5: local preferences 60000 (IPv6) and 59000 (IPv4).
        (HOST, 60000, 1, 2129289471),
        (HOST, 60000, 2, 2129289470),
        (HOST, 59000, 1, 2129033471),
        (SRFLX, 60000, 1, 1693081855),
        (SRFLX, 59000, 2, 1692825854),
        (RELAY, 60000, 1, 15360255),
        (RELAY, 59000, 2, 15104254),
    ],
)
def test_compute_priority_worked_numbers(
    typ: CandidateType, local_pref: int, component: int, expected: int
) -> None:
    assert compute_priority(typ, local_pref, component) == expected


@pytest.mark.parametrize(("local_pref", "component"), [(-1, 1), (65536, 1), (0, 0), (0, 257)])
def test_compute_priority_rejects_out_of_range(local_pref: int, component: int) -> None:
    with pytest.raises(ValueError):
        compute_priority(HOST, local_pref, component)


@given(st.sampled_from(list(CandidateType)), st.integers(0, 65535), st.integers(1, 256))
def test_priority_fields_are_separable(typ: CandidateType, lp: int, comp: int) -> None:
    prio = compute_priority(typ, lp, comp)
    assert prio >> 24 == typ.type_preference
    assert (prio >> 8) & 0xFFFF == lp
    assert prio & 0xFF == 256 - comp
    assert 0 <= prio < 2**31


def test_peer_reflexive_priority() -> None:
    host = make_host_candidate(("192.0.2.1", 5000), local_preference=65535)
    assert peer_reflexive_priority(host) == 1862270975
    relay = make_relay_candidate(("198.51.100.2", 9), ("203.0.113.1", 7), "10.0.0.1", TURN_IP, 1234)
    assert peer_reflexive_priority(relay) == compute_priority(PRFLX, 1234)


# --- RFC 8421 local preferences --------------------------------------------------------------


def _order(prefs: dict[str, int]) -> list[str]:
    return sorted(prefs, key=lambda h: -prefs[h])


def _family(host: str) -> str:
    return "v6" if ":" in host else "v4"


def test_rfc8421_example_two_v4_six_v6() -> None:
    # RFC 8421 §4: with two IPv4 and six IPv6 addresses, an IPv4 address comes after four IPv6.
    v4 = ["10.0.0.1", "10.0.0.2"]
    v6 = [f"2001:db8::{i}" for i in range(1, 7)]
    prefs = assign_local_preferences(v4 + v6)
    order = _order(prefs)
    assert [_family(h) for h in order] == ["v6"] * 4 + ["v4", "v6", "v4", "v6"]
    assert order[:4] == v6[:4]
    assert [prefs[h] for h in order] == list(range(65535, 65527, -1))


@pytest.mark.parametrize(
    ("n4", "n6", "families"),
    [
        (1, 1, "64"),
        (2, 2, "6644"),
        (3, 3, "664644"),
        (3, 1, "6444"),
        (1, 3, "6664"),
        (0, 3, "666"),
        (2, 0, "44"),
        (0, 0, ""),
    ],
)
def test_interleaving(n4: int, n6: int, families: str) -> None:
    addrs = [f"192.0.2.{i + 1}" for i in range(n4)] + [f"2001:db8::{i + 1}" for i in range(n6)]
    order = _order(assign_local_preferences(addrs))
    assert "".join(_family(h)[1] for h in order) == families


def test_local_preferences_keep_order_within_family_and_normalise() -> None:
    prefs = assign_local_preferences(["2001:DB8::2", "192.0.2.9", "2001:db8::1", "2001:db8:0::2"])
    assert _order(prefs) == ["2001:db8::2", "2001:db8::1", "192.0.2.9"]


def test_local_preferences_reject_names() -> None:
    with pytest.raises(ValueError):
        assign_local_preferences(["example.net"])


@given(st.lists(st.ip_addresses(), max_size=40))
def test_local_preferences_are_unique_and_v6_first(
    addrs: list[ipaddress.IPv4Address | ipaddress.IPv6Address],
) -> None:
    prefs = assign_local_preferences(str(a) for a in addrs)
    assert len(prefs) == len({str(a) for a in addrs})
    assert len(set(prefs.values())) == len(prefs)
    assert all(0 <= v <= 65535 for v in prefs.values())
    if any(a.version == 6 for a in addrs):
        assert ":" in _order(prefs)[0]


# --- foundations (RFC 8445 §5.1.1.3) ----------------------------------------------------------


def test_foundation_same_inputs_same_foundation() -> None:
    a = compute_foundation(SRFLX, "10.0.0.1", STUN_IP)
    assert a == compute_foundation(SRFLX, "10.0.0.1", STUN_IP, Transport.UDP)
    assert len(a) == 8 and all(c in "0123456789abcdef" for c in a)
    # Ports do not matter: the constructors only pass IPs, so two sockets agree.
    s1 = make_srflx_candidate(("203.0.113.1", 1), ("10.0.0.1", 5000), STUN_IP, 65535)
    s2 = make_srflx_candidate(("203.0.113.1", 2), ("10.0.0.1", 5001), STUN_IP, 65534)
    assert s1.foundation == s2.foundation == a


def test_foundation_normalises_addresses() -> None:
    assert compute_foundation(HOST, "2001:DB8:0::1") == compute_foundation(HOST, "2001:db8::1")


@pytest.mark.parametrize(
    "other",
    [
        (HOST, "10.0.0.1", STUN_IP, Transport.UDP),  # type
        (SRFLX, "10.0.0.2", STUN_IP, Transport.UDP),  # base IP
        (SRFLX, "10.0.0.1", "198.51.100.9", Transport.UDP),  # server IP
        (SRFLX, "10.0.0.1", None, Transport.UDP),  # no server
        (SRFLX, "10.0.0.1", STUN_IP, Transport.TCP),  # transport
    ],
)
def test_foundation_differs_when_any_input_differs(
    other: tuple[CandidateType, str, str | None, Transport],
) -> None:
    assert compute_foundation(*other) != compute_foundation(SRFLX, "10.0.0.1", STUN_IP)


def test_foundation_rejects_non_ip() -> None:
    with pytest.raises(ValueError):
        compute_foundation(HOST, "host.example")


# --- constructors and the Candidate invariants -----------------------------------------------


def test_make_candidates() -> None:
    host = make_host_candidate(("10.0.0.1", 5000), 65535)
    assert (host.type, host.priority, host.related, host.component) == (HOST, 2130706431, None, 1)
    assert candidate_base(host) == ("10.0.0.1", 5000)

    srflx = make_srflx_candidate(("203.0.113.1", 6000), ("10.0.0.1", 5000), STUN_IP, 65535)
    assert srflx.related == ("10.0.0.1", 5000)
    assert candidate_base(srflx) == ("10.0.0.1", 5000)
    assert srflx.priority == 1694498815

    relay = make_relay_candidate(
        ("198.51.100.2", 40000), ("203.0.113.1", 6000), "10.0.0.1", TURN_IP, 65535
    )
    assert relay.related == ("203.0.113.1", 6000)
    assert candidate_base(relay) == relay.address
    assert relay.foundation == compute_foundation(RELAY, "10.0.0.1", TURN_IP)

    prflx = make_prflx_candidate(("203.0.113.1", 7000), 1862270975, base=("10.0.0.1", 5000))
    assert prflx.foundation == compute_foundation(PRFLX, "10.0.0.1")
    assert candidate_base(prflx) == ("10.0.0.1", 5000)
    remote_prflx = make_prflx_candidate(("203.0.113.9", 7), 1862270975, foundation="rp1")
    assert remote_prflx.related is None and candidate_base(remote_prflx) is None
    with pytest.raises(ValueError):
        make_prflx_candidate(("203.0.113.9", 7), 1)


def test_candidate_normalises_and_is_hashable() -> None:
    a = Candidate("1", 1, Transport.UDP, 1, "2001:DB8:0:0::1", 5, HOST, "::FFFF:0:1", 0)
    b = Candidate("1", 1, Transport.UDP, 1, "2001:db8::1", 5, HOST, "::ffff:0:1", 0)
    assert a == b and hash(a) == hash(b)
    assert a.host == "2001:db8::1" and a.ip_version == 6
    assert a.related == (b.related_address, 0)


def test_extension_lookup() -> None:
    c = Candidate("1", 1, Transport.UDP, 1, "192.0.2.1", 5, HOST, extensions=(("ufrag", "abcd"),))
    assert c.extension("ufrag") == "abcd"
    assert c.extension("generation") is None


@pytest.mark.parametrize(
    "changes",
    [
        {"foundation": ""},
        {"foundation": "a" * 33},
        {"foundation": "a-b"},
        {"component": 0},
        {"component": 257},
        {"priority": 0},
        {"priority": 2**31},
        {"host": "example.net"},
        {"host": "fe80::1%eth0"},
        {"port": 0},
        {"port": 65536},
        {"related_address": "nope"},
        {"related_port": -1},
        {"related_port": 65536},
        {"tcptype": TcpType.ACTIVE},  # on UDP
        {"transport": Transport.TCP},  # without tcptype
        {"transport": "udp"},
        {"type": "host"},
        {"extensions": (("raddr", "1.2.3.4"),)},
        {"extensions": (("bad name", "x"),)},
        {"extensions": (("x", ""),)},
        {"extensions": (("x", "a b"),)},
        {"extensions": (("x",),)},
        {"extensions": [("x", "y")]},
    ],
)
def test_candidate_rejects_invalid_fields(changes: dict[str, object]) -> None:
    fields: dict[str, object] = {
        "foundation": "1",
        "component": 1,
        "transport": Transport.UDP,
        "priority": 1,
        "host": "192.0.2.1",
        "port": 1,
        "type": HOST,
    }
    fields.update(changes)
    with pytest.raises(ValueError):
        Candidate(**fields)  # type: ignore[arg-type]


# --- redundancy (RFC 8445 §5.1.3) -------------------------------------------------------------


def test_srflx_equal_to_host_is_redundant() -> None:
    # No NAT: the STUN server reports the host address itself.
    host = make_host_candidate(("192.0.2.1", 5000), 65535)
    srflx = make_srflx_candidate(("192.0.2.1", 5000), ("192.0.2.1", 5000), STUN_IP, 65535)
    assert eliminate_redundant([srflx, host]) == [host]
    assert eliminate_redundant([host, srflx]) == [host]


def test_same_address_different_base_is_not_redundant() -> None:
    s1 = make_srflx_candidate(("203.0.113.1", 6000), ("10.0.0.1", 5000), STUN_IP, 65535)
    s2 = make_srflx_candidate(("203.0.113.1", 6000), ("10.0.1.1", 5000), STUN_IP, 65534)
    assert eliminate_redundant([s1, s2]) == [s1, s2]


def test_redundant_keeps_highest_priority_in_first_position() -> None:
    base = ("10.0.0.1", 5000)
    low = make_srflx_candidate(("203.0.113.1", 6000), base, STUN_IP, 100)
    other = make_host_candidate(("10.0.0.2", 5000), 65534)
    high = make_srflx_candidate(("203.0.113.1", 6000), base, "198.51.100.7", 200)
    assert eliminate_redundant([low, other, high]) == [high, other]


# --- pairs (RFC 8445 §6.1.2) ------------------------------------------------------------------


def test_pair_priority_formula() -> None:
    g, d = 2130706431, 1694498815
    assert pair_priority(g, d) == 1694498815 * 2**32 + 2 * 2130706431 + 1
    assert pair_priority(g, d) == 7277816997797167103
    assert pair_priority(d, g) == 7277816997797167102  # tie-break bit clear when G < D
    assert pair_priority(5, 5) == 5 * 2**32 + 10  # and when equal
    assert pair_priority(2**31 - 1, 2**31 - 1) < 2**64


@given(st.integers(1, 2**31 - 1), st.integers(1, 2**31 - 1))
def test_pair_priority_both_agents_agree(a: int, b: int) -> None:
    local = Candidate("l", 1, Transport.UDP, a, "192.0.2.1", 1, HOST)
    rem = Candidate("r", 1, Transport.UDP, b, "192.0.2.2", 1, HOST)
    # What I compute as controlling equals what the peer computes as controlled.
    assert CandidatePair(local, rem).priority(True) == CandidatePair(rem, local).priority(False)
    assert CandidatePair(local, rem).priority(True) == pair_priority(a, b)
    if a != b:
        assert pair_priority(a, b) != pair_priority(b, a)


def test_pair_foundation() -> None:
    pair = CandidatePair(remote("192.0.2.1", 1, 1, fnd="ab"), remote("192.0.2.2", 1, 1, fnd="c"))
    assert pair.foundation == ("ab", "c")


def test_can_pair_rules() -> None:
    v4 = remote("192.0.2.1", 1, 1)
    v6 = remote("2001:db8::1", 1, 1)
    ll = remote("fe80::1", 1, 1)
    comp2 = Candidate("x", 2, Transport.UDP, 1, "192.0.2.3", 1, HOST)
    tcp = Candidate("x", 1, Transport.TCP, 1, "192.0.2.3", 9, HOST, tcptype=TcpType.ACTIVE)
    assert can_pair(v4, remote("198.51.100.1", 2, 1))
    assert can_pair(v6, remote("2001:db8::2", 2, 1))
    assert can_pair(ll, remote("fe80::2", 2, 1))
    assert not can_pair(v4, v6)
    assert not can_pair(v6, ll)
    assert not can_pair(ll, v6)
    assert not can_pair(v4, comp2)
    assert not can_pair(v4, tcp)
