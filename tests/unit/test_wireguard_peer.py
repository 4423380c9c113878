"""Two sans-I/O WireGuard devices under virtual time: handshake, data, timers, attacks, cookies."""

from __future__ import annotations

import ipaddress
import itertools
import random
import struct
from collections.abc import Callable
from dataclasses import replace

import pytest

from p2ptun.keys import clamp
from p2ptun.wireguard import (
    Device,
    HandshakeCompleted,
    HandshakeFailed,
    PathQuiet,
    Peer,
    SessionExpired,
    TimerConfig,
)
from p2ptun.wireguard.messages import (
    CookieReply,
    Initiation,
    MessageType,
    Response,
    TransportHeader,
    decode,
)
from p2ptun.wireguard.transport import Keypair, padded_length

A_ADDR = ("192.0.2.1", 51820)
B_ADDR = ("198.51.100.2", 51820)
WALL = 1_700_000_000.0


def ip4(src: str, dst: str, payload: bytes = b"hello") -> bytes:
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x45, 0, 20 + len(payload), 0, 0, 64, 17, 0,
        ipaddress.IPv4Address(src).packed,
        ipaddress.IPv4Address(dst).packed,
    )  # fmt: skip
    return header + payload


def ip6(src: str, dst: str, payload: bytes = b"hello6") -> bytes:
    return (
        struct.pack("!IHBB", 6 << 28, len(payload), 17, 64)
        + ipaddress.IPv6Address(src).packed
        + ipaddress.IPv6Address(dst).packed
        + payload
    )


def current(peer: Peer) -> Keypair | None:
    """``peer.current``, read through a call so type narrowing does not go stale."""
    return peer.current


def nxt(peer: Peer) -> Keypair | None:
    return peer.next


def a_to_b(payload: bytes = b"hello") -> bytes:
    return ip4("10.0.0.1", "10.0.0.2", payload)


def b_to_a(payload: bytes = b"world") -> bytes:
    return ip4("10.0.0.2", "10.0.0.1", payload)


class Net:
    """Devices A (10.0.0.1, fd00::1) and B (10.0.0.2, fd00::2) joined by a lossless wire.

    ``drop`` decides per datagram (direction "ab" or "ba", bytes) whether the wire loses it;
    ``log`` records every datagram put on the wire. Time only moves in :meth:`run_until`.
    """

    def __init__(
        self,
        *,
        timers: TimerConfig | None = None,
        psk_a: bytes | None = None,
        psk_b: bytes | None = None,
        keepalive_a: float | None = None,
        mtu: int = 0,
        seed: int = 1,
    ) -> None:
        self.r = random.Random(seed)
        self.now = 0.0
        self.a = Device(
            clamp(self.r.randbytes(32)),
            rng=self.r.randbytes,
            wall_clock=self.wall,
            timers=timers,
            mtu=mtu,
        )
        self.b = Device(
            clamp(self.r.randbytes(32)),
            rng=self.r.randbytes,
            wall_clock=self.wall,
            timers=timers,
            mtu=mtu,
        )
        self.a_b = self.a.add_peer(
            self.b.public_key,
            preshared_key=psk_a,
            allowed_ips=["10.0.0.2/32", "fd00::2/128"],
            persistent_keepalive=keepalive_a,
        )
        self.b_a = self.b.add_peer(
            self.a.public_key, preshared_key=psk_b, allowed_ips=["10.0.0.1/32", "fd00::1/128"]
        )
        self.drop: Callable[[str, bytes], bool] = lambda direction, data: False
        self.log: list[tuple[float, str, bytes]] = []
        self.events_a: list[object] = []
        self.events_b: list[object] = []
        self.packets_a: list[bytes] = []
        self.packets_b: list[bytes] = []

    def wall(self) -> float:
        return WALL + self.now

    def sent(self, direction: str, kind: MessageType) -> list[bytes]:
        return [d for _, dr, d in self.log if dr == direction and d[0] == kind]

    def pump(self) -> None:
        for _ in range(1000):
            moved = False
            for peer, dst, direction, src in (
                (self.a_b, self.b, "ab", A_ADDR),
                (self.b_a, self.a, "ba", B_ADDR),
            ):
                for d in peer.pop_datagrams():
                    moved = True
                    self.log.append((self.now, direction, d))
                    if not self.drop(direction, d):
                        dst.receive_datagram(d, self.now, src)
            for dev, other, direction, src in (
                (self.b, self.a, "ba", B_ADDR),
                (self.a, self.b, "ab", A_ADDR),
            ):
                for _, reply in dev.pop_replies():
                    moved = True
                    self.log.append((self.now, direction, reply))
                    if not self.drop(direction, reply):
                        other.receive_datagram(reply, self.now, src)
            self.events_a += self.a_b.pop_events()
            self.events_b += self.b_a.pop_events()
            self.packets_a += self.a_b.pop_packets()
            self.packets_b += self.b_a.pop_packets()
            if not moved:
                return
        raise AssertionError("datagram storm")

    def run_until(self, t: float) -> None:
        self.pump()
        for _ in range(100_000):
            wakeups = [w for w in (self.a.next_wakeup(), self.b.next_wakeup()) if w is not None]
            if not wakeups or min(wakeups) > t:
                break
            self.now = max(self.now, min(wakeups))
            self.a.handle_timeout(self.now)
            self.b.handle_timeout(self.now)
            self.pump()
        self.now = max(self.now, t)

    def connect(self) -> None:
        self.a.send_packet(a_to_b(), self.now)
        self.pump()
        assert self.packets_b == [a_to_b()]
        self.packets_b.clear()


