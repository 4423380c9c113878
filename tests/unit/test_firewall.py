"""The firewall core (p2ptun.firewall): rules, connection tracking, bounds, the parser."""

from __future__ import annotations

import ipaddress
import struct
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2ptun.firewall import ALLOW_ICMP, Firewall, Policy, Rule, parse
from p2ptun.firewall.flows import FlowTable
from p2ptun.firewall.packet import PROTO_TCP, PROTO_UDP

US = "10.9.0.1"
ADMIN_IP = "10.9.0.2"
GUEST_IP = "10.9.0.3"
US6 = "fd00::1"
PEER6 = "fd00::2"


def ip4(src: str, dst: str, proto: int, payload: bytes, *, frag: int = 0) -> bytes:
    total = 20 + len(payload)
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        total,
        1,
        frag,
        64,
        proto,
        0,
        ipaddress.IPv4Address(src).packed,
        ipaddress.IPv4Address(dst).packed,
    )
    return header + payload


def ip6(src: str, dst: str, proto: int, payload: bytes) -> bytes:
    header = struct.pack(
        "!IHBB16s16s",
        6 << 28,
        len(payload),
        proto,
        64,
        ipaddress.IPv6Address(src).packed,
        ipaddress.IPv6Address(dst).packed,
    )
    return header + payload


def tcp(sport: int, dport: int, flags: int = 0x10, data: bytes = b"") -> bytes:
    return struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, flags, 65535, 0, 0) + data


def udp(sport: int, dport: int, data: bytes = b"x") -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(data), 0) + data


def icmp_echo() -> bytes:
    return bytes([8, 0, 0, 0, 0, 1, 0, 1]) + b"ping"


ADMIN, GUEST = object(), object()

SSH_FOR_ADMIN = Policy(
    inbound=(Rule(proto="tcp", ports=(22, 22), groups=frozenset({"admin"})), ALLOW_ICMP)
)


def firewall(policy: Policy = SSH_FOR_ADMIN) -> Firewall:
    fw = Firewall(policy)
    fw.add_peer(ADMIN, "alice", ["admin", "dev"])
    fw.add_peer(GUEST, "bob", ["dev"])
    return fw


def test_inbound_rule_by_group_and_default_deny() -> None:
    fw = firewall()
    ssh_admin = ip4(ADMIN_IP, US, PROTO_TCP, tcp(40000, 22, 0x02))
    ssh_guest = ip4(GUEST_IP, US, PROTO_TCP, tcp(40000, 22, 0x02))
    web = ip4(ADMIN_IP, US, PROTO_TCP, tcp(40001, 80, 0x02))
    assert fw.filter_inbound(ADMIN, [ssh_admin, web], 1.0) == [ssh_admin]
    assert fw.filter_inbound(GUEST, [ssh_guest], 1.0) == []
    assert fw.inbound_hits == [1, 0]
    assert fw.counters.inbound.default_deny == 2
    assert fw.dropped(GUEST) == 1 and fw.dropped(ADMIN) == 1
    # ICMP from anyone, IPv4 and IPv6
    ping = ip4(GUEST_IP, US, 1, icmp_echo())
    ping6 = ip6(PEER6, US6, 58, icmp_echo())
    assert fw.filter_inbound(GUEST, [ping, ping6], 2.0) == [ping, ping6]
    status = fw.status()
    assert status["inbound"][0] == {"rule": "tcp/22 groups=admin", "flows": 1}
    assert status["dropped"]["inbound"]["default_deny"] == 2


def test_outbound_replies_pass_and_only_from_that_peer() -> None:
    fw = firewall()
    syn = ip4(US, GUEST_IP, PROTO_TCP, tcp(50000, 8080, 0x02))
    assert fw.allow_outbound(GUEST, syn, 1.0)
    reply = ip4(GUEST_IP, US, PROTO_TCP, tcp(8080, 50000, 0x12))
    assert fw.filter_inbound(GUEST, [reply], 1.1) == [reply]
    assert fw.filter_inbound(ADMIN, [reply], 1.1) == []  # another peer: not its flow
    # UDP replies (DNS-like) pass; an unrelated UDP port does not
    q = ip4(US, GUEST_IP, PROTO_UDP, udp(5353, 53))
    assert fw.allow_outbound(GUEST, memoryview(bytearray(q)), 2.0)
    answer = ip4(GUEST_IP, US, PROTO_UDP, udp(53, 5353))
    other = ip4(GUEST_IP, US, PROTO_UDP, udp(53, 5354))
    assert fw.filter_inbound(GUEST, [answer, other, answer], 2.1) == [answer, answer]
    # After the UDP idle timeout the reply is a new inbound flow: denied.
    assert fw.filter_inbound(GUEST, [answer], 2.0 + 121) == []


