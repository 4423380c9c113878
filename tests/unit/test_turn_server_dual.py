"""The TURN server core with a relay address of each family (RFC 8656 §7.2, §18.11, §18.12):
IPv6 and dual allocations, the family of every peer checked against the allocation's relayed
addresses (443), data relayed from the relayed address of the peer's family, a family the
server lacks named in ADDRESS-ERROR-CODE, and both relay sockets released together."""

from __future__ import annotations

import dataclasses
import ipaddress
import random
from typing import Any

import pytest
from test_turn_server import (
    PEER,
    PEER_NETWORKS,
    RELAY,
    SECRET,
    WALL,
    Client,
    code,
    ft,
    make_server,
    ok,
    send_indication,
)

from p2ptun.addr import Address
from p2ptun.stun import AddressFamily, AttrType, Message, Method, decode_channel_data
from p2ptun.turn.client import AllocationSucceeded, TurnClient
from p2ptun.turn.server import (
    AllocationState,
    CloseRelay,
    OpenRelay,
    ServerLimits,
    ToClient,
    ToPeer,
    TurnServer,
)

RELAY6 = "2001:db8::10"
PEER6: Address = ("2001:db8:2::2", 9000)
#: The peers' IPv6 network only: the server's own 2001:db8::10 stays denied.
NETWORKS = (*PEER_NETWORKS, ipaddress.ip_network("2001:db8:2::/48"))
V6 = [(AttrType.REQUESTED_ADDRESS_FAMILY, AddressFamily.IPV6)]
DUAL = [(AttrType.ADDITIONAL_ADDRESS_FAMILY, AddressFamily.IPV6)]


def dual_server(**kw: Any) -> TurnServer:
    return make_server(extra_relay_address=RELAY6, allow_peers=NETWORKS, **kw)


def test_ipv6_allocation() -> None:
    server = dual_server()
    client = Client(server, ft(1, host="2001:db8:1::2"))
    response = client.allocate(extra=V6)
    assert ok(response), response
    relay = response.xor_relayed_address
    assert relay is not None and relay[0] == RELAY6
    assert response.address_error_code is None
    # An IPv4 peer does not fit an IPv6 relayed address.
    perm = client.request(Method.CREATE_PERMISSION, [(AttrType.XOR_PEER_ADDRESS, PEER)])
    assert code(perm) == 443
    perm = client.request(Method.CREATE_PERMISSION, [(AttrType.XOR_PEER_ADDRESS, PEER6)])
    assert ok(perm), perm
    # IPv4 is still the default, from an IPv6 client too.
    other = Client(server, ft(2, host="2001:db8:1::2")).allocate()
    assert ok(other) and other.xor_relayed_address is not None
    assert other.xor_relayed_address[0] == RELAY


def test_dual_allocation_relays_each_family_from_its_own_address() -> None:
    server = dual_server()
    client = Client(server)
    response = client.allocate(extra=DUAL)
    assert ok(response), response
    relays = response.xor_relayed_addresses
    assert [r[0] for r in relays] == [RELAY, RELAY6], relays
    assert response.address_error_code is None
    assert {o.relay for o in client.outputs if isinstance(o, OpenRelay)} == set(relays)
    alloc = server.allocations[client.ft]
    assert alloc.state is AllocationState.ACTIVE and alloc.relays == tuple(relays)
    assert server.state_size()["relays"] == 2 and server.state_size()["ports"] == 2

    peers = [(AttrType.XOR_PEER_ADDRESS, PEER), (AttrType.XOR_PEER_ADDRESS, PEER6)]
    assert ok(client.request(Method.CREATE_PERMISSION, peers))
    client.feed(send_indication(PEER6, b"six"), 1.0)
    client.feed(send_indication(PEER, b"four"), 1.0)
    sent = [o for o in client.outputs if isinstance(o, ToPeer)]
    assert sent == [ToPeer(relays[0], PEER, b"four")]
    client.feed(send_indication(PEER6, b"six"), 1.0)
    assert client.outputs == [ToPeer(relays[1], PEER6, b"six")]

    # Channels: each peer through the relayed address of its family, both ways.
    bind = [(AttrType.CHANNEL_NUMBER, 0x4001), (AttrType.XOR_PEER_ADDRESS, PEER6)]
    assert ok(client.request(Method.CHANNEL_BIND, bind, now=2.0))
    assert server.channel_route(client.ft, 0x4001, 2.0) == (relays[1], PEER6)
    (out,) = client.feed(b"\x40\x01\x00\x02hi\x00\x00", 2.0)
    assert out == ToPeer(relays[1], PEER6, b"hi")
    back = server.handle_peer_data(relays[1], PEER6, b"yo", 2.0)
    assert isinstance(back, ToClient)
    assert decode_channel_data(back.data) == (0x4001, b"yo")
    assert server.peer_route(relays[1], PEER6, 2.0) == (client.ft, 0x4001)
    # What reaches the IPv4 relayed address from the IPv6 peer's address cannot exist; what
    # comes from an unpermitted peer is dropped.
    assert server.handle_peer_data(relays[0], ("192.0.2.99", 1), b"x", 2.0) is None

    # A Refresh naming a family the allocation has is fine; deleting frees both sockets.
    assert ok(client.request(Method.REFRESH, [(AttrType.LIFETIME, 600), *V6], now=3.0))
    client.request(Method.REFRESH, [(AttrType.LIFETIME, 0)], now=4.0)
    closed = {o.relay for o in client.outputs if isinstance(o, CloseRelay)}
    assert closed == set(relays)
    assert server.state_size()["relays"] == 0 and server.state_size()["ports"] == 0


