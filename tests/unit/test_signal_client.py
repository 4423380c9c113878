"""Client and server cores together under virtual time: registration, presence, routing,
glare, heartbeat death, backoff, refusals, limits and TURN credentials. No sockets, no
sleeps: bytes are moved between the cores by a tiny in-memory network."""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import logging
import random
from dataclasses import dataclass, field

import pytest

from p2ptun.config import NodeEntry, TurnServerSettings
from p2ptun.keys import clamp, encode_key, public_key
from p2ptun.rendezvous.signaling import rest_turn_issuer
from p2ptun.rendezvous.store import MemoryStore
from p2ptun.signal.backoff import Backoff, BackoffPolicy
from p2ptun.signal.channel import ChannelLimits
from p2ptun.signal.client import (
    EARLY_TTL,
    ClientEvent,
    ClientState,
    ClientTimers,
    Disconnected,
    PeerUnreachable,
    PresenceChanged,
    RegisteredEvent,
    RegistrationRefused,
    SignalClientCore,
    SignalReceived,
    TurnCredentialsReceived,
    TurnUnavailable,
)
from p2ptun.signal.hub import ServerLimits, SignalingServerCore
from p2ptun.signal.messages import RefusalReason, RouteFailure
from p2ptun.signal.negotiation import NegotiationState, Role
from p2ptun.signal.seal import Answer, Candidates, Offer

_rand = random.Random(1234)
WALL0 = 1_800_000_000.0


def rng(n: int) -> bytes:
    return _rand.randbytes(n)


def newkey() -> bytes:
    return clamp(rng(32))


RV = newkey()


@dataclass
class Node:
    core: SignalClientCore
    conn: int | None = None
    events: list[ClientEvent] = field(default_factory=list)

    def of(self, cls: type) -> list:  # type: ignore[type-arg]
        return [e for e in self.events if isinstance(e, cls)]


class Net:
    """Moves bytes between client cores and one server core; owns virtual time."""

    def __init__(self, server: SignalingServerCore) -> None:
        self.server = server
        self.now = 0.0
        self.nodes: dict[str, Node] = {}
        self.up = True
        self.blackholed: set[str] = set()
        self._next_conn = 0
        self.attempts: dict[str, list[float]] = {}

    def wall(self) -> float:
        return WALL0 + self.now

    def add(
        self,
        name: str,
        key: bytes,
        peers: dict[str, bytes],
        *,
        timers: ClientTimers | None = None,
        backoff: BackoffPolicy | None = None,
        rendezvous_key: bytes | None = None,
        label: str | None = None,
    ) -> Node:
        core = SignalClientCore(
            name=name,
            private_key=key,
            rendezvous_key=rendezvous_key or public_key(RV),
            peers=peers,
            rng=rng,
            random=_rand.random,
            wall_clock=self.wall,
            now=self.now,
            timers=timers,
            backoff=backoff,
        )
        node = self.nodes[label or name] = Node(core)
        self.step()
        return node

    def _connect(self, name: str, node: Node) -> None:
        self.attempts.setdefault(name, []).append(self.now)
        if not self.up:
            node.core.connection_failed(self.now, "connection refused")
            return
        self._next_conn += 1
        node.conn = self._next_conn
        if not self.server.connection_made(node.conn, self.now, name):
            node.core.connection_failed(self.now, "closed")
            node.conn = None
            return
        node.core.connection_made(self.now)

    def step(self) -> None:
        """Deliver everything until quiet."""
        for _ in range(1000):
            moved = False
            for name, node in self.nodes.items():
                core = node.core
                if core.poll_connect(self.now):
                    self._connect(name, node)
                    moved = True
                if node.conn is None:
                    continue
                if not core.connected:
                    self.server.connection_lost(node.conn, self.now)
                    node.conn = None
                    moved = True
                    continue
                closing = self.server.should_close(node.conn)
                up = core.data_to_send()
                down = self.server.data_to_send(node.conn)
                if name in self.blackholed:
                    up = down = b""
                if down:
                    core.data_received(down, self.now)
                    moved = True
                if up and not closing:
                    self.server.data_received(node.conn, up, self.now)
                    moved = True
                if closing and node.conn is not None:
                    # The server flushed its last words; the socket closes.
                    self.server.connection_lost(node.conn, self.now)
                    core.connection_lost(self.now, "closed by server")
                    node.conn = None
                    moved = True
            for node in self.nodes.values():
                node.events += node.core.events()
            if not moved:
                return
        raise AssertionError("network did not settle")

    def run_until(self, t: float) -> None:
        """Advance virtual time to ``t``, firing every timer on the way."""
        while True:
            wakeups = [w for n in self.nodes.values() if (w := n.core.next_wakeup()) is not None]
            if (w := self.server.next_wakeup()) is not None:
                wakeups.append(w)
            nxt = min([*wakeups, t])
            self.now = max(self.now, nxt)
            for node in self.nodes.values():
                node.core.handle_timeout(self.now)
            self.server.handle_timeout(self.now)
            self.step()
            if self.now >= t:
                return

    def kill_server(self) -> None:
        """The rendezvous process dies: every connection resets, new ones are refused."""
        self.up = False
        for node in self.nodes.values():
            if node.conn is not None:
                self.server.connection_lost(node.conn, self.now)
                node.core.connection_lost(self.now, "reset")
                node.conn = None
        self.step()