def test_inbound_flow_lets_our_replies_out_when_outbound_is_closed() -> None:
    policy = Policy(inbound=(Rule(proto="tcp", ports=(22, 22)),), outbound=())
    fw = firewall(policy)
    assert not fw.allow_outbound(ADMIN, ip4(US, ADMIN_IP, PROTO_TCP, tcp(1, 80, 0x02)), 1.0)
    syn = ip4(ADMIN_IP, US, PROTO_TCP, tcp(40000, 22, 0x02))
    assert fw.filter_inbound(ADMIN, [syn], 1.0) == [syn]
    assert fw.allow_outbound(ADMIN, ip4(US, ADMIN_IP, PROTO_TCP, tcp(22, 40000, 0x12)), 1.0)
    assert fw.counters.outbound.default_deny == 1


def test_fast_path_follows_a_run_and_still_checks_each_flow() -> None:
    fw = firewall()
    fw.allow_outbound(GUEST, ip4(US, GUEST_IP, PROTO_TCP, tcp(50000, 9000, 0x02)), 1.0)
    data = [ip4(GUEST_IP, US, PROTO_TCP, tcp(9000, 50000, 0x10, b"d" * 100)) for _ in range(5)]
    intruder = ip4(GUEST_IP, US, PROTO_TCP, tcp(9000, 50001, 0x10, b"d" * 100))
    batch = [*data[:2], intruder, *data[2:]]
    assert fw.filter_inbound(GUEST, batch, 1.5) == data
    # a FIN shortens the flow's life
    fin = ip4(GUEST_IP, US, PROTO_TCP, tcp(9000, 50000, 0x11))
    assert fw.filter_inbound(GUEST, [data[0], fin], 2.0) == [data[0], fin]
    assert fw.filter_inbound(GUEST, [data[0]], 2.0 + 31) == []


def test_ipv6_flows() -> None:
    fw = firewall()
    assert fw.allow_outbound(GUEST, ip6(US6, PEER6, PROTO_UDP, udp(7000, 7001)), 1.0)
    back = ip6(PEER6, US6, PROTO_UDP, udp(7001, 7000))
    assert fw.filter_inbound(GUEST, [back, back], 1.1) == [back, back]
    # behind a hop-by-hop header too
    hbh = bytes([PROTO_UDP, 0, 1, 4, 0, 0, 0, 0])
    back_ext = ip6(PEER6, US6, 0, hbh + udp(7001, 7000))
    assert fw.filter_inbound(GUEST, [back_ext], 1.2) == [back_ext]
    stranger = ip6(PEER6, US6, PROTO_UDP, udp(7001, 7002))
    assert fw.filter_inbound(GUEST, [stranger], 1.2) == []


def test_non_first_fragments_need_a_rule_without_port() -> None:
    fw = firewall()
    frag_udp = ip4(GUEST_IP, US, PROTO_UDP, b"x" * 64, frag=100)
    frag_icmp = ip4(GUEST_IP, US, 1, b"x" * 64, frag=100)
    assert fw.filter_inbound(GUEST, [frag_udp, frag_icmp], 1.0) == [frag_icmp]
    assert fw.counters.inbound.fragments == 1


def test_malformed_dropped_and_counted() -> None:
    fw = firewall()
    short = ip4(GUEST_IP, US, PROTO_TCP, b"\x00\x16")
    assert fw.filter_inbound(GUEST, [short, b"\x70" * 30], 1.0) == []
    assert fw.counters.inbound.malformed == 2


def test_reload_cuts_flows_the_new_rules_deny() -> None:
    fw = firewall()
    ssh = ip4(ADMIN_IP, US, PROTO_TCP, tcp(40000, 22, 0x02))
    ping = ip4(ADMIN_IP, US, 1, icmp_echo())
    assert fw.filter_inbound(ADMIN, [ssh, ping], 1.0) == [ssh, ping]
    cut = fw.set_policy(Policy(inbound=(ALLOW_ICMP,)))
    assert cut == 1
    assert fw.filter_inbound(ADMIN, [ssh, ping], 2.0) == [ping]
    assert fw.status()["cut_on_reload"] == 1