# -- handshake and data --------------------------------------------------------------------


def test_handshake_and_data_both_ways() -> None:
    net = Net()
    net.a.send_packet(a_to_b(), 0.0)
    net.pump()
    kinds = [(d, x[0], len(x)) for _, d, x in net.log]
    assert kinds == [("ab", 1, 148), ("ba", 2, 92), ("ab", 4, 16 + 32 + 16)]
    init = decode(net.log[0][2])
    resp = decode(net.log[1][2])
    data = decode(net.log[2][2])
    assert isinstance(init, Initiation) and isinstance(resp, Response)
    assert isinstance(data, TransportHeader)
    assert resp.receiver == init.sender
    assert data.receiver == resp.sender and data.counter == 0
    assert init.mac2 == bytes(16) and resp.mac2 == bytes(16)
    assert net.packets_b == [a_to_b()]
    assert net.events_a == [HandshakeCompleted(0.0, True)]
    assert net.events_b == [HandshakeCompleted(0.0, False)]
    assert net.a_b.last_handshake == 0.0 and net.b_a.last_handshake == 0.0

    net.b.send_packet(b_to_a(), 0.5)
    net.a.send_packet(ip6("fd00::1", "fd00::2"), 0.5)
    net.pump()
    assert net.packets_a == [b_to_a()]
    assert net.packets_b == [a_to_b(), ip6("fd00::1", "fd00::2")]
    assert net.a.counters.handshakes_completed == 1 == net.b.counters.handshakes_completed
    assert net.a_b.tx_bytes > 0 and net.b_a.rx_bytes == net.a_b.tx_bytes


def test_peer_receive_datagram_reports_authentication() -> None:
    net = Net()
    net.a_b.initiate_handshake(0.0)
    (init,) = net.a_b.pop_datagrams()
    assert net.b_a.receive_datagram(init, 0.0, A_ADDR)
    (resp,) = net.b_a.pop_datagrams()
    assert net.a_b.receive_datagram(resp, 0.0, B_ADDR)
    assert not net.a_b.receive_datagram(b"\x04\0\0\0" + bytes(28), 0.0)


def test_responder_waits_for_first_data_before_sending() -> None:
    net = Net()
    net.a_b.initiate_handshake(0.0)
    (init,) = net.a_b.pop_datagrams()
    net.b.receive_datagram(init, 0.0, A_ADDR)
    (resp,) = net.b_a.pop_datagrams()
    assert net.b_a.next is not None and current(net.b_a) is None
    net.b.send_packet(b_to_a(), 0.1)
    assert net.b_a.pop_datagrams() == []  # staged; no new initiation within REKEY_TIMEOUT
    assert list(net.b_a.staged) == [b_to_a()]
    net.a.receive_datagram(resp, 0.2, B_ADDR)
    (keepalive,) = net.a_b.pop_datagrams()
    assert len(keepalive) == 32
    net.b.receive_datagram(keepalive, 0.3, A_ADDR)
    assert current(net.b_a) is not None and nxt(net.b_a) is None
    assert net.b_a.pop_events() == [HandshakeCompleted(0.3, False)]
    (data,) = net.b_a.pop_datagrams()
    net.a.receive_datagram(data, 0.3, B_ADDR)
    assert net.a_b.pop_packets() == [b_to_a()]
    assert net.b.counters.keepalives_received == 1


def test_preshared_key() -> None:
    psk = bytes(range(32))
    net = Net(psk_a=psk, psk_b=psk)
    net.connect()
    assert net.a.counters.handshakes_completed == 1


def test_preshared_key_mismatch_fails() -> None:
    net = Net(psk_a=bytes(range(32)), psk_b=None)
    net.a.send_packet(a_to_b(), 0.0)
    net.pump()
    assert net.packets_b == []
    assert net.a.counters.handshake_auth_failed == 1
    assert net.a_b.current is None


def test_padding_and_mtu() -> None:
    net = Net(mtu=1420)
    net.connect()
    net.log.clear()
    for size in (0, 1, 16, 1379, 1400, 1420):
        pkt = a_to_b(bytes(size))
        net.a.send_packet(pkt, 0.0)
        net.pump()
        sent = net.log[-1][2]
        assert len(sent) == 32 + padded_length(len(pkt), 1420)
        assert net.packets_b[-1] == pkt
    assert padded_length(0) == 0 and padded_length(1) == 16 and padded_length(1440, 1420) == 1452
    net.a_b.send_keepalive(0.0)
    net.pump()
    assert len(net.log[-1][2]) == 32


