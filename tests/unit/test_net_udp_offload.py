"""UDP GSO on send and GRO on receive (p2ptun.net.udp over loopback): datagram boundaries
survive both, with the offloads on and forced off (``P2PTUN_OFFLOAD=off``)."""

from __future__ import annotations

import errno
import socket

import pytest

from p2ptun.addr import Address
from p2ptun.net.dispatch import Dispatcher, PacketKind
from p2ptun.net.ports import UdpCounters
from p2ptun.net.udp import UdpEndpoint, send_datagrams


def wg_datagram(i: int, size: int) -> bytes:
    """A transport-shaped datagram (type 4) of ``size`` bytes, numbered ``i``."""
    return b"\x04\x00\x00\x00" + i.to_bytes(4, "big") + bytes([i & 0xFF]) * (size - 8)


@pytest.mark.parametrize("mode", ["auto", "off"])
def test_batch_boundaries_survive(monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    monkeypatch.setenv("P2PTUN_OFFLOAD", mode)
    got: list[bytes] = []

    def handler(data: memoryview, addr: Address) -> None:
        got.append(bytes(data))

    dispatcher = Dispatcher(wireguard=handler)
    with (
        UdpEndpoint.bind(socket.AF_INET, "127.0.0.1") as rx,
        UdpEndpoint.bind(socket.AF_INET, "127.0.0.1") as tx,
    ):
        assert rx.gro == tx.gso == (mode == "auto")
        # Runs of equal sizes with shorter tails, a lone bigger one, then many small ones.
        sizes = [1200] * 30 + [700] + [1200] * 3 + [1300] + [64] * 100 + [40]
        sent = [wg_datagram(i, n) for i, n in enumerate(sizes)]
        assert tx.send_batch(sent, rx.local_address) == len(sent)
        for _ in range(100):
            if len(got) >= len(sent):
                break
            rx.drain(dispatcher)
        assert got == sent
        assert tx.counters.tx_packets == len(sent)
        assert dispatcher.counters.rx_wireguard == len(sent)
        if mode == "auto":
            assert tx.counters.tx_gso_sends >= 3
            assert rx.counters.rx_reads < len(sent)
        else:
            assert tx.counters.tx_gso_sends == 0
            assert rx.counters.rx_reads == len(sent)


def test_gso_refused_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """A GSO run the kernel refuses (segments above the route MTU) goes one by one."""
    got: list[int] = []

    def handler(data: memoryview, addr: Address) -> None:
        got.append(len(data))

    dispatcher = Dispatcher(wireguard=handler)
    with (
        UdpEndpoint.bind(socket.AF_INET, "127.0.0.1") as rx,
        UdpEndpoint.bind(socket.AF_INET, "127.0.0.1") as tx,
    ):
        if not tx.gso:
            pytest.skip("no UDP GSO on this kernel")
        # Loopback's MTU is 65536: 3 x 30000 fits a segment each but not one GSO send
        # below 64 KiB, so the runs are split; 2 x 40000 is over the per-send limit.
        sent = [wg_datagram(i, 40000) for i in range(2)]
        assert tx.send_batch(sent, rx.local_address) == 2
        for _ in range(50):
            if len(got) >= 2:
                break
            rx.drain(dispatcher)
        assert got == [40000, 40000]


def test_classify_each_gro_segment() -> None:
    """Each datagram of a GRO read is classified on its own (WireGuard vs. other)."""
    kinds: list[PacketKind] = []
    dispatcher = Dispatcher(wireguard=lambda d, a: kinds.append(PacketKind.WIREGUARD))
    with (
        UdpEndpoint.bind(socket.AF_INET, "127.0.0.1") as rx,
        UdpEndpoint.bind(socket.AF_INET, "127.0.0.1") as tx,
    ):
        junk = b"\xff" * 500
        tx.send_batch([wg_datagram(1, 500), junk, wg_datagram(2, 500)], rx.local_address)
        counters = dispatcher.counters
        for _ in range(50):
            if counters.rx_wireguard + counters.rx_other >= 3:
                break
            rx.drain(dispatcher)
        assert kinds == [PacketKind.WIREGUARD] * 2
        assert counters.rx_other == 1


class _RefusesGso:
    """A socket stand-in whose kernel refuses every GSO send (as for a datagram above the
    route's MTU): the only way to reach that branch on loopback."""

    def __init__(self) -> None:
        self.sends: list[tuple[bytes, bool]] = []

    def sendmsg(self, parts: list[bytes], cmsgs: object, flags: int, addr: Address) -> int:
        if cmsgs:
            raise OSError(errno.EINVAL, "Invalid argument")
        data = b"".join(parts)
        self.sends.append((data, bool(cmsgs)))
        return len(data)


@pytest.mark.parametrize("prefixed", [False, True])
def test_gso_refused_run_goes_datagram_by_datagram(prefixed: bool) -> None:
    payloads = [bytes([i]) * 100 for i in range(5)] + [b"short"]
    prefixes = [b"\x40\x01" + len(p).to_bytes(2, "big") for p in payloads] if prefixed else None
    sock = _RefusesGso()
    counters = UdpCounters()
    sent = send_datagrams(
        sock,  # type: ignore[arg-type]
        payloads,
        ("127.0.0.1", 9),
        counters,
        gso=True,
        prefixes=prefixes,
    )
    expected = [h + p for h, p in zip(prefixes or [b""] * 6, payloads, strict=True)]
    assert sent == 6 and [d for d, _ in sock.sends] == expected
    assert counters.tx_packets == 6 and counters.tx_gso_sends == 0
    assert counters.tx_bytes == sum(map(len, expected))