def test_peer_groups_change_recompiles_its_rules() -> None:
    fw = firewall()
    ssh = ip4(GUEST_IP, US, PROTO_TCP, tcp(40000, 22, 0x02))
    assert fw.filter_inbound(GUEST, [ssh], 1.0) == []
    fw.add_peer(GUEST, "bob", ["admin"])
    assert fw.filter_inbound(GUEST, [ssh], 1.0) == [ssh]
    fw.add_peer(GUEST, "bob", [])
    assert fw.table.held_by(GUEST) == 0  # its SSH flow was cut


@pytest.mark.parametrize(
    ("rule", "peer", "allowed"),
    [
        (Rule(proto="udp", ports=(8000, 8999)), GUEST, True),
        (Rule(proto="udp", ports=(9000, 9999)), GUEST, False),
        (Rule(proto="tcp", ports=(8000, 8999)), GUEST, False),
        (Rule(peers=frozenset({"bob"})), GUEST, True),
        (Rule(peers=frozenset({"bob"})), ADMIN, False),
        (Rule(groups=frozenset({"admin", "dev"})), ADMIN, True),
        (Rule(groups=frozenset({"admin", "dev"})), GUEST, False),  # needs every group
        (Rule(cidrs=(ipaddress.ip_network("10.9.0.0/30"),)), GUEST, True),
        (Rule(cidrs=(ipaddress.ip_network("10.9.0.0/31"),)), GUEST, False),
        (Rule(local_cidrs=(ipaddress.ip_network("10.9.0.1/32"),)), GUEST, True),
        (Rule(local_cidrs=(ipaddress.ip_network("fd00::/8"),)), GUEST, False),
    ],
)
def test_rule_parts(rule: Rule, peer: object, allowed: bool) -> None:
    fw = firewall(Policy(inbound=(rule,)))
    src = GUEST_IP if peer is GUEST else ADMIN_IP
    packet = ip4(src, US, PROTO_UDP, udp(1234, 8080))
    assert (fw.filter_inbound(peer, [packet], 1.0) == [packet]) is allowed


def test_flood_of_flows_stays_bounded_and_spares_other_peers() -> None:
    """One peer opening 100 000 flows: the table holds at most its capacity, the flooder at
    most its share, and the other peer's flows (opened before and refreshed during) survive."""
    policy = Policy(inbound=(Rule(proto="udp"),), max_flows=1000, max_flows_per_peer=400)
    fw = firewall(policy)
    victims = [ip4(ADMIN_IP, US, PROTO_UDP, udp(2000 + i, 53)) for i in range(50)]
    assert fw.filter_inbound(ADMIN, victims, 0.0) == victims
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    now = 0.0
    for i in range(100_000):
        now = i * 0.001
        flood = ip4(GUEST_IP, US, PROTO_UDP, udp(1024 + i % 60000, 10000 + i // 60000))
        fw.filter_inbound(GUEST, [flood], now)
        if i % 10_000 == 0:
            fw.filter_inbound(ADMIN, victims, now)
    grown = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    assert len(fw.table) <= 1000
    assert fw.table.held_by(GUEST) == 400
    assert fw.table.held_by(ADMIN) == 50
    assert all(
        fw.table.get((PROTO_UDP, bytes([10, 9, 0, 1]), bytes([10, 9, 0, 2]), 53, 2000 + i))
        for i in range(50)
    )
    assert fw.table.counters.evicted_peer_share >= 99_000
    assert grown < 400 * 1024, grown  # 400 flows' worth, not 100 000
    print(
        f"FIGURE firewall flood: 100000 flows from one peer, table {len(fw.table)}, "
        f"memory grown {grown / 1024:.0f} KiB"
    )


def test_full_table_takes_room_from_the_biggest_holder() -> None:
    table = FlowTable(capacity=10, per_peer=8)
    for i in range(8):
        table.add((17, b"a", b"b", i, 0), "flooder", float(i), 100.0, 0, True)
    table.add((17, b"a", b"c", 1, 0), "quiet", 8.0, 100.0, 0, True)
    table.add((17, b"a", b"c", 2, 0), "quiet", 9.0, 100.0, 0, True)
    table.add((17, b"a", b"c", 3, 0), "quiet", 10.0, 100.0, 0, True)  # full: the flooder pays
    assert table.held_by("quiet") == 3 and table.held_by("flooder") == 7
    assert table.counters.evicted_table_full == 1


def test_expired_flows_are_swept() -> None:
    table = FlowTable(capacity=100, per_peer=100)
    for i in range(50):
        table.add((17, b"a", b"b", i, 0), "p", 0.0, 10.0, 0, True)
    for i in range(50):
        table.add((17, b"a", b"c", i, 0), "p", 100.0, 10.0, 0, True)
    assert len(table) == 50


def test_fast_path_allocates_nothing_per_packet() -> None:
    """A run of one flow's packets allocates no memory that outlives the call beyond the
    flow table's one entry."""
    fw = firewall()
    fw.allow_outbound(GUEST, ip4(US, GUEST_IP, PROTO_TCP, tcp(50000, 9000, 0x02)), 1.0)
    run = [ip4(GUEST_IP, US, PROTO_TCP, tcp(9000, 50000, 0x10, b"d" * 1300))] * 64
    fw.filter_inbound(GUEST, run, 1.0)
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for _ in range(100):
        assert fw.filter_inbound(GUEST, run, 2.0) is run
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    grown = sum(s.size_diff for s in after.compare_to(before, "filename") if "firewall" in str(s))
    assert grown < 1024


def test_policy_bounds_checked() -> None:
    with pytest.raises(ValueError, match="max_flows_per_peer"):
        Policy(max_flows=10, max_flows_per_peer=11)
    with pytest.raises(ValueError, match="ICMP has no ports"):
        Rule(proto="icmp", ports=(1, 1))


# -- the parser, fuzzed ---------------------------------------------------------------------


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=200))
def test_parser_never_raises(data: bytes) -> None:
    info = parse(data)
    if info is not None:
        assert info.version in (4, 6)
        assert -1 <= info.sport <= 65535 and -1 <= info.dport <= 65535