# -- keypair rotation and rekey --------------------------------------------------------------


def test_rekey_after_time_on_send_by_initiator_only() -> None:
    net = Net()
    net.connect()
    first = net.a_b.current
    assert first is not None and first.is_initiator
    net.run_until(119.0)
    net.b.send_packet(b_to_a(), net.now)  # responder never rekeys on age
    net.pump()
    assert len(net.sent("ab", MessageType.INITIATION)) == 1
    net.run_until(121.0)
    net.b.send_packet(b_to_a(), net.now)
    net.pump()
    assert len(net.sent("ba", MessageType.INITIATION)) == 0
    assert len(net.sent("ab", MessageType.INITIATION)) == 1
    net.a.send_packet(a_to_b(b"late"), net.now)  # initiator, key older than 120 s
    net.pump()
    assert len(net.sent("ab", MessageType.INITIATION)) == 2
    assert net.a_b.current is not first and net.a_b.previous is first
    assert net.packets_b[-1] == a_to_b(b"late")
    b_kp, a_kp = current(net.b_a), current(net.a_b)
    assert b_kp is not None and a_kp is not None and b_kp.remote_index == a_kp.local_index


def test_rekey_on_receive_when_key_nearly_rejected() -> None:
    net = Net()
    net.connect()
    age = TimerConfig().rekey_on_receive_age
    assert age == 165.0
    # Keep the initiator from rekeying on send: only B talks.
    net.run_until(age - 1)
    net.b.send_packet(b_to_a(), net.now)
    net.pump()
    assert len(net.sent("ab", MessageType.INITIATION)) == 1
    net.run_until(age + 0.5)
    net.b.send_packet(b_to_a(), net.now)
    net.pump()
    assert len(net.sent("ab", MessageType.INITIATION)) == 2
    assert net.a.counters.handshakes_completed == 2


def test_reject_after_time_stops_using_key() -> None:
    net = Net()
    net.connect()
    net.drop = lambda d, x: x[0] != MessageType.TRANSPORT  # no more handshakes get through
    net.run_until(181.0)
    before = len(net.sent("ab", MessageType.TRANSPORT))
    net.a.send_packet(a_to_b(b"too late"), net.now)
    net.pump()
    assert len(net.sent("ab", MessageType.TRANSPORT)) == before
    assert list(net.a_b.staged) == [a_to_b(b"too late")]
    assert not net.a_b.has_session(net.now)
    # A transport message on a keypair older than REJECT_AFTER_TIME is refused on receive.
    kp = net.b_a.current
    assert kp is not None
    net.b_a._send_transport(kp, b_to_a(), net.now)
    for d in net.b_a.pop_datagrams():
        net.a.receive_datagram(d, net.now, B_ADDR)
    assert net.a.counters.expired_keypair == 1


def test_shortened_timers_rekey_under_virtual_time() -> None:
    timers = replace(
        TimerConfig(),
        rekey_after_time=2.0,
        reject_after_time=3.0,
        rekey_timeout=0.25,
        keepalive_timeout=0.5,
    )
    net = Net(timers=timers)
    net.connect()
    for i in range(1, 40):
        net.run_until(i * 0.5)
        net.a.send_packet(a_to_b(bytes([i])), net.now)
        net.b.send_packet(b_to_a(bytes([i])), net.now)
        net.pump()
    assert len(net.packets_b) == 39 and len(net.packets_a) == 39
    assert net.a.counters.handshakes_completed >= 8


def test_timer_config_shortened_keeps_the_ratios() -> None:
    t = TimerConfig().shortened(4.0)
    assert t.rekey_after_time == 4.0
    assert t.reject_after_time == pytest.approx(6.0)
    assert t.rekey_timeout == pytest.approx(4.0 / 24)
    assert t.keepalive_timeout == pytest.approx(4.0 / 12)
    assert t.rekey_attempt_time == pytest.approx(3.0)
    assert t.max_handshake_attempts == TimerConfig().max_handshake_attempts
    assert t.rekey_after_time < t.rekey_on_receive_age < t.reject_after_time
    assert (t.rekey_after_messages, t.initiations_per_second) == (2**60, 50)
    with pytest.raises(ValueError):
        TimerConfig().shortened(0)


def test_shortened_config_rekeys_without_losing_packets() -> None:
    net = Net(timers=TimerConfig().shortened(3.0))
    net.connect()
    for i in range(1, 101):  # 20 s of traffic every 0.2 s, both ways
        net.run_until(i * 0.2)
        net.a.send_packet(a_to_b(bytes([i])), net.now)
        net.b.send_packet(b_to_a(bytes([i])), net.now)
        net.pump()
    assert len(net.packets_b) == 100 and len(net.packets_a) == 100
    initiated = [e for e in net.events_a if isinstance(e, HandshakeCompleted) and e.is_initiator]
    assert len(initiated) >= 6
    assert net.a.counters.staged_dropped == net.b.counters.staged_dropped == 0