def make_server(
    *,
    open_registration: bool = True,
    nodes: tuple[NodeEntry, ...] = (),
    turn: TurnServerSettings | None = None,
    limits: ServerLimits | None = None,
    net: Net | None = None,
) -> SignalingServerCore:
    return SignalingServerCore(
        RV,
        MemoryStore(open_registration, nodes),
        rng=rng,
        wall_clock=lambda: WALL0 + (net.now if net else 0.0),
        turn=rest_turn_issuer(turn),
        limits=limits,
    )


def two_nodes(**kw: object) -> tuple[Net, Node, Node, bytes, bytes]:
    net = Net(make_server(**kw))  # type: ignore[arg-type]
    ka, kb = newkey(), newkey()
    a = net.add("alice", ka, {"bob": public_key(kb)})
    b = net.add("bob", kb, {"alice": public_key(ka)})
    return net, a, b, ka, kb


def test_register_presence_and_route_offer_answer() -> None:
    net, a, b, _, _ = two_nodes()
    assert a.core.state is b.core.state is ClientState.READY
    assert a.of(RegisteredEvent) == [RegisteredEvent("alice")]
    assert PresenceChanged("bob", True) in a.events and PresenceChanged("alice", True) in b.events
    session = a.core.offer("bob", "a=ice-ufrag:abcd\n")
    net.step()
    [got] = b.of(SignalReceived)
    assert got == SignalReceived("alice", Offer(session, "a=ice-ufrag:abcd\n"), Role.CONTROLLED)
    b.core.send("alice", Answer(session, "answer"))
    b.core.send("alice", Candidates(session, "cands"))
    net.step()
    answer, cands = a.of(SignalReceived)
    assert answer.role is Role.CONTROLLING and isinstance(answer.message, Answer)
    assert cands.message == Candidates(session, "cands")
    assert net.server.counters.routed == 3


def test_offer_waits_for_presence() -> None:
    net = Net(make_server())
    ka, kb = newkey(), newkey()
    a = net.add("alice", ka, {"bob": public_key(kb)})
    session = a.core.offer("bob", "desc")
    net.step()
    assert a.core.negotiations["bob"].state is NegotiationState.WAITING_FOR_PEER
    assert net.server.counters.routed == 0 and net.server.counters.route_offline == 0
    net.run_until(30.0)
    b = net.add("bob", kb, {"alice": public_key(ka)})
    assert [e.message for e in b.of(SignalReceived)] == [Offer(session, "desc")]
    assert a.core.negotiations["bob"].state.value == "offering"


