"""L7: the relay deny list covers every non-forwardable block, and allocations count per /64.

The relay used to reach 64:ff9b:1::/48, 6to4 addresses wrapping a denied IPv4 address,
fec0::/10, 192.0.0.0/24 and 198.18.0.0/15, and counted allocations per exact IPv6 address,
so one subscriber's /64 held 2^64 times the per-client cap.
"""

from __future__ import annotations

import ipaddress
import random
from pathlib import Path

import pytest
from hostile_env import TurnProbe, rendezvous

from p2ptun.stun import AddressFamily, AttrType, Message, MessageClass, Method, long_term_key
from p2ptun.turn.server import (
    FiveTuple,
    OpenRelay,
    ServerLimits,
    ToClient,
    Transport,
    TurnServer,
    TurnServerOptions,
)

NEWLY_DENIED = [
    "64:ff9b:1::808:808",  # local-use NAT64
    "2002:7f00:1::1",  # 6to4 wrapping 127.0.0.1
    "2002:a00:1::1",  # 6to4 wrapping 10.0.0.1
    "2002:c0a8:101::1",  # 6to4 wrapping 192.168.1.1
    "fec0::1",  # site-local
    "2001::1",  # Teredo
    "2001:2::1",  # benchmarking
    "100::1",  # discard-only
    "::ffff:0:7f00:1",  # IPv4-translated 127.0.0.1
]
NEWLY_DENIED_V4 = ["192.0.0.9", "192.0.0.170", "198.18.0.1", "198.19.255.254", "192.88.99.1"]


def server(relay: str, limits: ServerLimits | None = None) -> TurnServer:
    options = TurnServerOptions(
        realm="hostile",
        relay_address=relay,
        relay_ports=(50000, 50999),
        users={"alice": "pw-alice"},
        limits=limits or ServerLimits(),
    )
    return TurnServer(options, b"s" * 32, rng=random.Random(3))


def allocate(turn: TurnServer, ft: FiveTuple, now: float = 1.0) -> tuple[Message, str | None]:
    key = long_term_key("alice", "hostile", "pw-alice")
    first = turn.handle_client(
        ft, Message.request(Method.ALLOCATE, random.randbytes(12)).encode(), now
    )
    assert isinstance(first[0], ToClient)
    nonce = Message.decode(first[0].data).nonce
    attrs: list[tuple[int, object]] = [(AttrType.REQUESTED_TRANSPORT, 17)]
    if ":" in ft.server[0]:
        attrs.append((AttrType.REQUESTED_ADDRESS_FAMILY, AddressFamily.IPV6))
    msg = Message.request(Method.ALLOCATE, random.randbytes(12), attrs)
    msg.add(AttrType.USERNAME, "alice").add(AttrType.REALM, "hostile").add(AttrType.NONCE, nonce)
    outs = turn.handle_client(ft, msg.encode(key), now)
    if isinstance(outs[0], OpenRelay):
        outs = turn.relay_opened(outs[0].relay, True, now)
    assert isinstance(outs[0], ToClient)
    return Message.decode(outs[0].data), nonce


def signed(method: int, attrs: list[tuple[int, object]], nonce: str | None) -> bytes:
    msg = Message.request(method, random.randbytes(12), attrs)
    msg.add(AttrType.USERNAME, "alice").add(AttrType.REALM, "hostile").add(AttrType.NONCE, nonce)
    return msg.encode(long_term_key("alice", "hostile", "pw-alice"))


@pytest.mark.parametrize(
    ("relay", "peer"),
    [("2001:db8::10", h) for h in NEWLY_DENIED] + [("203.0.113.10", h) for h in NEWLY_DENIED_V4],
)
def test_create_permission_to_a_non_forwardable_block_is_403(relay: str, peer: str) -> None:
    turn = server(relay)
    ft = FiveTuple(
        ("2001:db8:5::1" if ":" in relay else "198.51.100.2", 4000), (relay, 3478), Transport.UDP
    )
    answer, nonce = allocate(turn, ft)
    assert answer.message_class is MessageClass.SUCCESS
    outs = turn.handle_client(
        ft, signed(Method.CREATE_PERMISSION, [(AttrType.XOR_PEER_ADDRESS, (peer, 9))], nonce), 2.0
    )
    assert isinstance(outs[0], ToClient)
    response = Message.decode(outs[0].data)
    code = response.error_code.code if response.error_code else 200
    print(f"FIGURE L7 CreatePermission to {peer}: {code}")
    assert code == 403


def test_allocations_count_per_ipv6_64() -> None:
    turn = server("2001:db8::10", ServerLimits(max_allocations_per_ip=4))
    net = ipaddress.IPv6Network("2001:db8:77:1::/64")
    granted = 0
    for i in range(1, 11):
        ft = FiveTuple((str(net[i * 7919]), 4000 + i), ("2001:db8::10", 3478), Transport.UDP)
        answer, _ = allocate(turn, ft)
        granted += answer.message_class is MessageClass.SUCCESS
    print(f"FIGURE L7 allocations granted to 10 addresses of one /64 with a cap of 4: {granted}")
    assert granted == 4
    # Another /64 is another source.
    other = FiveTuple(("2001:db8:77:2::1", 5000), ("2001:db8::10", 3478), Transport.UDP)
    assert allocate(turn, other)[0].message_class is MessageClass.SUCCESS


@pytest.mark.slow
def test_rendezvous_refuses_non_forwardable_peers(tmp_path: Path) -> None:
    with rendezvous(tmp_path) as rv:
        probe = TurnProbe(rv.stun_addr, *rv.turn_user)
        answer = probe.request(Method.ALLOCATE, [(AttrType.REQUESTED_TRANSPORT, 17)])
        assert isinstance(answer, Message) and answer.message_class is MessageClass.SUCCESS
        for peer in NEWLY_DENIED_V4:
            response = probe.request(
                Method.CREATE_PERMISSION, [(AttrType.XOR_PEER_ADDRESS, (peer, 9))]
            )
            assert isinstance(response, Message) and response.error_code is not None
            assert response.error_code.code == 403, peer
        probe.close()