def test_views_into_reused_buffers() -> None:
    """The I/O layer passes views into buffers it reuses: staged packets must be copies."""
    net = Net()
    buf = bytearray(a_to_b(b"first"))
    net.a.send_packet(memoryview(buf), net.now)  # no session yet: staged
    buf[:] = a_to_b(b"other")
    net.pump()
    assert net.packets_b == [a_to_b(b"first")]
    net.b.send_packet(b_to_a(b"reply"), net.now)
    (datagram,) = net.b_a.pop_datagrams()
    rx = bytearray(datagram)
    assert net.a.receive_datagram(memoryview(rx), net.now, B_ADDR) is net.a_b
    rx[16:] = bytes(len(rx) - 16)
    assert net.a_b.pop_packets() == [b_to_a(b"reply")]


def test_rekey_after_messages_either_side() -> None:
    timers = replace(TimerConfig(), rekey_after_messages=5)
    net = Net(timers=timers)
    net.connect()
    net.now = 6.0  # past REKEY_TIMEOUT since B's response
    for _ in range(5):
        net.b.send_packet(b_to_a(), net.now)
    net.pump()
    assert len(net.sent("ba", MessageType.INITIATION)) == 0
    net.b.send_packet(b_to_a(), net.now)  # 6 sent > REKEY_AFTER_MESSAGES
    net.pump()
    assert len(net.sent("ba", MessageType.INITIATION)) == 1  # responder side, by count
    assert net.a.counters.handshakes_completed == 2


def test_reject_after_messages() -> None:
    timers = replace(TimerConfig(), reject_after_messages=4)
    net = Net(timers=timers)
    net.drop = lambda d, x: d == "ab" and x[0] == MessageType.INITIATION and len(net.log) > 3
    net.connect()
    for i in range(4):
        net.a.send_packet(a_to_b(bytes([i])), 0.0)
    net.pump()
    assert len(net.packets_b) == 3  # counters 1..3; counter 4 would hit the limit
    assert len(net.a_b.staged) == 1


def test_previous_keypair_still_decrypts_in_flight_packets() -> None:
    net = Net()
    net.connect()
    kp1 = net.a_b.current
    assert kp1 is not None
    held = []
    net.a.send_packet(a_to_b(b"old1"), 1.0)
    net.a.send_packet(a_to_b(b"old2"), 1.0)
    held = net.a_b.pop_datagrams()
    net.now = 6.0
    net.a_b.initiate_handshake(net.now)  # second session
    net.pump()
    assert net.b_a.current is not None and net.b_a.current is not net.b_a.previous
    assert net.b_a.previous is not None and net.b_a.previous.local_index == kp1.remote_index
    net.b.receive_datagram(held[0], net.now, A_ADDR)
    assert net.b_a.pop_packets() == [a_to_b(b"old1")]
    net.now = 12.0
    net.a_b.initiate_handshake(net.now)  # third session: kp1 is gone on both sides
    net.pump()
    net.b.receive_datagram(held[1], net.now, A_ADDR)
    assert net.b_a.pop_packets() == []
    assert net.b.counters.unknown_index == 1


# -- timers (§6.5) ---------------------------------------------------------------------------


def test_passive_keepalive_after_data_received() -> None:
    net = Net()
    net.connect()
    net.run_until(9.9)
    assert len(net.sent("ba", MessageType.TRANSPORT)) == 0
    net.run_until(10.1)
    (ka,) = net.sent("ba", MessageType.TRANSPORT)
    assert len(ka) == 32
    assert net.log[-1][0] == 10.0


def test_no_keepalive_when_reply_data_was_sent() -> None:
    net = Net()
    net.connect()
    net.now = 3.0
    net.b.send_packet(b_to_a(), 3.0)
    net.run_until(30.0)
    kas = [d for d in net.sent("ba", MessageType.TRANSPORT) if len(d) == 32]
    assert kas == []
    # ...but A got data, so A owes B a keepalive at 13 s.
    a_kas = [t for t, d, x in net.log if d == "ab" and x[0] == 4 and len(x) == 32]
    assert a_kas == [13.0]


def test_new_handshake_when_data_gets_no_reply() -> None:
    net = Net()
    net.connect()
    net.run_until(11.0)  # B's keepalive at 10 s clears A's timer
    assert len(net.sent("ab", MessageType.INITIATION)) == 1
    net.drop = lambda d, x: d == "ba"
    net.a.send_packet(a_to_b(), 20.0)
    net.now = 20.0
    net.run_until(34.9)
    assert len(net.sent("ab", MessageType.INITIATION)) == 1
    net.run_until(35.4)
    times = [t for t, d, x in net.log if d == "ab" and x[0] == 1]
    assert len(times) == 2 and 35.0 <= times[1] <= 35.0 + 0.333 + 1e-9