def test_dual_request_on_a_single_family_server_names_the_missing_one() -> None:
    # IPv6 only: the default IPv4 is refused outright, a dual request gets the IPv6 relay
    # and ADDRESS-ERROR-CODE for IPv4.
    options = dataclasses.replace(make_server().options, relay_address=RELAY6)
    server = TurnServer(options, SECRET, rng=random.Random(7), wall_offset=WALL)
    assert code(Client(server, ft(1)).allocate()) == 440
    dual = Client(server, ft(2)).allocate(extra=DUAL)
    assert ok(dual), dual
    assert [r[0] for r in dual.xor_relayed_addresses] == [RELAY6]
    assert dual.address_error_code is not None
    assert dual.address_error_code.family == AddressFamily.IPV4
    assert dual.address_error_code.code == 440


def test_refresh_of_a_family_the_allocation_lacks_is_443() -> None:
    server = dual_server()
    client = Client(server)
    assert ok(client.allocate())
    assert code(client.request(Method.REFRESH, V6)) == 443


def test_dual_allocation_is_all_or_nothing_when_a_socket_cannot_be_bound() -> None:
    server = dual_server(limits=ServerLimits(max_bind_attempts=2))
    client = Client(server)
    client.bind_ok = False
    response = client.allocate(extra=DUAL)
    assert code(response) == 508
    assert server.state_size() == {
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


def test_relay_addresses_must_differ_in_family() -> None:
    with pytest.raises(ValueError):
        make_server(extra_relay_address="203.0.113.11")


def _run_client(server: TurnServer, client: TurnClient, five_tuple: Any) -> None:
    """Drive our TURN client core against the server core until it stops talking."""
    client.allocate(0.0)
    for _ in range(10):
        wires = client.pop_transmits()
        if not wires:
            return
        for wire in wires:
            pending = list(server.handle_client(five_tuple, wire, 0.0))
            while pending:
                out = pending.pop(0)
                if isinstance(out, OpenRelay):
                    pending.extend(server.relay_opened(out.relay, True, 0.0))
                elif isinstance(out, ToClient):
                    client.handle_datagram(out.data, 0.0)


@pytest.mark.parametrize(
    ("kwargs", "families"),
    [({"family": AddressFamily.IPV6}, [RELAY6]), ({"dual": True}, [RELAY, RELAY6]), ({}, [RELAY])],
)
def test_our_client_asks_for_families(kwargs: dict[str, Any], families: list[str]) -> None:
    server = dual_server()
    client = TurnClient(SERVER, "alice", "pw-alice", random=_random, **kwargs)
    _run_client(server, client, ft(7))
    events = client.pop_events()
    succeeded = [e for e in events if isinstance(e, AllocationSucceeded)]
    assert succeeded, events
    assert [r[0] for r in succeeded[0].relayed_addresses] == families
    assert client.address_error is None


def test_our_client_reports_the_family_a_dual_allocation_lacks() -> None:
    server = make_server()  # IPv4 only
    client = TurnClient(SERVER, "alice", "pw-alice", random=_random, dual=True)
    _run_client(server, client, ft(8))
    (event,) = [e for e in client.pop_events() if isinstance(e, AllocationSucceeded)]
    assert [r[0] for r in event.relayed_addresses] == [RELAY]
    assert event.address_error is not None and event.address_error.code == 440
    assert event.address_error.family == AddressFamily.IPV6
    with pytest.raises(ValueError):
        TurnClient(SERVER, "a", "b", random=_random, dual=True, family=AddressFamily.IPV6)


_rng = random.Random(3)
SERVER: Address = ("203.0.113.10", 3478)


def _random(n: int) -> bytes:
    return _rng.randbytes(n)


def test_pre_rfc_code_points_of_coturn_clients() -> None:
    """coturn 4.6's turnutils_uclient -Z asks with 0x8032 and reads 0x8033."""
    server = dual_server()
    dual = Client(server, ft(9)).allocate(
        extra=[(AttrType.ADDITIONAL_ADDRESS_FAMILY_DRAFT, AddressFamily.IPV6)]
    )
    assert ok(dual) and [r[0] for r in dual.xor_relayed_addresses] == [RELAY, RELAY6]
    v4_only = make_server()
    dual = Client(v4_only, ft(10)).allocate(
        extra=[(AttrType.ADDITIONAL_ADDRESS_FAMILY_DRAFT, AddressFamily.IPV6)]
    )
    assert ok(dual) and AttrType.ADDRESS_ERROR_CODE not in dual
    error = dual.get(AttrType.ADDRESS_ERROR_CODE_DRAFT)
    assert error is not None and (error.family, error.code) == (AddressFamily.IPV6, 440)
    assert dual.address_error_code == error


def test_our_client_ignores_an_unspecified_relayed_address() -> None:
    """coturn 4.6 answers a dual request it serves in IPv4 only with a second, all-zero
    XOR-RELAYED-ADDRESS beside the ADDRESS-ERROR-CODE: that is no relayed address."""
    from p2ptun.stun import AddressErrorValue

    client = TurnClient(SERVER, "alice", "pw-alice", random=_random, dual=True)
    client.allocate(0.0)
    (wire,) = client.pop_transmits()
    request = Message.decode(wire)
    assert request.get(AttrType.ADDITIONAL_ADDRESS_FAMILY_DRAFT) == AddressFamily.IPV6
    response = request.success(
        [
            (AttrType.XOR_RELAYED_ADDRESS, (RELAY, 50000)),
            (AttrType.XOR_RELAYED_ADDRESS, ("0.0.0.0", 0)),
            (AttrType.LIFETIME, 600),
            (AttrType.ADDRESS_ERROR_CODE_DRAFT, AddressErrorValue(2, 440, "")),
        ]
    )
    client.handle_datagram(response.encode(), 0.0)
    (event,) = [e for e in client.pop_events() if isinstance(e, AllocationSucceeded)]
    assert event.relayed_addresses == ((RELAY, 50000),)
    assert event.address_error is not None and event.address_error.code == 440


def test_per_source_cap_holds_for_dual_allocations_from_one_64() -> None:
    """Two addresses of one IPv6 /64 are one source: its cap counts dual allocations once
    each, so one source holds at most twice the cap in relay sockets."""
    server = dual_server(limits=ServerLimits(max_allocations_per_ip=2))
    results = [
        Client(server, ft(20 + i, host=f"2001:db8:1::{i + 2:x}")).allocate(extra=DUAL)
        for i in range(3)
    ]
    assert [ok(r) for r in results[:2]] == [True, True]
    assert code(results[2]) == 486
    assert server.state_size()["relays"] == 4
    other = Client(server, ft(30, host="2001:db8:1:1::2")).allocate(extra=DUAL)
    assert ok(other)  # the next /64 is another source


def test_a_bound_socket_is_closed_when_the_other_family_cannot_bind() -> None:
    server = dual_server(limits=ServerLimits(max_bind_attempts=2))
    client = Client(server)
    attrs = [(AttrType.REQUESTED_TRANSPORT, 17), *DUAL]
    client.feed(client.build(Method.ALLOCATE, attrs), 0.0)  # 401 with a nonce
    client.nonce = client.responses()[-1].nonce
    wire = client.build(Method.ALLOCATE, attrs)
    pending = list(server.handle_client(client.ft, wire, 0.0))
    outputs = []
    while pending:
        out = pending.pop(0)
        outputs.append(out)
        if isinstance(out, OpenRelay):  # IPv4 binds, IPv6 never does
            pending.extend(server.relay_opened(out.relay, out.relay[0] == RELAY, 0.0))
    opened_v4 = [o.relay for o in outputs if isinstance(o, OpenRelay) and o.relay[0] == RELAY]
    closed = [o.relay for o in outputs if isinstance(o, CloseRelay)]
    assert len(opened_v4) == 1 and opened_v4[0] in closed, outputs
    assert server.state_size()["relays"] == 0 and server.state_size()["ports"] == 0
    (answer,) = [o for o in outputs if isinstance(o, ToClient)]
    assert code(Message.decode(answer.data)) == 508


@pytest.mark.parametrize(
    "host", [RELAY6, "::1", "fe80::1", "fc00::1", "::ffff:127.0.0.1", "64:ff9b::a00:1"]
)
def test_deny_list_holds_for_the_ipv6_relayed_address(host: str) -> None:
    """RFC 6890 deny list on the IPv6 side of a dual allocation: the server's own IPv6 relay
    address, loopback, link-local, unique-local and IPv4 forms that hide a denied address are
    refused (403)."""
    server = dual_server()  # its own addresses as given name only the IPv4 ones
    client = Client(server)
    assert ok(client.allocate(extra=DUAL))
    response = client.request(Method.CREATE_PERMISSION, [(AttrType.XOR_PEER_ADDRESS, (host, 1))])
    assert code(response) == 403, host