def test_offer_to_peer_that_just_left_waits_again() -> None:
    net, a, b, _, _ = two_nodes()
    net.blackholed.add("bob")  # bob's socket is dead; the rendezvous has not noticed yet
    # alice offers while the rendezvous still thinks bob is online: delivered into the void.
    net.server.connection_lost(b.conn, net.now)  # type: ignore[arg-type]
    b.conn = None
    net.step()
    assert a.core.is_online("bob") is False
    a.core.negotiations["bob"].reset()
    a.core.presence["bob"] = True  # stale view: the offer goes out and bounces
    session = a.core.offer("bob", "desc")
    net.step()
    assert a.of(PeerUnreachable) == [PeerUnreachable("bob", RouteFailure.PEER_OFFLINE)]
    assert a.core.negotiations["bob"].state is NegotiationState.WAITING_FOR_PEER
    assert a.core.negotiations["bob"].session == session


def test_offer_refused_by_peer_is_resent_when_it_reconnects() -> None:
    """carol offers to bob, who does not know her yet: presence is mutual, so bob is offline
    as far as carol may know and her offer waits (before, it went out and bob refused it);
    bob reloads (a new registration that knows carol). carol's offer must not stay pending
    unseen (it would win glare against bob's offers): it goes to bob's new registration."""
    net = Net(make_server())
    kc, kb = sorted((newkey(), newkey()), key=public_key)  # carol wins glare
    c = net.add("carol", kc, {"bob": public_key(kb)})
    b = net.add("bob", kb, {"alice": public_key(newkey())})
    session = c.core.offer("bob", "from carol")
    net.step()
    assert b.core.counters.refused_signals == 0 and b.of(SignalReceived) == []
    assert c.core.negotiations["bob"].state is NegotiationState.WAITING_FOR_PEER
    b.core.stop()  # SIGHUP: bob's signaling client is replaced
    net.step()
    assert c.core.negotiations["bob"].state is NegotiationState.WAITING_FOR_PEER
    b = net.add("bob", kb, {"carol": public_key(kc)})  # carol re-sends on bob's presence
    [got] = b.of(SignalReceived)
    assert got.message == Offer(session, "from carol") and got.role is Role.CONTROLLED
    b.core.send("carol", Answer(session, "answer"))
    net.step()
    [answer] = c.of(SignalReceived)
    assert answer.message == Answer(session, "answer")


def test_glare_resolved_by_smaller_key() -> None:
    net, a, b, ka, kb = two_nodes()
    sa = a.core.offer("bob", "from alice")
    sb = b.core.offer("alice", "from bob")  # before either offer is delivered
    net.step()
    winner, loser = (a, b) if public_key(ka) < public_key(kb) else (b, a)
    win_session, lose_session = (sa, sb) if winner is a else (sb, sa)
    assert winner.of(SignalReceived) == []
    [lost] = loser.of(SignalReceived)
    assert lost.message.session == win_session
    assert lost.role is Role.CONTROLLED and lost.superseded == lose_session
    loser_peer = "alice" if loser is b else "bob"
    loser.core.send(loser_peer, Answer(win_session, "answer"))
    net.step()
    [answer] = winner.of(SignalReceived)
    assert answer.role is Role.CONTROLLING and answer.message.session == win_session