@settings(max_examples=1000, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from([0, 43, 44, 51, 60]), st.integers(0, 255)), max_size=12),
    st.binary(max_size=64),
)
def test_parser_ipv6_extension_chains_are_bounded(
    chain: list[tuple[int, int]], tail: bytes
) -> None:
    """Chains of extension headers with any lengths: the walk ends, and never reads past the
    packet."""
    body = b""
    kinds = [k for k, _ in chain] + [PROTO_UDP]
    for (kind, length), nxt in zip(chain, kinds[1:], strict=False):
        size = 8 if kind == 44 else (length % 4 + 1) * 8
        hdr = bytearray(size)
        hdr[0] = nxt
        hdr[1] = (size // 8 - 1) if kind != 51 else (size // 4 - 2)
        if kind == 44:
            hdr[2], hdr[3] = length, 0
        body += bytes(hdr)
    packet = ip6(PEER6, US6, kinds[0], body + tail)
    info = parse(packet)
    if info is not None and not info.fragment and info.proto == PROTO_UDP:
        assert len(tail) >= 4


@settings(max_examples=500, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=80), max_size=20))
def test_filter_never_raises_on_garbage(packets: list[bytes]) -> None:
    fw = firewall()
    fw.allow_outbound(GUEST, ip4(US, GUEST_IP, PROTO_TCP, tcp(50000, 9000, 0x02)), 1.0)
    out = fw.filter_inbound(GUEST, packets, 1.0)
    assert all(p in packets for p in out)
    for p in packets:
        fw.allow_outbound(GUEST, p, 1.0)


def test_unanswered_flows_expire_sooner() -> None:
    """A SYN that got no answer holds its entry 60 s, an answered TCP flow an hour."""
    fw = firewall()
    syn = ip4(US, GUEST_IP, PROTO_TCP, tcp(50000, 9000, 0x02))
    other = ip4(US, GUEST_IP, PROTO_TCP, tcp(50001, 9000, 0x02))
    assert fw.allow_outbound(GUEST, syn, 0.0) and fw.allow_outbound(GUEST, other, 0.0)
    synack = ip4(GUEST_IP, US, PROTO_TCP, tcp(9000, 50000, 0x12))
    assert fw.filter_inbound(GUEST, [synack], 1.0) == [synack]
    late = ip4(GUEST_IP, US, PROTO_TCP, tcp(9000, 50001, 0x12))
    assert fw.filter_inbound(GUEST, [late], 62.0) == []  # unanswered: gone after 60 s
    assert fw.filter_inbound(GUEST, [synack], 1000.0) == [synack]  # answered: an hour


