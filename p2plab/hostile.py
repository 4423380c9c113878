"""Hostile clients for the NAT lab and the soak (development only): each attack runs for a
bounded time at a bounded rate, then prints one JSON line of what it sent and what came back.

Usage (inside a lab namespace, e.g. ``ip netns exec P-server python -m p2plab.hostile ...``)::

    python -m p2plab.hostile wg-flood HOST:PORT VICTIM_PUBKEY [--rate R] [--seconds S]
    python -m p2plab.hostile stun-stuffed HOST:PORT [--rate R] [--seconds S]
    python -m p2plab.hostile idle-tcp HOST:PORT [--connections N] [--seconds S]
    python -m p2plab.hostile replay-msg1 HOST:PORT RENDEZVOUS_PUBKEY [--rate R] [--seconds S]
    python -m p2plab.hostile allocate HOST:PORT [--rate R] [--seconds S]
    python -m p2plab.hostile junk HOST:PORT [--rate R] [--seconds S]

- ``wg-flood``: WireGuard handshake initiations with a valid MAC1 for the victim's public key
  (what anyone who knows that key can send), from one socket; counts the cookie replies.
- ``stun-stuffed``: STUN Binding requests and Send indications of 16,000 unknown
  comprehension-required attributes (64 KB each) over UDP, and Bindings over TCP.
- ``idle-tcp``: up to N idle TCP connections, reopened as the server closes them.
- ``replay-msg1``: one Noise IK message 1 of the signaling channel, replayed on a new TCP
  connection each time; counts the answers by frame type (2: handshake, 4: retry).
- ``allocate``: unauthenticated TURN Allocate requests; counts the bytes answered (reflection).
- ``junk``: random datagrams of random sizes.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import struct
import sys
import time
from collections.abc import Callable

from p2ptun.addr import parse_host_port
from p2ptun.keys import decode_key, generate_private_key
from p2ptun.stun import Message, Method
from p2ptun.stun.constants import MAGIC_COOKIE
from p2ptun.stun.message import message_type


def _paced(rate: float, seconds: float, step: Callable[[int], None]) -> int:
    """Call ``step(i)`` about ``rate`` times a second for ``seconds``; how many calls."""
    start = time.monotonic()
    end = start + seconds
    i = 0
    while True:
        now = time.monotonic()
        if now >= end:
            return i
        due = int((now - start) * rate) + 1
        while i < due and time.monotonic() < end:
            step(i)
            i += 1
        time.sleep(min(0.002, max(0.0, end - time.monotonic())))


def _drain(sock: socket.socket, handle: Callable[[bytes], None]) -> None:
    while True:
        try:
            data = sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return
        handle(data)


def wg_flood(target: tuple[str, int], victim: bytes, rate: float, seconds: float) -> dict[str, int]:
    from p2ptun.wireguard import Device

    attacker = Device(generate_private_key(), rng=os.urandom, wall_clock=time.time)
    peer = attacker.add_peer(victim, allowed_ips=["10.255.255.1/32"])
    peer.initiate_handshake(0.0)
    initiation = bytes(peer.pop_datagrams()[-1])
    sock = socket.socket(socket.AF_INET6 if ":" in target[0] else socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    counts = {"sent": 0, "cookie_replies": 0, "other_replies": 0}

    def seen(data: bytes) -> None:
        key = "cookie_replies" if data[:1] == b"\x03" else "other_replies"
        counts[key] += 1

    def step(_i: int) -> None:
        try:
            sock.sendto(initiation, target)
            counts["sent"] += 1
        except OSError:
            pass
        _drain(sock, seen)

    _paced(rate, seconds, step)
    time.sleep(0.3)
    _drain(sock, seen)
    sock.close()
    return counts


def _stuffed(method: int, klass: int) -> bytes:
    body = b"".join(struct.pack("!HH", 0x0100 + i, 0) for i in range(16_000))
    head = struct.pack(
        "!HHI12s", message_type(method, klass), len(body), MAGIC_COOKIE, os.urandom(12)
    )
    return head + body


def stun_stuffed(target: tuple[str, int], rate: float, seconds: float) -> dict[str, int]:
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.setblocking(False)
    binding, send = _stuffed(Method.BINDING, 0), _stuffed(Method.SEND, 1)
    counts = {"udp": 0, "tcp": 0, "answers": 0}
    tcp: socket.socket | None = None

    def step(i: int) -> None:
        nonlocal tcp
        try:
            if i % 3 == 2:
                if tcp is None:
                    tcp = socket.create_connection(target, timeout=1)
                    tcp.setblocking(False)
                tcp.send(binding)
                counts["tcp"] += 1
            else:
                udp.sendto(binding if i % 3 == 0 else send, target)
                counts["udp"] += 1
        except OSError:
            if tcp is not None:
                tcp.close()
            tcp = None
        _drain(udp, lambda _d: counts.__setitem__("answers", counts["answers"] + 1))

    _paced(rate, seconds, step)
    udp.close()
    if tcp is not None:
        tcp.close()
    return counts


def idle_tcp(target: tuple[str, int], connections: int, seconds: float) -> dict[str, int]:
    held: list[socket.socket | None] = [None] * connections
    counts = {"connects": 0, "failures": 0}
    end = time.monotonic() + seconds
    try:
        while time.monotonic() < end:
            for i in range(connections):
                sock = held[i]
                if sock is not None:
                    try:
                        alive = sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) != b""
                    except BlockingIOError:
                        alive = True
                    except OSError:
                        alive = False
                    if alive:
                        continue
                    sock.close()
                    held[i] = None
                if time.monotonic() >= end:
                    break
                try:
                    held[i] = socket.create_connection(target, timeout=1)
                    counts["connects"] += 1
                except OSError:
                    counts["failures"] += 1
            time.sleep(0.1)
    finally:
        for sock in held:
            if sock is not None:
                sock.close()
    return counts


def replay_msg1(
    target: tuple[str, int], rendezvous: bytes, rate: float, seconds: float
) -> dict[str, int]:
    from p2ptun.signal.channel import NoiseChannel

    frame = NoiseChannel.initiator(generate_private_key(), rendezvous, os.urandom).start()
    counts: dict[str, int] = {"connections": 0, "handshake": 0, "retry": 0, "other": 0}

    def step(_i: int) -> None:
        try:
            with socket.create_connection(target, timeout=1) as sock:
                sock.sendall(frame)
                head = sock.recv(4)
        except OSError:
            counts["other"] += 1
            return
        counts["connections"] += 1
        kind = head[1] if len(head) >= 2 else 0
        counts["handshake" if kind == 2 else "retry" if kind == 4 else "other"] += 1

    _paced(rate, seconds, step)
    return counts


def allocate(target: tuple[str, int], rate: float, seconds: float) -> dict[str, int]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    counts = {"sent_bytes": 0, "answered_bytes": 0}

    def step(_i: int) -> None:
        request = Message.request(Method.ALLOCATE, os.urandom(12)).encode()
        try:
            sock.sendto(request, target)
            counts["sent_bytes"] += len(request)
        except OSError:
            pass
        _drain(
            sock, lambda d: counts.__setitem__("answered_bytes", counts["answered_bytes"] + len(d))
        )

    _paced(rate, seconds, step)
    time.sleep(0.3)
    _drain(sock, lambda d: counts.__setitem__("answered_bytes", counts["answered_bytes"] + len(d)))
    sock.close()
    return counts


def junk(target: tuple[str, int], rate: float, seconds: float) -> dict[str, int]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    rng = random.Random(7)
    counts = {"sent": 0}

    def step(_i: int) -> None:
        try:
            sock.sendto(rng.randbytes(rng.randrange(1, 1400)), target)
            counts["sent"] += 1
        except OSError:
            pass
        _drain(sock, lambda _d: None)

    _paced(rate, seconds, step)
    sock.close()
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m p2plab.hostile", description=__doc__)
    sub = parser.add_subparsers(dest="attack", required=True)
    for name, extra in (
        ("wg-flood", ["victim"]),
        ("stun-stuffed", []),
        ("idle-tcp", []),
        ("replay-msg1", ["rendezvous"]),
        ("allocate", []),
        ("junk", []),
    ):
        p = sub.add_parser(name)
        p.add_argument("target", help="HOST:PORT")
        for arg in extra:
            p.add_argument(arg, help="a base64 public key")
        p.add_argument("--rate", type=float, default=100.0, help="per second (default 100)")
        p.add_argument("--seconds", type=float, default=5.0, help="how long (default 5)")
        p.add_argument("--connections", type=int, default=256, help="idle-tcp: how many")
    args = parser.parse_args(argv)
    if not 0 < args.seconds <= 3600 or not 0 < args.rate <= 100_000:
        parser.error("--seconds must be in (0, 3600] and --rate in (0, 100000]")
    try:
        target = parse_host_port(args.target)
    except ValueError as exc:
        parser.error(f"bad target {args.target!r}: {exc}")
    result: dict[str, int]
    if args.attack == "wg-flood":
        result = wg_flood(target, decode_key(args.victim), args.rate, args.seconds)
    elif args.attack == "stun-stuffed":
        result = stun_stuffed(target, args.rate, args.seconds)
    elif args.attack == "idle-tcp":
        result = idle_tcp(target, args.connections, args.seconds)
    elif args.attack == "replay-msg1":
        result = replay_msg1(target, decode_key(args.rendezvous), args.rate, args.seconds)
    elif args.attack == "allocate":
        result = allocate(target, args.rate, args.seconds)
    else:
        result = junk(target, args.rate, args.seconds)
    sys.stdout.write(json.dumps({"attack": args.attack, **result}) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
