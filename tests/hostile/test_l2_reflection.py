"""L2: reflection through unauthenticated requests.

A 20-byte Allocate without credentials is answered with a 401 carrying REALM, NONCE and
PASSWORD-ALGORITHMS (and used to carry SOFTWARE): 128 bytes, 6.4 times the request, sent to
whatever source address the request claimed, as often as asked. Unauthenticated answers over
UDP now come from a budget per source (10 a second, 20 at once) and carry no SOFTWARE, so a
flood of spoofed requests reflects at most the budget at its victim.
"""

from __future__ import annotations

import random
import socket
import time
from pathlib import Path

import pytest
from hostile_env import ATTACKER, rendezvous

from p2ptun.stun import Message, Method
from p2ptun.turn.server import FiveTuple, ToClient, Transport, TurnServer, TurnServerOptions

REQUESTS = 1000
#: Bytes reflected per byte of a flood of spoofed requests from one source, at most.
MAX_FLOOD_RATIO = 0.5


def allocate_request() -> bytes:
    return Message.request(Method.ALLOCATE, random.randbytes(12)).encode()


def test_core_reflects_little_at_one_victim() -> None:
    turn = TurnServer(
        TurnServerOptions(
            realm="hostile",
            relay_address="203.0.113.10",
            relay_ports=(50000, 50100),
            users={"alice": "pw"},
        ),
        b"s" * 32,
        rng=random.Random(2),
    )
    victim = FiveTuple(("198.51.100.7", 3478), ("203.0.113.10", 3478), Transport.UDP)
    sent = received = 0
    first = 0
    for i in range(REQUESTS):
        request = allocate_request()
        sent += len(request)
        outs = turn.handle_client(victim, request, 1.0 + i / REQUESTS)  # one second of flood
        size = sum(len(o.data) for o in outs if isinstance(o, ToClient))
        first = first or size
        received += size
    ratio = received / sent
    print(
        f"FIGURE L2 core: one 401 is {first} bytes for a {len(request)}-byte Allocate "
        f"({first / len(request):.1f}x); {REQUESTS} spoofed Allocates in 1 s reflect "
        f"{received} bytes for {sent} ({ratio:.2f}x)"
    )
    assert ratio < MAX_FLOOD_RATIO
    assert turn.counters.unauthenticated_rate_limited >= REQUESTS - 40
    # Over TCP the source is proven: no budget.
    stream = FiveTuple(("198.51.100.7", 4000), ("203.0.113.10", 3478), Transport.TCP)
    assert all(turn.handle_client(stream, allocate_request(), 3.0) for _ in range(50))


@pytest.mark.slow
def test_rendezvous_reflects_little(tmp_path: Path) -> None:
    with rendezvous(tmp_path) as rv:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((ATTACKER, 0))
        sock.setblocking(False)
        sent = received = 0
        start = time.monotonic()
        for _ in range(500):
            request = allocate_request()
            sock.sendto(request, rv.stun_addr)
            sent += len(request)
            time.sleep(0.001)
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            try:
                data, _ = sock.recvfrom(4096)
                received += len(data)
            except BlockingIOError:
                time.sleep(0.01)
        elapsed = time.monotonic() - start
        ratio = received / sent
        print(
            f"FIGURE L2 rendezvous: 500 spoofable Allocates over {elapsed:.2f} s reflected "
            f"{received} bytes for {sent} ({ratio:.2f}x)"
        )
        sock.close()
        assert ratio < MAX_FLOOD_RATIO
