"""Abuse of the TURN server core: floods, caps, garbage and fuzzing (RFC 8656 §21).

Memory is measured by counting the server's state objects (``state_size``): whatever an
attacker sends, they stay within the configured caps, and input without valid credentials
creates none at all.
"""

from __future__ import annotations

import random
import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_turn_server import PEER, RELAY, Client, code, ft, make_server, ok, tid

from p2ptun.stun import AttrType, Message, MessageClass, Method
from p2ptun.turn.server import (
    AllocationState,
    OpenRelay,
    ServerLimits,
    ToClient,
    ToPeer,
    Transport,
    TurnServer,
)

ZERO_STATE = {
    "allocations": 0,
    "pending": 0,
    "relays": 0,
    "ports": 0,
    "permissions": 0,
    "channels": 0,
    "channel_peers": 0,
    "users": 0,
    "client_ips": 0,
}


def check_invariants(server: TurnServer) -> None:
    """The indexes agree with each other and stay within the caps."""
    size = server.state_size()
    limits = server.limits
    allocs = list(server.allocations.values())
    assert size["relays"] == size["ports"] == size["allocations"]
    assert size["allocations"] <= limits.max_allocations
    assert size["pending"] <= limits.max_pending
    assert sum(a.state is AllocationState.PENDING for a in allocs) == size["pending"]
    for alloc in allocs:
        assert server.allocation_for_relay(alloc.relay) is alloc
        assert len(alloc.permissions) <= limits.max_permissions
        assert len(alloc.channels) <= limits.max_channels
        assert len(alloc.channel_by_peer) == len(alloc.channels)
    per_ip: dict[str, int] = {}
    for alloc in allocs:
        per_ip[alloc.five_tuple.client[0]] = per_ip.get(alloc.five_tuple.client[0], 0) + 1
    assert all(n <= limits.max_allocations_per_ip for n in per_ip.values())
    assert size["client_ips"] == len(per_ip)


def test_unauthenticated_flood_creates_no_state() -> None:
    server = make_server()
    for i in range(3000):
        five = ft(1024 + i, host=f"198.51.{i % 200}.{i % 250 + 1}")
        attrs = [(AttrType.REQUESTED_TRANSPORT, 17)]
        msg = Message.request(Method.ALLOCATE, tid(), attrs)
        if i % 3 == 1:  # with made-up credentials and a made-up nonce
            msg.add(AttrType.USERNAME, f"{2000000000 + i}:u{i}").add(AttrType.REALM, "lab")
            msg.add(AttrType.NONCE, f"obMatJos2gAAA{i:x}.forged")
            wire = msg.encode(b"guess")
        elif i % 3 == 2:
            wire = Message.request(
                Method.CREATE_PERMISSION, tid(), [(AttrType.XOR_PEER_ADDRESS, PEER)]
            ).encode()
        else:
            wire = msg.encode()
        out = server.handle_client(five, wire, float(i) / 100)
        assert len(out) == 1 and isinstance(out[0], ToClient)
        assert code(Message.decode(out[0].data)) in (401, 438)
    assert server.state_size() == ZERO_STATE
    assert server.next_wakeup() is None


def test_authenticated_allocation_flood_hits_the_caps() -> None:
    limits = ServerLimits(max_allocations=40, max_allocations_per_ip=5)
    server = make_server(limits=limits, user_quota=10000)
    codes: list[int | None] = []
    for i in range(120):
        # First from three addresses (per-IP cap), then from many (total cap).
        host = f"198.51.100.{i % 3 + 1}" if i < 30 else f"198.51.101.{i}"
        codes.append(code(Client(server, ft(2000 + i, host=host)).allocate()))
        check_invariants(server)
    assert server.state_size()["allocations"] == 40
    assert codes.count(None) == 40
    assert set(codes) == {None, 486, 508}
    assert server.counters.capacity_rejections > 0 and server.counters.quota_rejections > 0


def test_per_ip_cap() -> None:
    server = make_server(limits=ServerLimits(max_allocations_per_ip=3), user_quota=100)
    results = [ok(Client(server, ft(3000 + i)).allocate()) for i in range(5)]
    assert results == [True, True, True, False, False]
    assert ok(Client(server, ft(1, host="198.51.100.99")).allocate())


