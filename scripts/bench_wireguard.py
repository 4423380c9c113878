#!/usr/bin/env python3
"""Micro-benchmark of the WireGuard data path: µs per packet to seal and to open.

Two levels are timed for plaintext IP packets of 64, 512 and 1400 bytes:

* ``seal``/``open``: the hot-path functions alone (:func:`p2ptun.wireguard.transport.seal`,
  :func:`~p2ptun.wireguard.transport.open_into` plus the replay window);
* ``send``/``receive``: the whole sans-I/O path (``Device.send_packet`` with routing and
  timers, ``Device.receive_datagram`` with demultiplexing, replay check, padding removal and
  the allowed-IPs source check).

Usage: ``scripts/bench_wireguard.py [--count N] [--rounds R]``.
Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import struct
import time

from p2ptun.keys import generate_private_key
from p2ptun.wireguard import Device
from p2ptun.wireguard.messages import TRANSPORT_HEADER
from p2ptun.wireguard.transport import BUFFER_SIZE, Keypair, open_into, seal

SIZES = (64, 512, 1400)


def ip_packet(size: int) -> bytes:
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x45, 0, size, 0, 0, 64, 17, 0,
        ipaddress.IPv4Address("10.0.0.1").packed,
        ipaddress.IPv4Address("10.0.0.2").packed,
    )  # fmt: skip
    return header + bytes(size - len(header))


BATCH = 256
"""Packets per round: like the I/O layer, which wakes once and drains a batch."""


def bench_functions(size: int, count: int) -> tuple[float, float]:
    key = os.urandom(32)
    kp = Keypair(key, key, local_index=1, remote_index=1, created=0.0, is_initiator=True)
    packet = ip_packet(size)
    out, scratch, plain = bytearray(BUFFER_SIZE), bytearray(BUFFER_SIZE), bytearray(BUFFER_SIZE)
    replay = kp.replay
    seal_time = open_time = 0.0
    counter = 0
    for _ in range(count // BATCH):
        sealed = []
        t0 = time.perf_counter()
        for _ in range(BATCH):
            n = seal(kp.send_aead, kp.send_nonce, 1, counter, packet, out, scratch)
            sealed.append(bytes(memoryview(out)[:n]))
            counter += 1
        t1 = time.perf_counter()
        for message in sealed:
            _, _, c = TRANSPORT_HEADER.unpack_from(message)
            if replay.check(c):
                open_into(kp.recv_aead, kp.recv_nonce, c, message, plain)
                replay.accept(c)
        t2 = time.perf_counter()
        seal_time += t1 - t0
        open_time += t2 - t1
    done = (count // BATCH) * BATCH
    return seal_time / done * 1e6, open_time / done * 1e6


def bench_devices(size: int, count: int) -> tuple[float, float]:
    a = Device(generate_private_key(), rng=os.urandom, wall_clock=time.time)
    b = Device(generate_private_key(), rng=os.urandom, wall_clock=time.time)
    a_b = a.add_peer(b.public_key, allowed_ips=["10.0.0.2/32"])
    b_a = b.add_peer(a.public_key, allowed_ips=["10.0.0.1/32"])
    a_b.initiate_handshake(0.0)
    for d in a_b.pop_datagrams():
        b.receive_datagram(d, 0.0)
    for d in b_a.pop_datagrams():
        a.receive_datagram(d, 0.0)
    for d in a_b.pop_datagrams():
        b.receive_datagram(d, 0.0)
    packet = ip_packet(size)
    send_time = recv_time = 0.0
    delivered = 0
    now = 1.0
    for _ in range(count // BATCH):
        t0 = time.perf_counter()
        for _ in range(BATCH):
            a.send_packet(packet, now)
        datagrams = a_b.pop_datagrams()
        t1 = time.perf_counter()
        for d in datagrams:
            b.receive_datagram(d, now)
        packets = b_a.pop_packets()
        t2 = time.perf_counter()
        assert packets[0] == packet, "benchmark path broken"
        delivered += len(packets)
        send_time += t1 - t0
        recv_time += t2 - t1
    assert delivered == (count // BATCH) * BATCH
    return send_time / delivered * 1e6, recv_time / delivered * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=10_240, help="packets per round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds; the best is shown")
    args = parser.parse_args()
    print(f"{'bytes':>6} {'seal µs':>9} {'open µs':>9} {'send µs':>9} {'receive µs':>11}")
    bench_functions(64, BATCH * 8)  # warm up
    for size in SIZES:
        # Best of several rounds: the minimum is the least disturbed by other load.
        fn = [bench_functions(size, args.count) for _ in range(args.rounds)]
        dev = [bench_devices(size, args.count) for _ in range(args.rounds)]
        seal_us, open_us = min(r[0] for r in fn), min(r[1] for r in fn)
        send_us, recv_us = min(r[0] for r in dev), min(r[1] for r in dev)
        print(f"{size:>6} {seal_us:>9.2f} {open_us:>9.2f} {send_us:>9.2f} {recv_us:>11.2f}")


if __name__ == "__main__":
    main()