def test_an_offer_the_peer_never_took_goes_again_when_glare_is_won() -> None:
    """alice's offer is lost before bob takes it (in the lab: routed into a registration of
    bob's that his moved NAT had already left), so bob offers himself. alice wins glare and
    drops bob's offer: she sends hers again, so that bob answers it instead of both waiting
    out the offer timeout for answers that cannot come."""
    net = Net(make_server())
    ka, kb = sorted((newkey(), newkey()), key=public_key)  # alice wins glare
    a = net.add("alice", ka, {"bob": public_key(kb)})
    b = net.add("bob", kb, {"alice": public_key(ka)})
    net.step()
    # The channel is encrypted and counted end to end, so the loss is made where bob takes
    # the delivery: the first one goes nowhere.
    lost: list[bytes] = []
    take = b.core._on_deliver
    b.core._on_deliver = lambda sender, blob: lost.append(blob) if not lost else take(sender, blob)  # type: ignore[method-assign]
    session = a.core.offer("bob", "from alice")
    net.step()
    assert len(lost) == 1 and b.of(SignalReceived) == []
    mine = b.core.offer("alice", "from bob")
    net.step()
    assert a.core.negotiations["bob"].counters.glare_won == 1
    [got] = b.of(SignalReceived)
    assert got.message == Offer(session, "from alice") and got.superseded == mine
    b.core.send("alice", Answer(session, "answer"))
    net.step()
    [answer] = a.of(SignalReceived)
    assert answer.message == Answer(session, "answer") and answer.role is Role.CONTROLLING


def test_heartbeat_detects_dead_connection_within_35s() -> None:
    net, a, _, _, _ = two_nodes()
    net.run_until(40.0)
    assert a.core.ready and not a.of(Disconnected)
    t0 = net.now
    net.blackholed.add("alice")  # the TCP path silently dies
    net.run_until(t0 + 36.0)
    dead = a.of(Disconnected)[0]  # (later reconnection attempts time out too)
    assert dead.reason == "rendezvous silent"
    # Silence is measured from the last frame received, which is at most t0.
    detected_at = next(t for t in net.attempts["alice"][1:]) - dead.retry_in
    assert detected_at <= t0 + 35.0


def test_idle_client_pings_every_25s_and_stays_registered() -> None:
    """An idle node wakes for the keepalive once per ping interval (plus the Pong), and the
    rendezvous' default idle timeout never drops it."""
    net, a, b, _, _ = two_nodes()
    net.run_until(1.0)
    pings0 = a.core._ping_seq
    wakeups = 0
    while net.now < 601.0:
        nxt = a.core.next_wakeup()
        assert nxt is not None
        wakeups += 1
        net.run_until(min(nxt, 601.0))
    assert a.core.ready and b.core.ready
    assert not a.of(Disconnected) and not b.of(Disconnected)
    assert net.server.counters.timeouts == 0
    assert a.core._ping_seq - pings0 == 24  # 600 s / 25 s
    assert wakeups <= 26


def test_default_timers_are_consistent() -> None:
    timers, limits = ClientTimers(), ServerLimits()
    # The rendezvous waits for two Pings, the node for a Pong well within the next interval.
    assert limits.idle_timeout >= 2 * timers.ping_interval
    assert timers.ping_interval < timers.dead_after <= 2 * timers.ping_interval


def test_server_drops_silent_clients() -> None:
    net = Net(make_server())
    ka, kb = newkey(), newkey()
    # alice would notice the silence herself only much later: the rendezvous' timeout acts.
    net.add("alice", ka, {"bob": public_key(kb)}, timers=ClientTimers(dead_after=1000.0))
    b = net.add("bob", kb, {"alice": public_key(ka)})
    net.run_until(1.0)
    net.blackholed.add("alice")
    net.run_until(59.0)
    assert "alice" in net.server.online  # 60 s: two missed Pings
    net.run_until(62.0)
    assert "alice" not in net.server.online
    assert PresenceChanged("alice", False) in b.events
    assert b.core.ready and "bob" in net.server.online