def test_forget_sessions_when_the_peer_restarted() -> None:
    """B's daemon restarts 1 s after the handshake (it said goodbye; its keys are gone). A
    forgets its sessions: its next packet starts a handshake at once, inside the 5 s that
    would otherwise rate-limit it, and arrives. Without forgetting, the packet goes on the
    old keypair, which B no longer has."""
    for forget in (False, True):
        net = Net()
        net.connect()
        net.run_until(1.0)
        net.b_a.zero_key_material()  # what a new process of B's starts with
        if forget:
            net.a_b.forget_sessions()
            assert net.a_b.next_wakeup() is None and not net.a_b.has_session(net.now)
        net.a.send_packet(a_to_b(), 1.5)
        net.now = 1.5
        net.pump()
        assert net.packets_b == ([a_to_b()] if forget else [])
        assert len(net.sent("ab", MessageType.INITIATION)) == (2 if forget else 1)


def test_retransmit_with_jitter_then_give_up_then_zero() -> None:
    net = Net()
    net.drop = lambda d, x: True
    net.a.send_packet(a_to_b(), 0.0)
    net.run_until(200.0)
    times = [t for t, d, x in net.log if d == "ab" and x[0] == 1]
    assert len(times) == 20  # the first plus one retry per REKEY_TIMEOUT, as WireGuard does
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(5.0 <= g <= 5.333 + 1e-9 for g in gaps)
    # Each retry is a fresh initiation: new ephemeral, new sender index.
    inits = [decode(x) for _, d, x in net.log if x[0] == 1]
    assert len({m.ephemeral for m in inits if isinstance(m, Initiation)}) == 20
    assert [type(e) for e in net.events_a] == [HandshakeFailed]
    assert not net.a_b.staged
    give_up = net.events_a[0]
    assert isinstance(give_up, HandshakeFailed)
    net.run_until(give_up.now + 540.0 + 1)
    assert isinstance(net.events_a[-1], SessionExpired)


def test_session_expires_after_three_reject_times() -> None:
    net = Net()
    net.connect()
    net.run_until(539.0)
    assert net.a_b.current is not None
    net.run_until(541.0)
    assert current(net.a_b) is None and current(net.b_a) is None
    assert any(isinstance(e, SessionExpired) for e in net.events_a)
    assert any(isinstance(e, SessionExpired) for e in net.events_b)
    assert net.a.next_wakeup() is None and net.b.next_wakeup() is None
    # A new packet starts over cleanly.
    net.a.send_packet(a_to_b(b"again"), net.now)
    net.pump()
    assert net.packets_b[-1] == a_to_b(b"again")


def test_persistent_keepalive() -> None:
    net = Net(keepalive_a=25.0)
    net.connect()
    net.run_until(100.0)
    times = [t for t, d, x in net.log if d == "ab" and x[0] == 4 and len(x) == 32]
    # B's passive keepalive at 10 s is authenticated traffic too: the interval restarts.
    assert times[:3] == [35.0, 60.0, 85.0]


def test_timer_config_constants() -> None:
    t = TimerConfig()
    assert t.rekey_after_messages == 2**60
    assert t.reject_after_messages == 2**64 - 2**13 - 1
    assert (t.rekey_after_time, t.reject_after_time, t.rekey_attempt_time) == (120, 180, 90)
    assert (t.rekey_timeout, t.keepalive_timeout, t.rekey_timeout_jitter_max) == (5, 10, 0.333)
    assert t.max_handshake_attempts == 18 and t.zero_keys_after == 540


# -- attacks: everything dropped and counted ------------------------------------------------


def test_replayed_transport_dropped() -> None:
    net = Net()
    net.connect()
    data = net.sent("ab", MessageType.TRANSPORT)[0]
    net.b.receive_datagram(data, 1.0, A_ADDR)
    assert net.b_a.pop_packets() == []
    assert net.b.counters.replayed_transport == 1


def test_tampered_transport_dropped() -> None:
    net = Net()
    net.connect()
    net.a.send_packet(a_to_b(), 1.0)
    (data,) = net.a_b.pop_datagrams()
    bad = bytearray(data)
    bad[20] ^= 0x80
    net.b.receive_datagram(bytes(bad), 1.0, A_ADDR)
    assert net.b.counters.transport_auth_failed == 1
    net.b.receive_datagram(data, 1.0, A_ADDR)  # the real one still gets through
    assert net.b_a.pop_packets() == [a_to_b()]


def test_replayed_and_older_initiations_rejected() -> None:
    net = Net()
    net.a_b.initiate_handshake(0.0)
    (init1,) = net.a_b.pop_datagrams()
    net.now = 6.0
    net.a_b.initiate_handshake(6.0)
    (init2,) = net.a_b.pop_datagrams()
    assert net.b_a.receive_datagram(init2, 6.0, A_ADDR)
    net.b_a.pop_datagrams()
    assert not net.b_a.receive_datagram(init2, 7.0, A_ADDR)
    assert not net.b_a.receive_datagram(init1, 7.0, A_ADDR)
    assert net.b.counters.replayed_initiation == 2
    assert net.b_a.pop_datagrams() == []


