"""M1: replayed or forged Noise message 1 costs the rendezvous no Diffie-Hellman under load.

A replayed 96-byte message 1 made the rendezvous do five X25519 operations (≈ 0.6 ms) per
connection while the attacker did none; a few thousand connections a second saturated it. Now
a rendezvous under load answers a bare message 1 with a retry token, and only a proof made
with a known node's static key (checked with a MAC) leads to the handshake.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import pytest
from hostile_env import LEGIT, register, rendezvous

from p2ptun.keys import generate_private_key, public_key
from p2ptun.rendezvous.store import MemoryStore
from p2ptun.signal.channel import NoiseChannel
from p2ptun.signal.frames import HEADER, FrameType
from p2ptun.signal.hub import ServerLimits, SignalingServerCore

RV = generate_private_key()
NODE = generate_private_key()
CONNECTIONS = 300


def captured_message_1() -> bytes:
    """A legitimate node's HANDSHAKE_INIT frame, as an on-path attacker recorded it."""
    return NoiseChannel.initiator(NODE, public_key(RV), os.urandom).start()


def hub(**limits: object) -> SignalingServerCore:
    from p2ptun.config import NodeEntry

    store = MemoryStore(False, (NodeEntry("alice", public_key(NODE)),))
    return SignalingServerCore(
        RV,
        store,
        rng=os.urandom,
        wall_clock=time.time,
        limits=ServerLimits(**limits),  # type: ignore[arg-type]
    )


def test_replayed_message_1_costs_no_diffie_hellman_under_load() -> None:
    core = hub()
    frame = captured_message_1()
    answers: dict[int, int] = {}
    start = time.process_time()
    for i in range(CONNECTIONS):
        assert core.connection_made(i, 1.0 + i / 1000, f"198.51.100.{i % 250}:{4000 + i}")
        core.data_received(i, frame, 1.0 + i / 1000)
        kind = core.data_to_send(i)[1]
        answers[kind] = answers.get(kind, 0) + 1
        core.connection_lost(i, 1.0 + i / 1000)
    cpu = (time.process_time() - start) / CONNECTIONS
    handshakes = getattr(core.counters, "handshakes", CONNECTIONS)
    print(
        f"FIGURE M1 core: {CONNECTIONS} replays of one message 1 in 0.3 s: "
        f"{handshakes} Diffie-Hellman handshakes, answers {answers}, "
        f"{cpu * 1e3:.3f} ms CPU per connection"
    )
    assert handshakes <= ServerLimits().handshake_load
    assert answers.get(int(FrameType.HANDSHAKE_RETRY), 0) >= CONNECTIONS - handshakes


def test_forged_proofs_cost_no_diffie_hellman() -> None:
    core = hub(handshake_load=0)  # always under load
    stranger = generate_private_key()
    for i, claimed in enumerate([public_key(stranger)] * 50 + [public_key(NODE)] * 50):
        core.connection_made(i, 1.0, f"203.0.113.{i % 200}:5000")
        core.data_received(i, captured_message_1(), 1.0)
        token = core.data_to_send(i)[4:]
        assert len(token) == 16
        payload = claimed + bytes(16) + captured_message_1()[4:]
        core.data_received(
            i, HEADER.pack(1, FrameType.HANDSHAKE_INIT_PROOF, len(payload)) + payload, 1.0
        )
        assert core.should_close(i)
        core.connection_lost(i, 1.0)
    print(
        f"FIGURE M1 forged proofs: 100 refused={core.counters.proofs_refused}, "
        f"handshakes={core.counters.handshakes}, "
        f"proof keys computed={core.counters.proof_keys_computed}"
    )
    assert core.counters.handshakes == 0
    assert core.counters.proofs_refused == 100
    assert core.counters.proof_keys_computed == 1  # once for the known key, then cached


@pytest.mark.slow
def test_rendezvous_under_replay_flood(tmp_path: Path) -> None:
    """Many sources (127.0.0.10-209) replay a captured message 1 as fast as they can for
    3 s; the rendezvous asks for proofs, its CPU per connection stays small, and a node
    registers within 1 s meanwhile."""
    node = generate_private_key()
    with rendezvous(tmp_path, nodes={"alice": node}) as rv:
        frame = NoiseChannel.initiator(node, rv.public, os.urandom).start()
        stop = threading.Event()
        answers: dict[int, int] = {}
        count = [0]
        lock = threading.Lock()

        def attacker(first: int) -> None:
            i = 0
            while not stop.is_set():
                source = f"127.0.0.{10 + (first + i) % 200}"
                i += 7
                try:
                    with socket.create_connection(
                        rv.signal_addr, timeout=2, source_address=(source, 0)
                    ) as s:
                        s.sendall(frame)
                        head = s.recv(4)
                except OSError:
                    continue
                with lock:
                    count[0] += 1
                    if len(head) >= 2:
                        answers[head[1]] = answers.get(head[1], 0) + 1

        threads = [threading.Thread(target=attacker, args=(k,)) for k in range(4)]
        before = rv.stats()
        for t in threads:
            t.start()
        time.sleep(1.0)
        took = register(rv.signal_addr, rv.public, "alice", node, source=LEGIT, timeout=5)
        time.sleep(2.0)
        stop.set()
        for t in threads:
            t.join(10)
        after = rv.stats()
        per = (after.cpu - before.cpu) / max(1, count[0])
        print(
            f"FIGURE M1 rendezvous: {count[0]} replayed connections in 3 s, answers "
            f"{ {FrameType(k).name: v for k, v in answers.items() if k in (2, 4)} }, "
            f"{per * 1e3:.2f} ms server CPU per connection; alice registered in "
            f"{took * 1e3:.0f} ms"
        )
        assert took < 1.0
        assert answers.get(int(FrameType.HANDSHAKE_RETRY), 0) > answers.get(
            int(FrameType.HANDSHAKE_RESPONSE), 0
        )
