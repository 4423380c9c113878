"""The real signaling server and real clients over loopback TCP, with trio.

Covers: offer/answer and TURN credentials end to end; unknown nodes and wrong keys refused;
a malicious rendezvous (tampering, replaying, reordering, redirecting, relabelling, forging)
that cannot make a node accept a forged or misdirected signal; a rendezvous restart with
clients re-registering within the backoff bound and TOFU bindings surviving it; and 200
concurrent clients on one rendezvous (memory and routing latency printed, not asserted).
"""

from __future__ import annotations

import os
import random
import statistics
import tracemalloc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import pytest
import trio

from p2ptun.config import NodeEntry, RendezvousConfig, StunServerSettings, TurnServerSettings
from p2ptun.keys import generate_private_key, public_key
from p2ptun.net.signaling import SignalingClient
from p2ptun.net.system import SystemHost
from p2ptun.rendezvous.signaling import SignalingServer, open_store, serve_signaling
from p2ptun.signal.backoff import BackoffPolicy
from p2ptun.signal.client import (
    Disconnected,
    RegistrationRefused,
    SignalReceived,
)
from p2ptun.signal.hub import ServerLimits, SignalingServerCore
from p2ptun.signal.messages import Deliver, RefusalReason, Route
from p2ptun.signal.seal import Answer, Candidates, Offer, SignalBox

RV_KEY = generate_private_key()
FAST = BackoffPolicy(base=0.05, cap=0.5)

HOST = SystemHost()


def rv_config(
    tmp_path: Path,
    *,
    port: int = 0,
    open_registration: bool = True,
    nodes: tuple[NodeEntry, ...] = (),
    turn: TurnServerSettings | None = None,
) -> RendezvousConfig:
    return RendezvousConfig(
        path=str(tmp_path / "rendezvous.toml"),
        listen=("127.0.0.1", port),
        private_key=RV_KEY,
        database=str(tmp_path / "rendezvous.sqlite"),
        open_registration=open_registration,
        stun=StunServerSettings((("127.0.0.1", 3478),)) if turn else None,
        turn=turn,
        nodes=nodes,
    )


def client(
    server: SignalingServer,
    name: str,
    key: bytes,
    peers: dict[str, bytes],
    *,
    rendezvous_key: bytes | None = None,
    backoff: BackoffPolicy = FAST,
) -> SignalingClient:
    assert server.address is not None
    return SignalingClient(
        SystemHost(),
        name=name,
        private_key=key,
        rendezvous=server.address,
        rendezvous_key=rendezvous_key or public_key(RV_KEY),
        peers=peers,
        backoff=backoff,
    )


@asynccontextmanager
async def running(
    nursery: trio.Nursery, *clients: SignalingClient
) -> AsyncIterator[tuple[SignalingClient, ...]]:
    for c in clients:
        await nursery.start(c.run)
    try:
        yield clients
    finally:
        for c in clients:
            c.stop()


async def test_offer_answer_and_turn_over_loopback(tmp_path: Path) -> None:
    turn = TurnServerSettings(
        realm="lab",
        relay_address="127.0.0.1",
        relay_ports=(49152, 65535),
        auth_secret="a-long-shared-secret",
        credential_lifetime=600,
    )
    ka, kb = generate_private_key(), generate_private_key()
    # TURN credentials go to the nodes the rendezvous lists.
    nodes = (NodeEntry("alice", public_key(ka)), NodeEntry("bob", public_key(kb)))
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            server = await nursery.start(
                partial(serve_signaling, rv_config(tmp_path, turn=turn, nodes=nodes), host=HOST)
            )
            alice = client(server, "alice", ka, {"bob": public_key(kb)})
            bob = client(server, "bob", kb, {"alice": public_key(ka)})
            async with running(nursery, alice, bob):
                session = alice.offer("bob", "a=ice-ufrag:alic\n")  # bob may not be up yet
                got = await bob.signals.receive()
                assert got.peer == "alice" and got.message == Offer(session, "a=ice-ufrag:alic\n")
                assert bob.send_to("alice", Answer(session, "a=ice-ufrag:bobb\n"))
                answer = await alice.signals.receive()
                assert answer.message == Answer(session, "a=ice-ufrag:bobb\n")
                creds = await alice.turn_credentials()
                assert creds.username.endswith(":alice") and creds.realm == "lab"
            await server.aclose()