def test_initiation_flood_rejected() -> None:
    net = Net()
    net.a_b.initiate_handshake(0.0)
    net.now = 0.05
    net.a_b._send_initiation(0.5, retry=True)  # a newer timestamp, but within 20 ms at B
    first, second = net.a_b.pop_datagrams()
    assert net.b.receive_datagram(first, 10.0, A_ADDR) is net.b_a
    net.now = 0.5
    assert net.b.receive_datagram(second, 10.01, A_ADDR) is None
    assert net.b.counters.initiation_flood == 1


def test_forged_mac1_dropped_before_dh() -> None:
    net = Net()
    net.a_b.initiate_handshake(0.0)
    (init,) = net.a_b.pop_datagrams()
    for pos in (8, 120, 130):  # body, mac1 itself
        bad = bytearray(init)
        bad[pos] ^= 1
        assert net.b.receive_datagram(bytes(bad), 0.0, A_ADDR) is None
    assert net.b.counters.bad_mac1 == 3
    assert net.b.counters.handshake_auth_failed == 0


def test_truncated_and_oversized_dropped() -> None:
    net = Net()
    net.connect()
    init = net.sent("ab", MessageType.INITIATION)[0]
    data = net.sent("ab", MessageType.TRANSPORT)[0]
    for bad in (init[:-1], init + b"\0", data[:31], data + bytes(70_000), b"", b"\x01", b"\x09abc"):
        assert net.b.receive_datagram(bad, 1.0, A_ADDR) is None
    assert net.b.counters.malformed == 7


def test_unknown_receiver_index_dropped() -> None:
    net = Net()
    net.connect()
    net.b.receive_datagram(TransportHeader(0xDEADBEEF, 7).encode() + bytes(16), 1.0, A_ADDR)
    resp = bytearray(Response(1, 0xDEADBEEF, bytes(32), bytes(16)).encode())
    net.a_b.cookie.add_macs(resp, 1.0)  # valid mac1 for B, unknown index
    net.b.receive_datagram(bytes(resp), 1.0, A_ADDR)
    net.b.receive_datagram(CookieReply(0xDEADBEEF, bytes(24), bytes(32)).encode(), 1.0, A_ADDR)
    assert net.b.counters.unknown_index == 3


def test_response_out_of_the_blue_dropped() -> None:
    net = Net()
    net.connect()
    # B answers a replay of nothing: a response to A's keypair index is not expected.
    kp = net.a_b.current
    assert kp is not None
    resp = bytearray(Response(1, kp.local_index, bytes(32), bytes(16)).encode())
    net.b_a.cookie.add_macs(resp, 1.0)
    net.a.receive_datagram(bytes(resp), 1.0, B_ADDR)
    assert net.a.counters.unknown_index == 1


def test_forged_response_does_not_break_handshake() -> None:
    net = Net()
    net.a_b.initiate_handshake(0.0)
    (init,) = net.a_b.pop_datagrams()
    sender = decode(init).sender  # type: ignore[union-attr]
    forged = bytearray(Response(9, sender, bytes(range(32)), bytes(16)).encode())
    net.b_a.cookie.add_macs(forged, 0.0)  # mac1 needs only A's public key
    assert net.a.receive_datagram(bytes(forged), 0.0, B_ADDR) is None
    assert net.a.counters.handshake_auth_failed == 1
    net.b.receive_datagram(init, 0.0, A_ADDR)
    net.pump()
    assert net.a_b.current is not None


def test_unknown_peer_initiation_dropped() -> None:
    net = Net()
    stranger = Device(clamp(net.r.randbytes(32)), rng=net.r.randbytes, wall_clock=net.wall)
    s_b = stranger.add_peer(net.b.public_key, allowed_ips=["0.0.0.0/0"])
    s_b.initiate_handshake(0.0)
    (init,) = s_b.pop_datagrams()
    assert net.b.receive_datagram(init, 0.0, ("203.0.113.9", 1)) is None
    assert net.b.counters.unknown_peer == 1
    assert net.b_a.pop_datagrams() == []


def test_source_address_check() -> None:
    net = Net()
    net.connect()
    spoofed = ip4("10.0.0.99", "10.0.0.1", b"spoof")
    net.b_a.send_packet(spoofed, 1.0)  # B's peer object sends whatever it is given
    net.b_a.send_packet(b"\x99not ip", 1.0)
    net.b_a.send_packet(ip4("10.0.0.2", "10.0.0.1", b"ok"), 1.0)
    net.now = 1.0
    net.pump()
    assert net.packets_a == [ip4("10.0.0.2", "10.0.0.1", b"ok")]
    assert net.a.counters.source_not_allowed == 1
    assert net.a.counters.bad_inner_packet == 1


def test_no_route() -> None:
    net = Net()
    assert net.a.send_packet(ip4("10.0.0.1", "192.0.2.55"), 0.0) is None
    assert net.a.send_packet(b"", 0.0) is None
    assert net.a.counters.no_route == 2
    assert net.a.route(a_to_b()) is net.a_b


def test_staged_packets_bounded() -> None:
    net = Net(timers=replace(TimerConfig(), max_staged_packets=4))
    net.drop = lambda d, x: True
    for i in range(10):
        net.a.send_packet(a_to_b(bytes([i])), 0.0)
    assert [p[-1] for p in net.a_b.staged] == [6, 7, 8, 9]
    assert net.a.counters.staged_dropped == 6


