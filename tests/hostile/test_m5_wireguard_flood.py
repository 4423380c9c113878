"""M5: a flood of WireGuard handshake initiations is met with cookies.

``under_load`` was never set by the daemon, so cookies (MAC2, whitepaper §5.3) were never
demanded: anyone who knows a node's public key could make it do a handshake's
Diffie-Hellman work (≈ 160 µs) for every 148-byte datagram, ≈ 6,300 a second saturating it.
Now the device goes under load by itself (handshake messages faster than 64 a second, or a
deep receive batch reported by the data path), answers with cookie replies (≈ 20 µs), and
limits each proven source to 20 handshakes a second after MAC2.
"""

from __future__ import annotations

import os
import time

from p2ptun.keys import generate_private_key
from p2ptun.wireguard import Device
from p2ptun.wireguard.messages import CookieReply, decode

FLOOD = 2000
#: CPU per hostile initiation, on average over the flood (it used to be the full handshake).
CPU_PER_INITIATION = 0.00006


def devices() -> tuple[Device, Device, Device]:
    """The victim, its real peer, and an attacker who knows the victim's public key."""
    victim = Device(generate_private_key(), rng=os.urandom, wall_clock=time.time)
    friend = Device(generate_private_key(), rng=os.urandom, wall_clock=time.time)
    attacker = Device(generate_private_key(), rng=os.urandom, wall_clock=time.time)
    victim.add_peer(friend.public_key, allowed_ips=["10.9.0.2/32"])
    friend.add_peer(victim.public_key, allowed_ips=["10.9.0.1/32"])
    attacker.add_peer(victim.public_key, allowed_ips=["10.9.0.1/32"])
    return victim, friend, attacker


def initiation(sender: Device, now: float) -> bytes:
    (peer,) = sender.peers.values()
    peer.handshake.last_sent = None
    peer.initiate_handshake(now)
    datagrams = peer.pop_datagrams()
    return bytes(datagrams[-1])


def test_a_flood_of_initiations_gets_cookies() -> None:
    victim, _, attacker = devices()
    flood = [initiation(attacker, 0.0) for _ in range(20)]  # replayed over and over
    start = time.process_time()
    for i in range(FLOOD):
        now = 1.0 + i / FLOOD  # 2,000 in one second
        victim.receive_datagram(flood[i % 20], now, (f"198.51.100.{i % 200}", 40000 + i))
        victim.pop_replies()
    per = (time.process_time() - start) / FLOOD
    counters = victim.counters
    worked = counters.unknown_peer + counters.handshake_auth_failed + counters.replayed_initiation
    print(
        f"FIGURE M5 core: {FLOOD} initiations in 1 s from 200 addresses: "
        f"{worked} got Diffie-Hellman work, {counters.cookie_replies_sent} cookie replies, "
        f"{per * 1e6:.0f} µs CPU per initiation"
    )
    assert counters.cookie_replies_sent >= FLOOD - 100
    assert per < CPU_PER_INITIATION


def test_a_deep_batch_puts_the_device_under_load_at_once() -> None:
    victim, friend, _ = devices()
    victim.report_backlog(64, 5.0)  # what the data path reports after a deep batch
    init = initiation(friend, 5.0)
    assert victim.receive_datagram(init, 5.01, ("192.0.2.2", 51820)) is None
    replies = victim.pop_replies()
    assert len(replies) == 1 and isinstance(decode(replies[0][1]), CookieReply)
    assert not victim.is_under_load(6.5)  # a second after the last sign of load


def test_a_proven_source_is_rate_limited_and_a_friend_still_gets_in() -> None:
    victim, friend, attacker = devices()
    victim.under_load = True
    source = ("203.0.113.66", 4000)
    # The attacker receives its cookie (it owns its address) and then sends MAC2'd floods.
    (victim_peer,) = attacker.peers.values()
    first = initiation(attacker, 1.0)
    victim.receive_datagram(first, 1.0, source)
    ((_, reply),) = victim.pop_replies()
    attacker.receive_datagram(reply, 1.0, ("192.0.2.1", 51820))
    assert victim_peer.cookie.has_cookie
    processed = 0
    for i in range(100):
        before = victim.counters.handshake_rate_limited
        victim.receive_datagram(initiation(attacker, 1.1), 1.1 + i * 0.001, source)
        victim.pop_replies()
        processed += victim.counters.handshake_rate_limited == before
    print(
        f"FIGURE M5 one proven source, 100 initiations in 0.1 s under load: {processed} processed"
    )
    assert processed <= 7
    # The victim's real peer completes a handshake under load (cookie, then MAC2).
    (to_victim,) = friend.peers.values()
    now = 2.0
    to_victim.initiate_handshake(now)
    for _ in range(3):
        for datagram in to_victim.pop_datagrams():
            victim.receive_datagram(datagram, now, ("192.0.2.2", 51820))
        for _, reply in victim.pop_replies():
            friend.receive_datagram(reply, now, ("192.0.2.1", 51820))
        for peer in victim.peers.values():
            for datagram in peer.pop_datagrams():
                friend.receive_datagram(datagram, now, ("192.0.2.1", 51820))
        now += 5.5
        friend.handle_timeout(now)
    assert friend.counters.handshakes_completed == 1