def test_backoff_bounds_and_reset() -> None:
    policy = BackoffPolicy(base=0.5, cap=30.0)
    net = Net(make_server())
    net.up = False
    ka = newkey()
    a = net.add("alice", ka, {}, backoff=policy)
    net.run_until(400.0)
    times = net.attempts["alice"]
    gaps = [t2 - t1 for t1, t2 in itertools.pairwise(times)]
    assert len(gaps) > 10
    for n, gap in enumerate(gaps):
        ceiling = policy.ceiling(n)
        assert ceiling / 2 - 1e-9 <= gap <= ceiling + 1e-9
        assert gap <= 30.0
    assert max(gaps) > 15.0  # the cap is reached
    net.up = True
    net.run_until(net.now + 30.0)
    assert a.core.ready
    assert a.core.backoff.attempt == 0


def test_an_offer_waiting_for_the_rendezvous_makes_the_client_hurry_for_a_while() -> None:
    """The rendezvous has been down long enough for the backoff to reach its cap; then a
    tunnel needs signaling (a restart offer waits): attempts come at most 1 s apart (each
    connect cut at 3 s) for 60 s after the offer, then the backoff takes over again."""
    net = Net(make_server())
    net.up = False
    ka, kb = newkey(), newkey()
    a = net.add("alice", ka, {"bob": public_key(kb)})
    net.run_until(300.0)
    calm = [t2 - t1 for t1, t2 in itertools.pairwise(net.attempts["alice"]) if t1 > 200]
    assert min(calm) > 10.0  # capped backoff: 15-30 s apart
    offered = net.now
    a.core.offer("bob", "v=0", restart=True, now=offered)
    assert a.core.connect_at <= offered + 1.0
    net.run_until(offered + 120.0)
    hurried = [t for t in net.attempts["alice"] if offered < t <= offered + 60.0]
    gaps = [t2 - t1 for t1, t2 in itertools.pairwise([offered, *hurried])]
    assert len(hurried) >= 60 and max(gaps) <= 1.0 + 1e-9
    later = [t for t in net.attempts["alice"] if t > offered + 62.0]
    assert len(later) <= 5  # back to the backoff
    # The rendezvous is back: registered within a second, and the offer goes out.
    net.up = True
    back = net.now
    a.core.offer("bob", "v=0", restart=True, now=back)
    net.run_until(back + 1.0 + 1e-6)
    assert a.core.ready


def test_an_urgent_connect_is_cut_at_its_own_timeout() -> None:
    net = Net(make_server())
    net.blackholed.add("alice")
    ka, kb = newkey(), newkey()
    a = net.add("alice", ka, {"bob": public_key(kb)})
    net.run_until(1.0)
    a.core.hurry(net.now)
    net.run_until(net.now + 1.0)
    assert a.core.state is ClientState.CONNECTING or a.core.state is ClientState.HANDSHAKING
    deadline = a.core.next_wakeup()
    assert deadline is not None and deadline - net.now <= a.core.timers.urgent_connect_timeout


def test_backoff_policy_properties() -> None:
    policy = BackoffPolicy(base=0.5, cap=30.0, jitter=0.5)
    for attempt in (0, 1, 5, 10, 1000, 10**9):
        for u in (0.0, 0.5, 0.999999):
            d = policy.delay(attempt, lambda: u)  # noqa: B023
            assert 0 < d <= 30.0
    backoff = Backoff(policy, random.Random(5).random)
    delays = [backoff.next_delay() for _ in range(20)]
    assert delays[0] <= 0.5 and max(delays) <= 30.0
    with pytest.raises(ValueError):
        BackoffPolicy(base=0)


def test_rendezvous_restart_reregisters_within_backoff_cap() -> None:
    policy = BackoffPolicy(base=0.1, cap=2.0)
    net = Net(make_server())
    ka, kb = newkey(), newkey()
    a = net.add("alice", ka, {"bob": public_key(kb)}, backoff=policy)
    b = net.add("bob", kb, {"alice": public_key(ka)}, backoff=policy)
    net.run_until(1.0)
    net.kill_server()
    net.run_until(20.0)  # down for a while: backoff reaches its cap
    store = net.server.store
    net.server = make_server(net=net)
    net.server.store = store
    net.up = True
    restart = net.now
    net.run_until(restart + 2.0 + 0.01)
    assert a.core.ready and b.core.ready
    assert a.core.is_online("bob") and b.core.is_online("alice")