# -- cookies under load (§5.3, §5.4.7) -------------------------------------------------------


def test_cookie_reply_under_load_then_mac2_accepted() -> None:
    net = Net()
    net.b.under_load = True
    net.a.send_packet(a_to_b(), 0.0)
    net.pump()
    assert net.b.counters.cookie_replies_sent == 1
    assert net.a.counters.cookie_replies_received == 1
    assert net.b_a.next is None and net.packets_b == []
    net.run_until(6.0)  # the retransmission carries mac2 and is accepted
    assert net.packets_b == [a_to_b()]
    inits = [decode(x) for x in net.sent("ab", MessageType.INITIATION)]
    assert [i.mac2 != bytes(16) for i in inits if isinstance(i, Initiation)] == [False, True]
    assert net.b.counters.cookie_replies_sent == 1


def test_cookie_from_other_source_does_not_help() -> None:
    net = Net()
    net.b.under_load = True
    net.a_b.initiate_handshake(0.0)
    net.pump()
    net.now = 6.0
    net.a_b._send_initiation(6.0, retry=True)
    (init,) = net.a_b.pop_datagrams()
    assert net.b.receive_datagram(init, 6.0, ("203.0.113.50", 4444)) is None
    assert net.b.counters.cookie_replies_sent == 2


def test_cookie_secret_rotation() -> None:
    net = Net()
    net.b.under_load = True
    net.a.send_packet(a_to_b(), 0.0)
    net.run_until(6.0)
    assert net.a.counters.handshakes_completed == 1
    net.now = 100.0
    net.a_b.initiate_handshake(100.0)  # cookie is 100 s old, B's secret too: still fine
    net.pump()
    assert net.a.counters.handshakes_completed == 2
    assert net.b.counters.cookie_replies_sent == 1
    net.now = 130.0
    net.a_b.initiate_handshake(130.0)  # both expired: a fresh cookie is needed
    net.pump()
    assert net.b.counters.cookie_replies_sent == 2
    net.run_until(136.0)
    assert net.a.counters.handshakes_completed == 3


def test_response_also_checked_under_load() -> None:
    net = Net()
    net.a.under_load = True
    net.a.send_packet(a_to_b(), 0.0)
    net.pump()
    assert net.a.counters.cookie_replies_sent == 1  # to B's response
    assert net.b.counters.cookie_replies_received == 1
    assert net.a_b.current is None


def test_remove_peer_frees_everything() -> None:
    net = Net()
    net.connect()
    net.b.remove_peer(net.b_a)
    assert len(net.b.indices) == 0
    assert net.b.route(b_to_a()) is None
    assert net.b.peers == {}


@pytest.mark.parametrize("bad", [b"short", bytes(33)])
def test_bad_keys_refused(bad: bytes) -> None:
    with pytest.raises(ValueError):
        Device(bad, rng=random.Random(0).randbytes, wall_clock=lambda: 0.0)
    dev = Device(bytes(32), rng=random.Random(0).randbytes, wall_clock=lambda: 0.0)
    with pytest.raises(ValueError):
        Peer(dev.shared, bad)


# -- batch sending ---------------------------------------------------------------------------


def _packed(packets: list[bytes]) -> tuple[memoryview, list[int]]:
    return memoryview(bytearray(b"".join(packets))), [len(p) for p in packets]


def _send_both_ways(
    packets: list[bytes],
    *,
    mtu: int = 0,
    connected: bool = True,
    timers: TimerConfig | None = None,
    start: float = 1.0,
) -> tuple[Net, Net]:
    """The same packets sent by two identically seeded pairs: one ``send_packet`` call per
    packet, and one ``send_packets`` call for the run."""
    nets = []
    for batch in (False, True):
        net = Net(mtu=mtu, keepalive_a=25.0, timers=timers)
        if connected:
            net.connect()
            net.run_until(start)
        net.log.clear()
        if batch:
            view, lengths = _packed(packets)
            net.a_b.send_packets(view, lengths, len(packets), net.now)
        else:
            for p in packets:
                net.a.send_packet(p, net.now)
        net.pump()
        nets.append(net)
    return nets[0], nets[1]


def _assert_same(one: Net, many: Net) -> None:
    assert [d for _, _, d in many.log] == [d for _, _, d in one.log]
    assert many.packets_b == one.packets_b
    assert many.a_b.next_wakeup() == one.a_b.next_wakeup()
    assert many.a.counters.as_dict() == one.a.counters.as_dict()
    assert many.a_b.tx_bytes == one.a_b.tx_bytes
    assert len(many.a_b.staged) == len(one.a_b.staged)