def test_pending_cap() -> None:
    server = make_server(limits=ServerLimits(max_pending=2), user_quota=100)
    clients = [Client(server, ft(4000 + i)) for i in range(4)]
    for c in clients:
        c.request(Method.REFRESH)  # fetch a nonce (437)
    outs = [
        server.handle_client(
            c.ft, c.build(Method.ALLOCATE, [(AttrType.REQUESTED_TRANSPORT, 17)]), 0.0
        )
        for c in clients
    ]
    assert [isinstance(o[0], OpenRelay) for o in outs] == [True, True, False, False]
    assert server.state_size()["pending"] == 2


def test_permission_and_channel_caps() -> None:
    server = make_server(limits=ServerLimits(max_permissions=8, max_channels=4))
    client = Client(server)
    assert ok(client.allocate())
    peers = [(AttrType.XOR_PEER_ADDRESS, (f"192.0.2.{i}", 1)) for i in range(1, 10)]
    assert code(client.request(Method.CREATE_PERMISSION, peers)) == 508
    assert server.state_size()["permissions"] == 0
    assert ok(client.request(Method.CREATE_PERMISSION, peers[:8]))
    assert ok(client.request(Method.CREATE_PERMISSION, peers[:8]))  # refresh: no growth
    assert code(client.request(Method.CREATE_PERMISSION, peers[8:])) == 508
    for i in range(4):
        bind = [
            (AttrType.CHANNEL_NUMBER, 0x4000 + i),
            (AttrType.XOR_PEER_ADDRESS, (f"192.0.2.{i + 1}", 1)),
        ]
        assert ok(client.request(Method.CHANNEL_BIND, bind))
    bind = [(AttrType.CHANNEL_NUMBER, 0x4010), (AttrType.XOR_PEER_ADDRESS, ("192.0.2.1", 2))]
    assert code(client.request(Method.CHANNEL_BIND, bind)) == 508
    check_invariants(server)
    # Once they expire, room again.
    assert ok(client.request(Method.REFRESH, [(AttrType.LIFETIME, 600)], now=500.0))
    server.handle_timeout(601.0)
    assert server.state_size()["permissions"] == 0 and server.state_size()["channels"] == 0
    assert ok(client.request(Method.CREATE_PERMISSION, peers[8:], now=601.0))


def test_peer_flood_without_permission_is_dropped_and_counted() -> None:
    server = make_server()
    client = Client(server)
    response = client.allocate()
    relay = response.xor_relayed_address
    assert relay is not None
    for i in range(5000):
        assert server.handle_peer_data(relay, (f"192.0.2.{i % 250}", i), b"x" * 100, 1.0) is None
    assert server.counters.dropped_no_permission == 5000
    assert server.counters.relayed_to_client == 0
    assert server.state_size()["permissions"] == 0


def test_oversized_peer_datagram_is_dropped() -> None:
    server = make_server()
    client = Client(server)
    relay = client.allocate().xor_relayed_address
    assert relay is not None
    client.request(Method.CREATE_PERMISSION, [(AttrType.XOR_PEER_ADDRESS, PEER)])
    assert server.handle_peer_data(relay, PEER, b"x" * 65535, 1.0) is None
    assert server.counters.dropped_too_large == 1


def test_truncations_of_valid_messages_never_raise() -> None:
    server = make_server()
    client = Client(server)
    assert ok(client.allocate())
    wires = [
        client.build(Method.REFRESH, []),
        client.build(Method.CREATE_PERMISSION, [(AttrType.XOR_PEER_ADDRESS, PEER)]),
        Message.indication(
            Method.SEND, tid(), [(AttrType.XOR_PEER_ADDRESS, PEER), (AttrType.DATA, b"abc")]
        ).encode(),
        b"\x40\x00\x00\x04abcd",
    ]
    before = server.state_size()
    for wire in wires:
        for n in range(len(wire)):
            for out in server.handle_client(client.ft, wire[:n], 1.0):
                assert isinstance(out, ToClient)
                assert not ok(Message.decode(out.data))
    assert server.state_size() == before


# -- hypothesis --------------------------------------------------------------------------------

_FUZZ_SERVER = make_server()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200), st.sampled_from(list(Transport)))
def test_fuzz_random_bytes(data: bytes, transport: Transport) -> None:
    server = _FUZZ_SERVER
    out = server.handle_client(ft(5, transport=transport), data, 1.0)
    assert all(isinstance(o, ToClient) for o in out)
    assert server.state_size() == ZERO_STATE


_ATTR_TYPES = st.sampled_from([int(t) for t in AttrType] + [0x7777, 0x8123, 0x0000, 0xFFFF])