def test_registration_refused_unknown_node_and_wrong_key() -> None:
    ka, kb, kx = newkey(), newkey(), newkey()
    server = make_server(
        open_registration=False,
        nodes=(NodeEntry("alice", public_key(ka)), NodeEntry("bob", public_key(kb))),
    )
    net = Net(server)
    stranger = net.add("mallory", kx, {})
    impostor = net.add("alice", kx, {}, label="impostor")  # the name alice, another key
    good = net.add("bob", kb, {})
    assert good.core.ready
    [r1] = stranger.of(RegistrationRefused)
    [r2] = impostor.of(RegistrationRefused)
    assert r1.reason is RefusalReason.UNKNOWN_NODE
    assert r2.reason is RefusalReason.NAME_TAKEN
    assert server.online == frozenset({"bob"})
    # A refused node retries slowly (near the cap), not in a tight loop.
    assert stranger.of(Disconnected)[0].retry_in >= 15.0


def test_tofu_name_taken() -> None:
    net = Net(make_server())
    k1, k2 = newkey(), newkey()
    first = net.add("alice", k1, {})
    second = net.add("alice", k2, {}, label="second")
    assert first.core.ready
    [refused] = second.of(RegistrationRefused)
    assert refused.reason is RefusalReason.NAME_TAKEN
    assert "different public key" in refused.text


def test_wrong_rendezvous_key_never_registers() -> None:
    net = Net(make_server())
    a = net.add("alice", newkey(), {}, rendezvous_key=public_key(newkey()))
    net.run_until(5.0)
    assert not a.core.ready
    assert net.server.online == frozenset()
    assert net.server.counters.channel_errors >= 1


def test_reconnect_replaces_old_connection_without_flapping() -> None:
    net, a, b, _ka, _ = two_nodes()
    old_conn = a.conn
    net.blackholed.add("alice")
    # alice's daemon reconnects over a new path before the old one is noticed dead.
    a.core.connection_lost(net.now, "network changed")
    a.conn = None
    net.blackholed.discard("alice")
    net.run_until(net.now + 1.0)
    assert a.core.ready and a.conn != old_conn
    # bob never saw alice go offline.
    assert PresenceChanged("alice", False) not in b.events
    assert net.server.online == frozenset({"alice", "bob"})


def test_an_offer_lost_in_a_replaced_connection_is_sent_again() -> None:
    """bob's NAT moved: his connection is dead but the rendezvous has not noticed, and alice's
    restart offer goes into it. bob reconnects (replacing the old connection): alice hears he
    is online again and sends her unanswered offer to the new registration."""
    net, a, b, _ka, _kb = two_nodes()
    net.blackholed.add("bob")
    session = a.core.offer("bob", "restart", restart=True)
    net.step()
    assert b.of(SignalReceived) == []  # lost in the dead connection
    b.core.connection_lost(net.now, "our NAT mapping changed", retry_now=True)
    b.conn = None
    net.blackholed.discard("bob")
    net.run_until(net.now + 1.0)
    assert b.core.ready
    [got] = b.of(SignalReceived)
    assert got.message.session == session and got.role is Role.CONTROLLED