async def test_unknown_nodes_and_wrong_keys_are_refused(tmp_path: Path) -> None:
    ka, kx = generate_private_key(), generate_private_key()
    cfg = rv_config(tmp_path, open_registration=False, nodes=(NodeEntry("alice", public_key(ka)),))
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            server = await nursery.start(partial(serve_signaling, cfg, host=HOST))
            stranger = client(server, "mallory", kx, {})
            impostor = client(server, "alice", kx, {})
            confused = client(  # expects another rendezvous key
                server, "alice", ka, {}, rendezvous_key=public_key(generate_private_key())
            )
            async with running(nursery, stranger, impostor, confused):
                for c, reason in (
                    (stranger, RefusalReason.UNKNOWN_NODE),
                    (impostor, RefusalReason.NAME_TAKEN),
                ):
                    while True:
                        event = await c.events.receive()
                        if isinstance(event, RegistrationRefused):
                            assert event.reason is reason
                            break
                while True:
                    event = await confused.events.receive()
                    if isinstance(event, Disconnected):
                        break
                assert not confused.ready
                assert server.core.online == frozenset()
            await server.aclose()


class EvilCore(SignalingServerCore):
    """A compromised rendezvous (it holds the real rendezvous key) that misroutes sealed
    signals instead of forwarding them faithfully."""

    def __init__(self, attack: str, forger: SignalBox, *args: object, **kw: object) -> None:
        super().__init__(*args, **kw)  # type: ignore[arg-type]
        self.attack = attack
        self.forger = forger
        self.held: list[tuple[str, bytes]] = []
        self.seen: list[tuple[str, str, bytes]] = []

    def _deliver(self, to: str, sender: str, blob: bytes) -> None:
        dest = self._online.get(to)
        if dest is not None:
            self._queue(dest, Deliver(sender, blob))

    def _route(self, conn, msg: Route) -> None:  # type: ignore[no-untyped-def]
        sender = conn.name
        self.seen.append((sender, msg.to, msg.blob))
        attack = self.attack
        if attack == "tamper":
            blob = bytearray(msg.blob)
            blob[len(blob) // 2] ^= 0x01
            self._deliver(msg.to, sender, bytes(blob))
        elif attack == "replay":
            self._deliver(msg.to, sender, msg.blob)
            for s, _, b in self.seen[:-1]:
                self._deliver(msg.to, s, b)
            self._deliver(msg.to, sender, msg.blob)
        elif attack == "reorder":
            self.held.append((sender, msg.blob))
            if len(self.held) == 2:
                for s, b in reversed(self.held):
                    self._deliver(msg.to, s, b)
        elif attack == "redirect":
            self._deliver("carol", sender, msg.blob)
        elif attack == "relabel":
            self._deliver(msg.to, "carol", msg.blob)
        elif attack == "reflect":
            self._deliver(sender, msg.to, msg.blob)
        elif attack == "forge":
            fake = self.forger.seal(msg.to, Offer(666, "a=ice-ufrag:evil\n"), self.wall_clock())
            self._deliver(msg.to, sender, fake)


@pytest.mark.parametrize(
    "attack", ["tamper", "replay", "reorder", "redirect", "relabel", "reflect", "forge"]
)
async def test_malicious_rendezvous_cannot_forge_or_misdirect(tmp_path: Path, attack: str) -> None:
    ka, kb, kc = generate_private_key(), generate_private_key(), generate_private_key()
    everyone = {"alice": public_key(ka), "bob": public_key(kb), "carol": public_key(kc)}

    def peers_of(name: str) -> dict[str, bytes]:
        return {k: v for k, v in everyone.items() if k != name}

    # The forger claims to be alice, with a key of its own.
    forger = SignalBox("alice", generate_private_key(), {"bob": public_key(kb)}, os.urandom)
    import time

    cfg = rv_config(tmp_path)
    store = open_store(cfg, HOST)
    core = EvilCore(attack, forger, RV_KEY, store, rng=os.urandom, wall_clock=time.time)
    server = SignalingServer(HOST, core, cfg.listen, store=store)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(server.run)
            alice = client(server, "alice", ka, peers_of("alice"))
            bob = client(server, "bob", kb, peers_of("bob"))
            carol = client(server, "carol", kc, peers_of("carol"))
            async with running(nursery, alice, bob, carol):
                for c in (alice, bob, carol):
                    await c.wait_ready()
                await alice.wait_online("bob")
                session = alice.offer("bob", "a=ice-ufrag:real\n")
                alice.send_to(
                    "bob", Candidates(session, "a=candidate:1 1 udp 1 127.0.0.1 9 typ host\n")
                )
                if attack == "replay":
                    alice.send_to("bob", Candidates(session, "second"))
                # Give the evil rendezvous time to do its worst.
                with trio.move_on_after(0.5):
                    while True:
                        await trio.sleep(0.05)
                received: dict[str, list[SignalReceived]] = {}
                for name, c in (("alice", alice), ("bob", bob), ("carol", carol)):
                    received[name] = []
                    while True:
                        try:
                            received[name].append(c.signals.receive_nowait())
                        except trio.WouldBlock:
                            break
                # Nothing forged, misdirected, reflected or tampered is ever accepted.
                for name, events in received.items():
                    for ev in events:
                        assert ev.peer == "alice" and name == "bob", (attack, name, ev)
                        assert ev.message.session == session
                bob_got = [ev.message for ev in received["bob"]]
                if attack == "replay":
                    # Each genuine message at most once, in order.
                    assert bob_got == [
                        Offer(session, "a=ice-ufrag:real\n"),
                        Candidates(session, "a=candidate:1 1 udp 1 127.0.0.1 9 typ host\n"),
                        Candidates(session, "second"),
                    ]
                    assert bob.core.box.counters.replay >= 3
                else:
                    assert bob_got == []
                refused = sum(c.core.counters.refused_signals for c in (alice, bob, carol))
                dropped = bob.core.counters.dropped_signals
                assert refused + dropped >= 1
            await server.aclose()


async def test_rendezvous_restart_and_tofu_persistence(tmp_path: Path) -> None:
    ka, kb, kx = generate_private_key(), generate_private_key(), generate_private_key()
    cap = 0.5
    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            server = await nursery.start(partial(serve_signaling, rv_config(tmp_path), host=HOST))
            assert server.address is not None
            port = server.address[1]
            alice = client(server, "alice", ka, {"bob": public_key(kb)}, backoff=FAST)
            bob = client(server, "bob", kb, {"alice": public_key(ka)}, backoff=FAST)
            async with running(nursery, alice, bob):
                await alice.wait_online("bob")
                await server.aclose()
                while alice.ready or bob.ready:
                    await trio.sleep(0.01)
                await trio.sleep(1.0)  # down long enough for the backoff to reach its cap
                restarted = await nursery.start(
                    partial(serve_signaling, rv_config(tmp_path, port=port), host=HOST)
                )
                t0 = trio.current_time()
                with trio.fail_after(cap + 1.0):  # the backoff bound, plus handshake slack
                    await alice.wait_online("bob")
                    await bob.wait_online("alice")
                print(f"\nre-registered {trio.current_time() - t0:.3f} s after the restart")
                # The TOFU binding of "alice" survived in SQLite: another key is refused.
                impostor = client(restarted, "alice", kx, {})
                async with running(nursery, impostor):
                    while True:
                        event = await impostor.events.receive()
                        if isinstance(event, RegistrationRefused):
                            assert event.reason is RefusalReason.NAME_TAKEN
                            break
                assert alice.core.ready  # unaffected by the impostor
            await restarted.aclose()


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


async def test_200_clients_on_one_rendezvous(tmp_path: Path) -> None:
    n = 200
    keys = [generate_private_key() for _ in range(n)]
    names = [f"node{i:03d}" for i in range(n)]
    rss0 = _rss_kib()
    tracemalloc.start()
    try:
        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                # Listed nodes: open registration would limit how many names one address claims.
                entries = tuple(
                    NodeEntry(n, public_key(k)) for n, k in zip(names, keys, strict=True)
                )
                cfg = rv_config(tmp_path, open_registration=False, nodes=entries)
                server = await nursery.start(
                    lambda task_status: serve_signaling(
                        cfg,
                        host=HOST,
                        # 200 nodes behind one address, all connecting at once.
                        limits=ServerLimits(
                            connect_rate=1000.0, connect_burst=1000.0, max_pending_per_source=512
                        ),
                        task_status=task_status,
                    )
                )
                mem0, _ = tracemalloc.get_traced_memory()
                clients = []
                for i in range(n):
                    ring = {names[(i + 1) % n]: public_key(keys[(i + 1) % n])}
                    ring[names[i - 1]] = public_key(keys[i - 1])
                    clients.append(client(server, names[i], keys[i], ring))
                t_start = trio.current_time()
                async with running(nursery, *clients):
                    for c in clients:
                        await c.wait_ready()
                    t_ready = trio.current_time() - t_start
                    assert server.core.connection_count == n
                    assert len(server.core.online) == n
                    mem1, peak = tracemalloc.get_traced_memory()
                    tracemalloc.stop()  # it slows everything down; latency is measured without
                    # Every node offers to its successor at once; all are delivered.
                    for i, c in enumerate(clients):
                        await c.wait_online(names[(i + 1) % n])
                        c.offer(names[(i + 1) % n], f"a=ice-ufrag:{i:04d}\n")
                    for i, c in enumerate(clients):
                        got = await c.signals.receive()
                        assert got.peer == names[i - 1]
                        assert got.message.description == f"a=ice-ufrag:{(i - 1) % n:04d}\n"  # type: ignore[union-attr]
                    # Routing latency, one message at a time.
                    latencies = []
                    for i in random.Random(3).sample(range(n), 50):
                        sender, receiver = clients[i], clients[(i + 1) % n]
                        t0 = trio.current_time()
                        sender.send_to(
                            names[(i + 1) % n],
                            Candidates(receiver_session(receiver, names[i]), "c"),
                        )
                        got = await receiver.signals.receive()
                        latencies.append(trio.current_time() - t0)
                        assert got.peer == names[i]
                await server.aclose()
    finally:
        tracemalloc.stop()
    rss1 = _rss_kib()
    latencies.sort()
    print(
        f"\n{n} clients: all registered in {t_ready:.2f} s; "
        f"python heap +{(mem1 - mem0) / 1024:.0f} KiB for clients+server "
        f"({(mem1 - mem0) / n / 1024:.1f} KiB per client+connection), peak {peak / 1024:.0f} KiB; "
        f"RSS +{rss1 - rss0} KiB; routing latency over loopback (sender->rendezvous->receiver, "
        f"same process) median {statistics.median(latencies) * 1000:.2f} ms, "
        f"p95 {latencies[int(len(latencies) * 0.95)] * 1000:.2f} ms, "
        f"max {latencies[-1] * 1000:.2f} ms"
    )


def receiver_session(receiver: SignalingClient, sender_name: str) -> int:
    """The session the receiver negotiated with ``sender_name`` (it answered that offer)."""
    session = receiver.core.negotiations[sender_name].session
    assert session is not None
    return session
