"""Two hub cores of one cluster, sans-I/O: their cluster messages carried between them through
the envelope (as the Redis shell does), the nodes real client cores (the harness of
test_signal_client). Mutual presence across instances, offers forwarded, a node moving to the
other instance without its peer seeing it offline, and departures."""

from __future__ import annotations

from p2ptun.keys import public_key
from p2ptun.rendezvous.store import MemoryStore
from p2ptun.signal.client import PresenceChanged, SignalReceived
from p2ptun.signal.cluster import Forward, NodeDown, NodeUp, decode_cluster, encode_cluster
from p2ptun.signal.hub import SignalingServerCore
from p2ptun.signal.seal import Answer, Offer
from tests.unit.test_signal_client import RV, WALL0, Net, newkey, rng


def instance(name: str) -> Net:
    net = Net(None)  # type: ignore[arg-type]
    net.server = SignalingServerCore(
        RV, MemoryStore(True), rng=rng, wall_clock=lambda: WALL0 + net.now, instance=name
    )
    return net


def settle(*nets: Net) -> int:
    """Step every net and carry cluster messages until quiet; how many were carried."""
    carried = 0
    for _ in range(100):
        moved = 0
        for net in nets:
            net.step()
            for msg in net.server.take_cluster_messages():
                moved += 1
                data = encode_cluster(msg)
                for other in nets:
                    if other is net:
                        continue
                    got = decode_cluster(data)
                    if isinstance(got, NodeUp):
                        other.server.remote_up(got, other.now)
                    elif isinstance(got, NodeDown):
                        other.server.remote_down(got, other.now)
                    elif isinstance(got, Forward) and got.instance == other.server.instance:
                        other.server.remote_deliver(got, other.now)
        carried += moved
        if not moved:
            for net in nets:
                net.step()
            return carried
    raise AssertionError("the cluster did not settle")


def presence(node: object, peer: str) -> list[bool]:
    return [e.online for e in node.of(PresenceChanged) if e.peer == peer]  # type: ignore[attr-defined]


def test_presence_and_offers_cross_instances() -> None:
    a, b = instance("rv-a"), instance("rv-b")
    ka, kb, kc = newkey(), newkey(), newkey()
    alice = a.add("alice", ka, {"bob": public_key(kb)})
    bob = b.add("bob", kb, {"alice": public_key(ka)})
    # carol lists bob, bob does not list carol: she must not see him.
    carol = a.add("carol", kc, {"bob": public_key(kb)})
    assert settle(a, b) > 0
    assert alice.core.is_online("bob") and bob.core.is_online("alice")
    assert not carol.core.is_online("bob")
    session = alice.core.offer("bob", "a=x\n", now=a.now)
    settle(a, b)
    got = bob.of(SignalReceived)
    assert got and got[-1].message == Offer(session, "a=x\n")
    bob.core.send("alice", Answer(session, "a=y\n"), b.now)
    settle(a, b)
    assert alice.of(SignalReceived)[-1].message == Answer(session, "a=y\n")
    assert a.server.counters.cluster_forwarded == 1 and b.server.counters.cluster_delivered == 1
    # bob leaves: alice hears it from the other instance.
    bob.core.stop()
    settle(a, b)
    assert presence(alice, "bob")[-1] is False
    assert "bob" not in a.server.remote_nodes


def test_a_node_moving_to_another_instance_does_not_flap() -> None:
    a, b = instance("rv-a"), instance("rv-b")
    ka, kb = newkey(), newkey()
    alice = a.add("alice", ka, {"bob": public_key(kb)})
    old = b.add("bob", kb, {"alice": public_key(ka)})
    settle(a, b)
    assert presence(alice, "bob")[-1] is True
    seen = len(presence(alice, "bob"))
    # bob's machine connects to rv-a (its connection to rv-b is stale, not yet closed).
    new = a.add("bob", kb, {"alice": public_key(ka)}, label="bob-new")
    settle(a, b)
    old.core.stop()  # the stale connection, closed by rv-b as moved, is the same process
    settle(a, b)
    assert new.core.ready and "bob" in a.server.online and "bob" not in b.server.online
    assert False not in presence(alice, "bob")[seen:], presence(alice, "bob")
    assert "bob" not in a.server.remote_nodes
    assert b.server.remote_nodes["bob"].instance == "rv-a"
    # rv-b's late departure of its stale connection is ignored by rv-a.
    a.server.remote_down(NodeDown("rv-b", "bob"), a.now)
    assert "bob" in a.server.online


def test_a_remote_node_whose_key_expired_goes_offline() -> None:
    a, b = instance("rv-a"), instance("rv-b")
    ka, kb = newkey(), newkey()
    alice = a.add("alice", ka, {"bob": public_key(kb)})
    b.add("bob", kb, {"alice": public_key(ka)})
    settle(a, b)
    assert alice.core.is_online("bob")
    # rv-b is killed: no NodeDown, its shell finds bob's presence key gone.
    a.server.remote_down(NodeDown("rv-b", "bob"), a.now)
    a.step()
    assert not alice.core.is_online("bob")