def test_an_announced_members_offer_waits_for_the_daemon_to_accept_the_member() -> None:
    """alice was announced as a member of bob's network and offers at once; bob's daemon is
    still verifying her certificate (add_peer not yet called). Her offer is kept, not
    refused, and delivered when bob adds her; what is kept is bounded and expires."""
    net, a, b, ka, _kb = two_nodes()
    b.core.remove_peer("alice")  # bob's daemon has not accepted alice yet
    b.core.members_online.add("alice")  # ... but the rendezvous announced her
    session = a.core.offer("bob", "from alice")
    net.step()
    assert b.of(SignalReceived) == [] and b.core.counters.refused_signals == 0
    b.core.add_peer("alice", public_key(ka))
    b.events.extend(b.core.events())
    [got] = b.of(SignalReceived)
    assert got.message == Offer(session, "from alice") and got.role is Role.CONTROLLED
    # Kept only for a while: once EARLY_TTL passed, add_peer finds nothing to deliver.
    b.core.remove_peer("alice")
    b.events.clear()
    a.core.negotiations["bob"].reset()
    a.core.offer("bob", "again")
    net.step()
    net.run_until(net.now + EARLY_TTL + 1)
    b.core.add_peer("alice", public_key(ka))
    b.events.extend(b.core.events())
    assert b.of(SignalReceived) == []


def test_turn_credentials_rest_api_form() -> None:
    secret = "0123456789abcdef-secret"
    turn = TurnServerSettings(
        realm="p2ptun",
        relay_address="203.0.113.10",
        relay_ports=(49152, 65535),
        auth_secret=secret,
        credential_lifetime=3600,
    )
    key = newkey()
    net = Net(make_server())
    # Credentials go to the nodes the rendezvous lists (not to self-registered ones).
    net.server = make_server(turn=turn, net=net, nodes=(NodeEntry("alice", public_key(key)),))
    a = net.add("alice", key, {})
    net.run_until(100.0)
    assert a.core.request_turn()
    net.step()
    [got] = a.of(TurnCredentialsReceived)
    creds = got.credentials
    expiry = int(net.wall()) + 3600
    assert creds.username == f"{expiry}:alice"
    expected = base64.b64encode(
        hmac.new(secret.encode(), creds.username.encode(), hashlib.sha1).digest()
    ).decode()
    assert creds.password == expected and creds.realm == "p2ptun" and creds.ttl == 3600
    assert got.expires_at == pytest.approx(net.wall() + 3600)


def test_no_turn_configured() -> None:
    net = Net(make_server())
    a = net.add("alice", newkey(), {})
    assert a.core.request_turn()
    net.step()
    assert len(a.of(TurnUnavailable)) == 1


def test_rate_limit_fails_routes() -> None:
    net, a, _, _, _ = two_nodes(limits=ServerLimits(rate=1.0, burst=5.0))
    for _ in range(20):
        a.core.offer("bob", "x")
    net.step()
    limited = [e for e in a.of(PeerUnreachable) if e.reason is RouteFailure.RATE_LIMITED]
    assert len(limited) >= 10
    assert net.server.counters.rate_limited >= 10
    assert a.core.ready  # limited, not disconnected
    net.run_until(net.now + 10.0)
    assert a.core.ready  # heartbeats are exempt from the rate limit


def test_session_age_limit_reconnects_with_fresh_keys() -> None:
    net = Net(make_server())
    a = net.add("alice", newkey(), {}, timers=ClientTimers(max_session_age=60.0))
    net.run_until(61.0)
    assert a.core.ready
    assert a.core.counters.connects == 2
    assert [e.reason for e in a.of(Disconnected)] == ["session age limit"]


def test_channel_message_limit_reconnects() -> None:
    net = Net(make_server())
    core_limits = ChannelLimits(max_messages=6)
    a = net.add("alice", newkey(), {})
    a.core.channel_limits = core_limits
    a.core.connection_lost(net.now, "test")
    net.run_until(net.now + 400.0)  # a Ping every 25 s
    assert a.core.counters.connects >= 3
    assert "session message limit" in [e.reason for e in a.of(Disconnected)]


def test_garbage_from_the_network_closes_only_that_connection() -> None:
    net, a, b, _, _ = two_nodes()
    net.server.data_received(a.conn, b"\x01\x03\x00\x20" + bytes(32), net.now)  # type: ignore[arg-type]
    net.step()
    assert net.server.counters.channel_errors == 1
    assert b.core.ready
    net.run_until(net.now + 5.0)
    assert a.core.ready
    a.core.data_received(b"\x07garbage", net.now)
    assert a.core.counters.decode_errors == 1 and not a.core.connected