@pytest.mark.parametrize("mtu", [0, 1416, 1420])
@pytest.mark.parametrize("connected", [True, False])
def test_send_packets_equals_send_packet_one_by_one(mtu: int, connected: bool) -> None:
    """The batch path puts the same datagrams on the wire as one call per packet (same seed,
    same keys, same counters), leaves the same timers, and the peer gets every packet."""
    sizes = [1416 - 28, 1416 - 28, 1000, 1, 1416 - 28 + 5, 64]
    packets = [a_to_b(bytes([i]) * n) for i, n in enumerate(sizes)]
    one, many = _send_both_ways(packets, mtu=mtu, connected=connected)
    _assert_same(one, many)
    assert many.packets_b == packets


def test_send_packets_near_the_message_limits() -> None:
    """A run that crosses REKEY_AFTER_MESSAGES and REJECT_AFTER_MESSAGES behaves exactly as
    packet-by-packet sending: a rekey is asked for, nothing goes out beyond the limit, the
    rest is staged."""
    timers = replace(TimerConfig(), reject_after_messages=8, rekey_after_messages=4)
    packets = [a_to_b(bytes([i]) * 100) for i in range(10)]
    one, many = _send_both_ways(packets, timers=timers)
    _assert_same(one, many)
    assert len(many.packets_b) == 7 and len(many.a_b.staged) == 3
    # A run that fits, after REKEY_TIMEOUT: one call per packet starts the rekey right after
    # the packet that crossed REKEY_AFTER_MESSAGES, the batch after the run (as wireguard-go
    # checks once per batch). The same messages either way.
    few = packets[:6]
    one, many = _send_both_ways(few, timers=timers, start=6.0)
    kinds = [(d[0], len(d)) for _, _, d in one.log]
    assert sorted(kinds) == sorted((d[0], len(d)) for _, _, d in many.log)
    assert (MessageType.INITIATION, 148) in kinds
    assert many.packets_b == one.packets_b == few


def test_jitter_draws_randomness_in_bulk() -> None:
    """Timer jitter (§6.1) is drawn on the data path: one rng call serves 64 draws, every
    draw is in [0, 1], and the draws are what the rng's bytes say."""
    given: list[bytes] = []
    r = random.Random(7)

    def rng(n: int) -> bytes:
        given.append(r.randbytes(n))
        return given[-1]

    dev = Device(clamp(bytes(range(32))), rng=rng, wall_clock=lambda: WALL)
    given.clear()
    draws = [dev.jitter() for _ in range(130)]
    assert [len(b) for b in given] == [256, 256, 256]
    assert all(0.0 <= d <= 1.0 for d in draws)
    assert draws[0] == int.from_bytes(given[0][:4], "little") / 0xFFFFFFFF
    assert draws[63] == int.from_bytes(given[0][252:256], "little") / 0xFFFFFFFF
    assert draws[64] == int.from_bytes(given[1][:4], "little") / 0xFFFFFFFF


# -- the path going quiet (p2ptun's fast failure detection) ---------------------------------


def test_path_quiet_when_data_goes_unanswered() -> None:
    net = Net()
    net.connect()
    net.run_until(12.0)  # the handshake's data was answered by B's keepalive
    net.a_b.path_silence = 1.0
    net.drop = lambda d, x: d == "ba"
    net.now = 20.0
    net.a.send_packet(a_to_b(), 20.0)
    net.run_until(20.5)
    net.a.send_packet(a_to_b(), 20.5)  # more data does not move the deadline
    net.run_until(20.99)
    assert not [e for e in net.events_a if isinstance(e, PathQuiet)]
    net.run_until(21.01)
    quiet = [e for e in net.events_a if isinstance(e, PathQuiet)]
    assert quiet == [PathQuiet(21.0, unanswered=True)]
    net.run_until(40.0)  # once per quiet spell, not again and again
    assert len([e for e in net.events_a if isinstance(e, PathQuiet)]) == 1


def test_path_quiet_when_arriving_data_stops_and_never_while_it_flows() -> None:
    net = Net()
    net.connect()
    net.b_a.path_silence = 1.0
    for i in range(1, 41):  # A sends every 50 ms for 2 s: B hears a steady stream
        net.now = 12.0 + 0.05 * i
        net.a.send_packet(a_to_b(), net.now)
        net.run_until(net.now)
    assert not [e for e in net.events_b if isinstance(e, PathQuiet)]
    net.run_until(15.0)
    quiet = [e for e in net.events_b if isinstance(e, PathQuiet)]
    assert quiet == [PathQuiet(pytest.approx(15.0), unanswered=False)]


def test_no_path_quiet_without_path_silence_or_when_answered() -> None:
    net = Net()
    net.connect()
    net.now = 12.0
    net.a.send_packet(a_to_b(), 12.0)  # path_silence is None: WireGuard alone, no report
    net.run_until(20.0)
    assert not [e for e in net.events_a + net.events_b if isinstance(e, PathQuiet)]
    net.a_b.path_silence = 1.0
    net.now = 30.0
    net.a.send_packet(a_to_b(), 30.0)
    net.b.send_packet(b_to_a(), 30.2)  # an authenticated answer clears it
    net.run_until(30.9)
    assert not [e for e in net.events_a if isinstance(e, PathQuiet) and e.unanswered]
