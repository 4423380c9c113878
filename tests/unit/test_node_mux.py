"""UdpMux routing on real loopback sockets: ICE requests by ufrag, responses by transaction id
(our waiters first, then the agent that sent the request), TURN servers by source address,
relayed payloads by kind; junk is counted, never raised."""

from __future__ import annotations

import socket
from typing import Any

from p2ptun.addr import Address
from p2ptun.net.udp import UdpEndpoint
from p2ptun.node.mux import UdpMux
from p2ptun.stun import AttrType, Message, Method
from p2ptun.stun.message import random_transaction_id


class Sink:
    def __init__(self) -> None:
        self.got: list[tuple[bytes, Address, Address]] = []

    def handle_stun(self, data: bytes, local: Address, remote: Address) -> bool:
        self.got.append((data, local, remote))
        return True


class Relay:
    def __init__(self) -> None:
        self.got: list[bytes] = []

    def handle_datagram(self, data: Any) -> None:
        self.got.append(bytes(data))


def setup() -> tuple[UdpMux, UdpEndpoint, socket.socket, list[tuple[bytes, Address]]]:
    ep = UdpEndpoint.bind(socket.AF_INET, "127.0.0.1", 0)
    wireguard: list[tuple[bytes, Address]] = []
    mux = UdpMux([ep], on_relayed_wireguard=lambda d, a: wireguard.append((d, a)))
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    return mux, ep, peer, wireguard


def deliver(ep: UdpEndpoint, peer: socket.socket, data: bytes) -> None:
    peer.sendto(data, ep.local_address)
    assert ep.drain() == 1


def test_requests_by_ufrag_responses_by_transaction() -> None:
    mux, ep, peer, _ = setup()
    with ep, peer:
        alice, bob = Sink(), Sink()
        mux.add_ice("aliceuf", alice)
        mux.add_ice("bobuf", bob)
        request = Message.request(
            Method.BINDING, random_transaction_id(), [(AttrType.USERNAME, "bobuf:remote")]
        ).encode(fingerprint=True)
        deliver(ep, peer, request)
        assert len(bob.got) == 1 and not alice.got
        _, local, remote = bob.got[0]
        assert local == ("127.0.0.1", ep.local_address[1])  # the routed local address
        assert remote == peer.getsockname()

        # alice sent a check: its response comes back to alice, whatever the USERNAME.
        check = Message.request(Method.BINDING, random_transaction_id())
        mux.note_ice_request(check.encode(), alice)
        deliver(ep, peer, check.success().encode())
        assert len(alice.got) == 1

        # our own transaction (STUN gathering, ping) wins over everything
        tid = random_transaction_id()
        seen: list[Message] = []
        mux.expect_response(tid, lambda msg, src: seen.append(msg))
        deliver(ep, peer, Message.request(Method.BINDING, tid).success().encode())
        assert len(seen) == 1 and seen[0].transaction_id == tid

        # unknown ufrag, unmatched response, indication: dropped and counted
        deliver(
            ep,
            peer,
            Message.request(
                Method.BINDING, random_transaction_id(), [(AttrType.USERNAME, "nobody:x")]
            ).encode(),
        )
        deliver(
            ep, peer, Message.request(Method.BINDING, random_transaction_id()).success().encode()
        )
        deliver(ep, peer, Message.indication(Method.BINDING, random_transaction_id()).encode())
        assert mux.counters.stun_unknown_ufrag == 1
        assert mux.counters.stun_unmatched == 1
        mux.remove_ice(bob)
        deliver(ep, peer, request)
        assert len(bob.got) == 1


def test_turn_server_traffic_and_relayed_payloads() -> None:
    mux, ep, server, wireguard = setup()
    with ep, server:
        relay = Relay()
        mux.add_relay(server.getsockname(), relay)
        stun = Message.request(Method.ALLOCATE, random_transaction_id()).success().encode()
        deliver(ep, server, stun)
        deliver(ep, server, b"\x40\x00\x00\x04abcd")  # ChannelData
        assert relay.got == [stun, b"\x40\x00\x00\x04abcd"]
        mux.remove_relay(server.getsockname(), relay)
        deliver(ep, server, b"\x40\x00\x00\x04abcd")
        assert mux.counters.channel_data_unknown_server == 1

        # what a relay unwrapped: WireGuard to the data path, STUN to ICE on the relayed base
        sink = Sink()
        mux.add_ice("uf", sink)
        wg = b"\x04\x00\x00\x00" + bytes(28)
        mux.relayed(wg, ("203.0.113.10", 50000), ("198.51.100.2", 4000))
        assert wireguard == [(wg, ("198.51.100.2", 4000))]
        check = Message.request(
            Method.BINDING, random_transaction_id(), [(AttrType.USERNAME, "uf:x")]
        ).encode()
        mux.relayed(check, ("203.0.113.10", 50000), ("198.51.100.2", 4000))
        assert sink.got == [(check, ("203.0.113.10", 50000), ("198.51.100.2", 4000))]
        mux.relayed(b"junk", ("203.0.113.10", 50000), ("198.51.100.2", 4000))
        assert mux.counters.relayed_other == 1


def test_local_address_follows_routing() -> None:
    mux, ep, peer, _ = setup()
    with ep, peer:
        assert mux.local_for(("127.0.0.1", 9)) == ("127.0.0.1", ep.local_address[1])
        assert mux.local_for(("::1", 9)) is None  # no IPv6 socket here