def test_refused_signals_are_counted_not_delivered() -> None:
    net, _a, b, _, _ = two_nodes()
    # A blob that is not sealed by alice, routed as if from alice.
    from p2ptun.signal.messages import Deliver

    bob_conn = net.server._online["bob"]
    net.server._queue(bob_conn, Deliver("alice", bytes([1]) + bytes(80)))
    net.server._queue(bob_conn, Deliver("mallory", bytes([1]) + bytes(80)))
    net.step()
    assert b.of(SignalReceived) == []
    assert b.core.counters.refused_signals == 2
    assert b.core.box.counters.bad_seal == 1 and b.core.box.counters.unknown_peer == 1


def test_logs_never_contain_keys_or_payloads(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="p2ptun")
    net, a, b, ka, kb = two_nodes()
    session = a.core.offer("bob", "a=ice-pwd:topsecretpassword0123456789\n")
    net.step()
    b.core.send("alice", Answer(session, "a=ice-pwd:othersecretpassword0123456\n"))
    net.blackholed.add("alice")
    net.run_until(net.now + 30.0)
    text = caplog.text + repr([r.__dict__ for r in caplog.records])
    assert "topsecret" not in text and "othersecret" not in text
    for k in (ka, kb, RV, public_key(ka), public_key(kb), public_key(RV)):
        assert encode_key(k) not in text and k.hex() not in text
    assert "registered" in caplog.text


def test_unknown_keys_wait_while_the_rendezvous_is_under_load() -> None:
    """Under load only keys the rendezvous knows get past the retry (their proof key is a
    static-static Diffie-Hellman it can compute): a first registration waits, and costs the
    rendezvous no handshake."""
    net, a, b, _, _ = two_nodes(limits=ServerLimits(handshake_load=0), open_registration=True)
    assert a.core.state is not ClientState.READY and b.core.state is not ClientState.READY
    assert a.core.counters.retries >= 1
    assert net.server.counters.handshakes == 0 and net.server.counters.proofs_refused >= 2


def test_known_nodes_register_through_a_retry() -> None:
    ka, kb = newkey(), newkey()
    nodes = (NodeEntry("alice", public_key(ka)), NodeEntry("bob", public_key(kb)))
    net = Net(
        make_server(nodes=nodes, open_registration=False, limits=ServerLimits(handshake_load=0))
    )
    a = net.add("alice", ka, {"bob": public_key(kb)})
    b = net.add("bob", kb, {"alice": public_key(ka)})
    assert a.core.state is b.core.state is ClientState.READY
    assert a.core.counters.retries == b.core.counters.retries == 1
    assert net.server.counters.retries == 2 and net.server.counters.handshakes == 2
    assert net.server.counters.proof_keys_computed == 2


def test_offer_lost_with_an_old_connection_is_sent_again_on_reregistration() -> None:
    """bob's offer goes to alice's registration while its connection is already dead (a NAT
    flushed it); when alice registers over a new connection, which replaces the old one
    without presence flapping, bob hears Presence(online) again and sends the offer again at
    once instead of waiting for it to time out."""
    net, a, b, _ka, _ = two_nodes()
    old_conn = a.conn
    net.blackholed.add("alice")
    session = b.core.offer("alice", "from bob")
    net.step()
    assert a.of(SignalReceived) == []  # lost with the dead connection
    a.core.connection_lost(net.now, "network changed")
    a.conn = None
    net.blackholed.discard("alice")
    net.run_until(net.now + 1.0)
    assert a.core.ready and a.conn != old_conn
    assert PresenceChanged("alice", False) not in b.events
    [got] = a.of(SignalReceived)
    assert got.message == Offer(session, "from bob")
