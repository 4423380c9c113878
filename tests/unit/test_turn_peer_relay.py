"""A node's peer relay (TurnServerOptions.peer_relay): only the node's peers allocate, and
only towards each other — never an open relay."""

from __future__ import annotations

from test_turn_server import AUTH_SECRET, PEER_NETWORKS, WALL, Client, code, ft, make_server, ok

from p2ptun.stun import AttrType, Method
from p2ptun.turn.credentials import make_rest_credential
from p2ptun.turn.server import CloseRelay, TurnServer

ALICE_NAT = "198.51.100.18"
BOB_NAT = "198.51.100.34"


def peer(server: TurnServer, name: str, host: str, port: int = 40000) -> Client:
    cred = make_rest_credential(AUTH_SECRET, name, WALL, 3600)
    return Client(server, ft(port, host), cred.username, cred.password)


def permit(client: Client, host: str) -> int | None:
    return code(client.request(Method.CREATE_PERMISSION, [(AttrType.XOR_PEER_ADDRESS, (host, 7))]))


def test_only_named_peers_allocate_and_only_towards_each_other() -> None:
    server = make_server(peer_relay=True, users={}, allow_peers=PEER_NETWORKS)
    assert server.set_users(["alice", "bob"]) == []
    alice, bob = peer(server, "alice", ALICE_NAT), peer(server, "bob", BOB_NAT)
    carol = peer(server, "carol", "198.51.100.50")  # valid secret, but not a peer of ours
    assert code(carol.allocate()) == 401
    assert ok(alice.allocate())
    # Bob has no allocation yet: alice cannot reach his address, nor anything else.
    assert permit(alice, BOB_NAT) == 403
    assert ok(bob.allocate())
    assert permit(alice, BOB_NAT) is None
    assert permit(bob, ALICE_NAT) is None
    for elsewhere in ("198.51.100.50", "192.0.2.1", "10.0.0.1", "127.0.0.1", "203.0.113.10"):
        assert permit(alice, elsewhere) == 403, elsewhere
    assert server.counters.forbidden_peers == 6


def test_a_peer_that_is_removed_loses_its_allocation_and_cannot_return() -> None:
    server = make_server(peer_relay=True, users={}, allow_peers=PEER_NETWORKS)
    server.set_users(["alice", "bob"])
    alice, bob = peer(server, "alice", ALICE_NAT), peer(server, "bob", BOB_NAT)
    assert ok(alice.allocate()) and ok(bob.allocate())
    out = server.set_users(["alice"])
    assert [type(o) for o in out] == [CloseRelay]
    assert len(server.allocations) == 1
    assert permit(alice, BOB_NAT) == 403
    bob_again = peer(server, "bob", BOB_NAT, port=40001)
    assert code(bob_again.allocate()) == 401


def test_the_deny_list_still_applies_to_peers() -> None:
    """Peers at addresses the deny list closes (here documentation ranges, without
    allow_peers) cannot be reached even when they allocate."""
    server = make_server(peer_relay=True, users={}, allow_peers=())
    server.set_users(["alice", "bob"])
    alice, bob = peer(server, "alice", ALICE_NAT), peer(server, "bob", BOB_NAT)
    assert ok(alice.allocate()) and ok(bob.allocate())
    assert permit(alice, BOB_NAT) == 403


def test_static_users_are_not_admitted_to_a_peer_relay() -> None:
    server = make_server(peer_relay=True, allow_peers=())
    server.set_users(["alice"])
    static = Client(server, ft(40000, ALICE_NAT))  # "alice"/"pw-alice", a static user
    assert code(static.allocate()) == 401


def test_an_ordinary_server_is_unchanged() -> None:
    server = make_server()
    alice = peer(server, "alice", ALICE_NAT)
    assert ok(alice.allocate())
    assert permit(alice, "192.0.2.1") is None  # the lab's allow_peers
