"""Peer relay grants (p2ptun.node.peer_relay): what the relay node mints for each peer, and
what a node accepts from a peer."""

from __future__ import annotations

import pytest

from p2ptun.config import RelayConfig
from p2ptun.node.peer_relay import GRANT_LIFETIME, RelayOffer, turn_server_from_grant
from p2ptun.signal.seal import RelayGrant
from p2ptun.turn.credentials import parse_rest_username, rest_credential_password

WALL = 1_800_000_000.0
SECRET = "ab" * 32


def offer(address: str = "192.0.2.18", port: int = 3479) -> RelayOffer:
    return RelayOffer(RelayConfig(True, ("0.0.0.0", port), address, (50000, 50999)), SECRET)


def test_each_peer_gets_credentials_of_its_own_for_the_public_address() -> None:
    relay = offer()
    alice, bob = relay.grant("alice", WALL), relay.grant("bob", WALL)
    assert alice.url == bob.url == "turn:192.0.2.18:3479?transport=udp"
    assert parse_rest_username(alice.username) == (int(WALL) + GRANT_LIFETIME, "alice")
    assert alice.password != bob.password
    # What the relay's TURN core checks: the secret, the expiry.
    assert rest_credential_password(SECRET, alice.username, WALL) == alice.password
    assert rest_credential_password(SECRET, alice.username, WALL + GRANT_LIFETIME + 1) is None
    assert offer("2001:db8::5").url == "turn:[2001:db8::5]:3479?transport=udp"


def test_a_good_grant_becomes_a_turn_server() -> None:
    grant = offer().grant("alice", WALL)
    server = turn_server_from_grant(grant, "alice")
    assert not isinstance(server, str)
    assert (server.host, server.port, server.transport) == ("192.0.2.18", 3479, "udp")
    assert (server.username, server.password) == (grant.username, grant.password)


@pytest.mark.parametrize(
    ("url", "user", "why"),
    [
        ("http://192.0.2.18", "1:alice", "bad URL"),
        ("turn:192.0.2.18:3479?transport=tcp", "1:alice", "peer relays are UDP"),
        ("turns:192.0.2.18", "1:alice", "peer relays are UDP"),
        ("turn:relay.example:3479", "1:alice", "IP address"),
        ("turn:127.0.0.1:3479", "1:alice", "not a relay address"),
        ("turn:0.0.0.0:3479", "1:alice", "not a relay address"),
        ("turn:[fe80::1]:3479", "1:alice", "not a relay address"),
        ("turn:224.0.0.1:3479", "1:alice", "not a relay address"),
        ("turn:192.0.2.18:3479", "1:bob", "not for this node"),
        ("turn:192.0.2.18:3479", "alice", "not for this node"),
    ],
)
def test_bad_grants_are_refused_with_a_reason(url: str, user: str, why: str) -> None:
    reason = turn_server_from_grant(RelayGrant(url, user, "pw"), "alice")
    assert isinstance(reason, str) and why in reason


def test_a_grant_without_password_is_refused() -> None:
    grant = RelayGrant("turn:192.0.2.18:3479", "1:alice", "")
    assert isinstance(turn_server_from_grant(grant, "alice"), str)