def test_outbound_shortcut_lasts_one_batch() -> None:
    """Our replies on a flow the peer opened pass; once the flow has expired, the next batch
    looks again and the (empty) outbound rules drop them."""
    fw = firewall(Policy(inbound=(Rule(proto="tcp", ports=(22, 22)),), outbound=()))
    syn = ip4(ADMIN_IP, US, PROTO_TCP, tcp(40000, 22, 0x02, b"x" * 8))
    reply = memoryview(bytearray(ip4(US, ADMIN_IP, PROTO_TCP, tcp(22, 40000, 0x12, b"y" * 8))))
    assert fw.filter_inbound(ADMIN, [syn], 0.0) == [syn]
    batch = float(1)
    assert fw.allow_outbound(ADMIN, reply, batch) and fw.allow_outbound(ADMIN, reply, batch)
    later = float(10_000)
    assert not fw.allow_outbound(ADMIN, reply, later)


_ALPHABET = [
    ip4(GUEST_IP, US, PROTO_TCP, tcp(9000, 50000, 0x10, b"d" * 40)),
    ip4(GUEST_IP, US, PROTO_TCP, tcp(9000, 50000, 0x11, b"d" * 40)),  # FIN
    ip4(GUEST_IP, US, PROTO_TCP, tcp(9000, 50000, 0x10)),  # a bare ACK, 40 bytes
    ip4(GUEST_IP, US, PROTO_TCP, tcp(9000, 50001, 0x10)),
    ip4(GUEST_IP, US, 1, icmp_echo()),  # 32 bytes
    ip4(GUEST_IP, US, PROTO_TCP, tcp(9000, 50001, 0x10, b"d" * 40)),
    ip4(GUEST_IP, US, PROTO_TCP, tcp(40000, 22, 0x02, b"d" * 40)),
    ip4(GUEST_IP, US, PROTO_UDP, udp(53, 5353, b"d" * 40)),
    ip4(GUEST_IP, US, PROTO_UDP, udp(53, 5354, b"d" * 40)),
    ip4(GUEST_IP, US, 1, icmp_echo() + b"d" * 40),
    ip4(GUEST_IP, US, PROTO_UDP, b"d" * 48, frag=100),
    ip6(PEER6, US6, PROTO_UDP, udp(7001, 7000, b"d" * 8)),
    ip6(PEER6, US6, PROTO_TCP, tcp(7001, 7000, 0x10)),
]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, len(_ALPHABET) - 1), max_size=40), st.booleans())
def test_batch_verdicts_equal_one_at_a_time(picks: list[int], admin: bool) -> None:
    """The fast path changes nothing: a batch gets the verdicts its packets get one by one."""

    def opened() -> Firewall:
        fw = firewall()
        if admin:
            fw.add_peer(GUEST, "bob", ["admin"])
        fw.allow_outbound(GUEST, ip4(US, GUEST_IP, PROTO_TCP, tcp(50000, 9000, 0x02)), 1.0)
        fw.allow_outbound(GUEST, ip4(US, GUEST_IP, PROTO_UDP, udp(5353, 53)), 1.0)
        fw.allow_outbound(GUEST, ip6(US6, PEER6, PROTO_UDP, udp(7000, 7001)), 1.0)
        return fw

    packets = [_ALPHABET[i] for i in picks]
    batched = opened().filter_inbound(GUEST, packets, 2.0)
    single = opened()
    one_by_one = [p for p in packets if single.filter_inbound(GUEST, [p], 2.0)]
    assert batched == one_by_one


def test_reload_with_a_smaller_table_keeps_what_fits() -> None:
    fw = firewall(Policy(inbound=(Rule(proto="udp"),), max_flows=100, max_flows_per_peer=100))
    for i in range(30):
        fw.filter_inbound(GUEST, [ip4(GUEST_IP, US, PROTO_UDP, udp(1000 + i, 53))], 1.0)
    assert len(fw.table) == 30
    fw.set_policy(Policy(inbound=(Rule(proto="udp"),), max_flows=20, max_flows_per_peer=10))
    assert len(fw.table) == 10 and fw.table.held_by(GUEST) == 10
    assert fw.status()["max_flows"] == 20 and fw.status()["cut_on_reload"] == 0