@st.composite
def stun_like(draw: st.DrawFn) -> bytes:
    """Well-framed STUN messages with arbitrary attribute types and values."""
    method = draw(st.sampled_from([1, 3, 4, 6, 7, 8, 9, 10]))
    klass = draw(st.sampled_from(list(MessageClass)))
    body = b""
    for _ in range(draw(st.integers(0, 6))):
        attr = draw(_ATTR_TYPES)
        value = draw(st.binary(max_size=40))
        body += struct.pack("!HH", attr, len(value)) + value + b"\x00" * (-len(value) & 3)
    mtype = Message(method, klass, b"\x00" * 12).message_type
    return (
        struct.pack("!HHI", mtype, len(body), 0x2112A442)
        + draw(st.binary(min_size=12, max_size=12))
        + body
    )


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stun_like())
def test_fuzz_stun_shaped_input_never_raises_or_allocates(data: bytes) -> None:
    server = _FUZZ_SERVER
    out = server.handle_client(ft(6), data, 2.0)
    for o in out:
        assert isinstance(o, ToClient)
        Message.decode(o.data)  # whatever we send is well formed
    assert server.state_size() == ZERO_STATE


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 2**32), st.lists(st.integers(0, 10_000), min_size=1, max_size=8))
def test_fuzz_bit_flips_of_authenticated_requests(seed: int, flips: list[int]) -> None:
    """Flipping bits of a correctly signed Allocate never yields an allocation: the HMAC (or
    the FINGERPRINT) covers every byte."""
    server = make_server()
    client = Client(server)
    client.request(Method.REFRESH)  # nonce
    wire = bytearray(
        client.build(
            Method.ALLOCATE, [(AttrType.REQUESTED_TRANSPORT, 17), (AttrType.LIFETIME, 900)]
        )
    )
    original = bytes(wire)
    rng = random.Random(seed)
    for f in flips:
        wire[(f + rng.randrange(len(wire))) % len(wire)] ^= 1 << (f % 8)
    if bytes(wire) == original:  # flips that cancel out
        return
    server.handle_client(client.ft, bytes(wire), 3.0)
    assert server.state_size()["allocations"] == 0


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2**32))
def test_random_operation_sequences_keep_invariants(seed: int) -> None:
    """Random clients allocate, refresh, permit, bind, send, close and let time pass; the
    indexes stay consistent and the caps hold; everything expires in the end."""
    rng = random.Random(seed)
    limits = ServerLimits(
        max_allocations=6, max_allocations_per_ip=4, max_permissions=3, max_channels=2
    )
    server = make_server(limits=limits, relay_ports=(50000, 50007), user_quota=5)
    clients = [
        Client(
            server,
            ft(100 + i, host=f"198.51.100.{i % 3 + 1}", transport=rng.choice(list(Transport))),
        )
        for i in range(8)
    ]
    now = 0.0
    for _ in range(60):
        c = rng.choice(clients)
        c.bind_ok = rng.random() > 0.2
        peer = (f"192.0.2.{rng.randrange(1, 6)}", rng.randrange(1, 4))
        op = rng.randrange(8)
        if op == 0:
            c.allocate(now)
        elif op == 1:
            c.request(Method.REFRESH, [(AttrType.LIFETIME, rng.choice([0, 30, 600, 5000]))], now)
        elif op == 2:
            c.request(Method.CREATE_PERMISSION, [(AttrType.XOR_PEER_ADDRESS, peer)], now)
        elif op == 3:
            number = rng.choice([0x4000, 0x4001, 0x4002, 0x7FFF])
            c.request(
                Method.CHANNEL_BIND,
                [(AttrType.CHANNEL_NUMBER, number), (AttrType.XOR_PEER_ADDRESS, peer)],
                now,
            )
        elif op == 4:
            send = Message.indication(
                Method.SEND, tid(), [(AttrType.XOR_PEER_ADDRESS, peer), (AttrType.DATA, b"d")]
            )
            for out in c.feed(send.encode(), now):
                assert isinstance(out, ToPeer) and out.relay[0] == RELAY
        elif op == 5:
            alloc = server.allocations.get(c.ft)
            if alloc is not None:
                server.handle_peer_data(alloc.relay, peer, b"p", now)
        elif op == 6 and c.ft.transport is not Transport.UDP:
            server.connection_closed(c.ft, now)
        else:
            now += rng.choice([1.0, 30.0, 200.0, 400.0])
            server.handle_timeout(now)
        check_invariants(server)
    server.handle_timeout(now + 100_000)
    assert server.state_size() == ZERO_STATE
