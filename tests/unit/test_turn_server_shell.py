"""The trio shell of the embedded STUN/TURN servers, on loopback: real sockets, real relay
sockets, short bounded waits."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import AsyncIterator, Callable

import pytest
import trio
from loopback_turn import free_port

from p2ptun.config import StunServerSettings, TurnServerSettings
from p2ptun.errors import RuntimeFailure
from p2ptun.net.system import SystemHost
from p2ptun.rendezvous.stun_turn import StunTurnService
from p2ptun.stun import (
    AttrType,
    Message,
    MessageClass,
    Method,
    decode_channel_data,
    encode_channel_data,
    long_term_key,
    message_length,
)
from p2ptun.turn.credentials import make_rest_credential

HOST = "127.0.0.1"
REALM = "lab"
AUTH_SECRET = "shell-test-secret-0123"


def turn_settings() -> TurnServerSettings:
    return TurnServerSettings(
        realm=REALM,
        relay_address=HOST,
        relay_ports=(42000, 42999),
        users={"alice": "pw"},
        auth_secret=AUTH_SECRET,
        allow_peers=(ipaddress.ip_network("127.0.0.0/8"),),
    )


@pytest.fixture
async def service(nursery: trio.Nursery) -> AsyncIterator[tuple[StunTurnService, int]]:
    port = free_port()
    svc = await StunTurnService.bind(
        SystemHost(), StunServerSettings(((HOST, port),)), turn_settings()
    )
    nursery.start_soon(svc.serve)
    yield svc, port
    svc.close()


async def udp_exchange(sock: trio.socket.SocketType, data: bytes, dest: tuple[str, int]) -> Message:
    await sock.sendto(data, dest)
    with trio.fail_after(5):
        reply, _ = await sock.recvfrom(65536)
    return Message.decode(reply)


async def test_binding_over_udp_and_tcp(service: tuple[StunTurnService, int]) -> None:
    _, port = service
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    await sock.bind((HOST, 0))
    reply = await udp_exchange(
        sock, Message.request(Method.BINDING, b"a" * 12).encode(), (HOST, port)
    )
    assert reply.xor_mapped_address == sock.getsockname()
    stream = await trio.open_tcp_stream(HOST, port)
    await stream.send_all(Message.request(Method.BINDING, b"b" * 12).encode())
    buf = b""
    with trio.fail_after(5):
        while (n := message_length(buf)) is None or len(buf) < n:
            buf += await stream.receive_some(4096)
    reply = Message.decode(buf)
    assert reply.message_class == MessageClass.SUCCESS and reply.xor_mapped_address is not None
    await stream.aclose()
    sock.close()


async def test_relay_round_trip_and_refresh_zero_closes_the_relay(
    service: tuple[StunTurnService, int],
) -> None:
    svc, port = service
    server = (HOST, port)
    client = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    await client.bind((HOST, 0))
    peer = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    await peer.bind((HOST, 0))
    peer_addr = peer.getsockname()
    signed, relay = await _allocate(client, server)
    assert relay[0] == HOST
    perm = await udp_exchange(
        client,
        signed(Method.CREATE_PERMISSION, b"3" * 12, [(AttrType.XOR_PEER_ADDRESS, peer_addr)]),
        server,
    )
    assert perm.message_class == MessageClass.SUCCESS, perm

    send = Message.indication(
        Method.SEND, b"4" * 12, [(AttrType.XOR_PEER_ADDRESS, peer_addr), (AttrType.DATA, b"ping")]
    )
    await client.sendto(send.encode(), server)
    with trio.fail_after(5):
        data, src = await peer.recvfrom(2048)
    assert data == b"ping" and src == relay
    for i in range(20):  # a burst: the relay task drains it in one wake-up
        await peer.sendto(b"pong%d" % i, relay)
    got: list[bytes | None] = []
    with trio.fail_after(5):
        while len(got) < 20:
            reply, _ = await client.recvfrom(2048)
            ind = Message.decode(reply)
            assert ind.method == Method.DATA and ind.xor_peer_address == peer_addr
            got.append(ind.data)
    assert got == [b"pong%d" % i for i in range(20)]

    done = await udp_exchange(
        client, signed(Method.REFRESH, b"5" * 12, [(AttrType.LIFETIME, 0)]), server
    )
    assert done.message_class == MessageClass.SUCCESS
    assert svc.counters.relays_opened == 1 and svc.counters.relays_closed == 1
    counters = svc.counters_dict()
    assert counters["turn_relayed_to_client"] == 20 and counters["turn_relayed_to_peer"] == 1
    client.close()
    peer.close()


async def test_tcp_close_deletes_the_allocation(service: tuple[StunTurnService, int]) -> None:
    svc, port = service
    assert svc.turn is not None
    stream = await trio.open_tcp_stream(HOST, port)
    req = Message.request(Method.ALLOCATE, b"6" * 12, [(AttrType.REQUESTED_TRANSPORT, 17)]).encode()
    await stream.send_all(req)
    with trio.fail_after(5):
        first = await stream.receive_some(4096)
    challenge = Message.decode(first)
    msg = Message.request(Method.ALLOCATE, b"7" * 12, [(AttrType.REQUESTED_TRANSPORT, 17)])
    msg.add(AttrType.USERNAME, "alice").add(AttrType.REALM, REALM).add(
        AttrType.NONCE, challenge.nonce
    )
    await stream.send_all(msg.encode(long_term_key("alice", REALM, "pw")))
    with trio.fail_after(5):
        reply = Message.decode(await stream.receive_some(4096))
    assert reply.message_class == MessageClass.SUCCESS
    assert len(svc.turn.allocations) == 1
    # Garbage on the stream ends the connection, and the allocation with it.
    await stream.send_all(b"\xff" * 8)
    with trio.fail_after(5):
        while svc.turn.allocations:
            await trio.sleep(0.01)
    assert svc.counters.stream_garbage == 1
    assert svc.counters.relays_closed == 1
    await stream.aclose()


async def test_rest_credentials_work_right_after_start(
    service: tuple[StunTurnService, int],
) -> None:
    """Expiry is judged against the wall clock from the first request on (the offset is taken
    from trio's clock, the one the core is fed)."""
    _, port = service
    import time

    cred = make_rest_credential(AUTH_SECRET, "node1", time.time(), 120)
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    await sock.bind((HOST, 0))
    attrs = [(AttrType.REQUESTED_TRANSPORT, 17)]
    challenge = await udp_exchange(
        sock, Message.request(Method.ALLOCATE, b"8" * 12, attrs).encode(), (HOST, port)
    )
    msg = Message.request(Method.ALLOCATE, b"9" * 12, attrs)
    msg.add(AttrType.USERNAME, cred.username).add(AttrType.REALM, REALM)
    msg.add(AttrType.NONCE, challenge.nonce)
    reply = await udp_exchange(
        sock, msg.encode(long_term_key(cred.username, REALM, cred.password)), (HOST, port)
    )
    assert reply.message_class == MessageClass.SUCCESS, reply
    sock.close()


async def test_bind_conflict_is_one_clear_runtime_failure() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind((HOST, 0))
        port = taken.getsockname()[1]
        with pytest.raises(
            RuntimeFailure, match=rf"cannot bind UDP 127.0.0.1:{port}: address already in use"
        ):
            await StunTurnService.bind(SystemHost(), StunServerSettings(((HOST, port),)), None)


Signer = Callable[[int, bytes, list[tuple[int, object]]], bytes]
"""Encodes a request signed with alice's long-term credentials and the server's nonce."""


async def _allocate(
    client: trio.socket.SocketType, server: tuple[str, int]
) -> tuple[Signer, tuple[str, int]]:
    """Allocate for ``client`` as alice (the 401 challenge, then the signed request): a signer
    for further requests and the relayed address."""
    key = long_term_key("alice", REALM, "pw")
    challenge = await udp_exchange(
        client,
        Message.request(Method.ALLOCATE, b"1" * 12, [(AttrType.REQUESTED_TRANSPORT, 17)]).encode(),
        server,
    )
    assert challenge.error_code is not None and challenge.error_code.code == 401
    nonce = challenge.nonce

    def signed(method: int, tid: bytes, attrs: list[tuple[int, object]]) -> bytes:
        msg = Message.request(method, tid, attrs)
        msg.add(AttrType.USERNAME, "alice").add(AttrType.REALM, REALM).add(AttrType.NONCE, nonce)
        return msg.encode(key)

    alloc = await udp_exchange(
        client, signed(Method.ALLOCATE, b"2" * 12, [(AttrType.REQUESTED_TRANSPORT, 17)]), server
    )
    assert alloc.message_class == MessageClass.SUCCESS, alloc
    relay = alloc.xor_relayed_address
    assert relay is not None
    return signed, relay


async def _allocate_with_channel(
    client: trio.socket.SocketType, server: tuple[str, int], peer_addr: tuple[str, int]
) -> tuple[str, int]:
    """Allocate for ``client`` and bind channel 0x4001 to ``peer_addr``; the relayed address."""
    signed, relay = await _allocate(client, server)
    bound = await udp_exchange(
        client,
        signed(
            Method.CHANNEL_BIND,
            b"3" * 12,
            [(AttrType.CHANNEL_NUMBER, 0x4001), (AttrType.XOR_PEER_ADDRESS, peer_addr)],
        ),
        server,
    )
    assert bound.message_class == MessageClass.SUCCESS, bound
    return relay


@pytest.mark.parametrize("offload", ["auto", "off"])
async def test_channel_data_bursts_are_relayed_in_order_both_ways(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch, offload: str
) -> None:
    """A burst the server drains in one batch: ChannelData goes out per peer in order, with
    malformed and unbound-channel messages and a Send indication among it dropped or relayed
    as the RFC says; the peer's burst comes back as ChannelData. With UDP GSO/GRO and
    without (P2PTUN_OFFLOAD=off)."""
    monkeypatch.setenv("P2PTUN_OFFLOAD", offload)
    port = free_port()
    svc = await StunTurnService.bind(
        SystemHost(), StunServerSettings(((HOST, port),)), turn_settings()
    )
    nursery.start_soon(svc.serve)
    server = (HOST, port)
    raw = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    raw.bind((HOST, 0))
    client = trio.socket.from_stdlib_socket(raw)
    peer_raw = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer_raw.bind((HOST, 0))
    peer = trio.socket.from_stdlib_socket(peer_raw)
    peer_addr = peer.getsockname()
    relay = await _allocate_with_channel(client, server, peer_addr)

    payloads = [bytes([i]) * 200 for i in range(30)] + [b"short", b"x" * 201]
    burst = [encode_channel_data(0x4001, p) for p in payloads]
    burst.insert(10, b"\x40\x01\x00\xff" + b"y" * 10)  # length beyond the datagram
    burst.insert(20, encode_channel_data(0x4002, b"unbound"))
    send = Message.indication(
        Method.SEND, b"4" * 12, [(AttrType.XOR_PEER_ADDRESS, peer_addr), (AttrType.DATA, b"ind")]
    ).encode()
    burst.insert(25, send)
    for wire in burst:  # back to back (no checkpoint): the server drains them in one batch
        raw.sendto(wire, server)
    expected = [*payloads[:23], b"ind", *payloads[23:]]
    got: list[bytes] = []
    with trio.fail_after(5):
        while len(got) < len(expected):
            data, src = await peer.recvfrom(2048)
            assert src == relay
            got.append(data)
    assert got == expected
    counters = svc.counters_dict()
    assert counters["turn_dropped_malformed"] == 1
    assert counters["turn_dropped_unbound_channel"] == 1
    assert counters["turn_relayed_to_peer"] == len(expected)
    assert counters["turn_relayed_to_peer_bytes"] == sum(len(p) for p in expected)

    back = [bytes([i]) * 300 for i in range(25)] + [b"end"]
    for data in back:
        peer_raw.sendto(data, relay)
    received: list[bytes] = []
    with trio.fail_after(5):
        while len(received) < len(back):
            wire, src = await client.recvfrom(2048)
            assert src == server
            frame = decode_channel_data(wire)
            assert frame.channel == 0x4001
            received.append(frame.data)
    assert received == back
    counters = svc.counters_dict()
    assert counters["turn_relayed_to_client"] == len(back)
    assert counters["turn_relayed_to_client_bytes"] == sum(len(p) for p in back)
    client.close()
    peer.close()
    svc.close()
