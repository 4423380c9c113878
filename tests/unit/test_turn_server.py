"""The sans-I/O TURN server core (RFC 8656) under virtual time: the protocol, its error
responses, expiries, the peer policy, and what it refuses to relay."""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Iterable
from typing import Any

import pytest

from p2ptun.addr import Address
from p2ptun.stun import (
    AddressFamily,
    AttrType,
    Message,
    MessageClass,
    Method,
    PasswordAlgorithm,
    PasswordAlgorithmValue,
    decode_channel_data,
    long_term_key,
)
from p2ptun.turn.credentials import make_rest_credential
from p2ptun.turn.server import (
    CHANNEL_LIFETIME,
    DEFAULT_LIFETIME,
    PERMISSION_LIFETIME,
    AllocationState,
    CloseRelay,
    FiveTuple,
    OpenRelay,
    Output,
    ServerLimits,
    ToClient,
    ToPeer,
    Transport,
    TurnServer,
    TurnServerOptions,
)
from p2ptun.turn.server_auth import NonceIssuer
from p2ptun.turn.server_policy import PeerPolicy

REALM = "lab"
RELAY = "203.0.113.10"
SECRET = b"k" * 32
AUTH_SECRET = "0123456789abcdef0123"
WALL = 1_800_000_000.0
SERVER_ADDR: Address = (RELAY, 3478)
PEER: Address = ("192.0.2.50", 9000)
PEER2: Address = ("192.0.2.51", 9001)
#: The peers and clients here have documentation addresses, which a relay refuses unless told.
PEER_NETWORKS = (ipaddress.ip_network("192.0.2.0/24"), ipaddress.ip_network("198.51.100.0/24"))


def ft(
    port: int = 40000, host: str = "198.51.100.2", transport: Transport = Transport.UDP
) -> FiveTuple:
    return FiveTuple((host, port), SERVER_ADDR, transport)


def make_server(**overrides: Any) -> TurnServer:
    limits = overrides.pop("limits", ServerLimits())
    options = TurnServerOptions(
        realm=REALM,
        relay_address=RELAY,
        relay_ports=overrides.pop("relay_ports", (50000, 50999)),
        users=overrides.pop("users", {"alice": "pw-alice", "bob": "pw-bob"}),
        auth_secret=AUTH_SECRET,
        allow_peers=overrides.pop("allow_peers", PEER_NETWORKS),
        own_addresses=(RELAY, "203.0.113.11"),
        limits=limits,
        **overrides,
    )
    return TurnServer(options, SECRET, rng=random.Random(7), wall_offset=WALL)


_tid_counter = 0


def tid() -> bytes:
    global _tid_counter
    _tid_counter += 1
    return _tid_counter.to_bytes(12, "big")


class Client:
    """A minimal long-term-credential TURN client driving the core directly."""

    def __init__(
        self,
        server: TurnServer,
        five_tuple: FiveTuple | None = None,
        user: str = "alice",
        password: str = "pw-alice",
        *,
        sha256: bool = False,
    ) -> None:
        self.server = server
        self.ft = five_tuple or ft()
        self.user = user
        self.password = password
        self.sha256 = sha256
        self.nonce: str | None = None
        self.bind_ok = True
        self.outputs: list[Output] = []

    @property
    def key(self) -> bytes:
        algorithm = PasswordAlgorithm.SHA256 if self.sha256 else PasswordAlgorithm.MD5
        return long_term_key(self.user, REALM, self.password, algorithm)

    def feed(self, wire: bytes, now: float) -> list[Output]:
        """Send bytes; let the shell part (relay sockets) answer as ``bind_ok`` says."""
        pending = list(self.server.handle_client(self.ft, wire, now))
        done: list[Output] = []
        while pending:
            out = pending.pop(0)
            done.append(out)
            if isinstance(out, OpenRelay):
                pending.extend(self.server.relay_opened(out.relay, self.bind_ok, now))
        self.outputs = done
        return done

    def responses(self) -> list[Message]:
        return [
            Message.decode(o.data)
            for o in self.outputs
            if isinstance(o, ToClient) and o.five_tuple == self.ft
        ]

    def build(
        self, method: int, attrs: Iterable[tuple[int, Any]] = (), t: bytes | None = None
    ) -> bytes:
        msg = Message.request(method, t or tid(), list(attrs))
        if self.nonce is None:
            return msg.encode()
        msg.add(AttrType.USERNAME, self.user).add(AttrType.REALM, REALM)
        msg.add(AttrType.NONCE, self.nonce)
        if self.sha256:
            algos = (
                PasswordAlgorithmValue(PasswordAlgorithm.SHA256),
                PasswordAlgorithmValue(PasswordAlgorithm.MD5),
            )
            msg.add(AttrType.PASSWORD_ALGORITHMS, algos)
            msg.add(AttrType.PASSWORD_ALGORITHM, PasswordAlgorithmValue(PasswordAlgorithm.SHA256))
            return msg.encode(self.key, sha1=False, sha256=True)
        return msg.encode(self.key)

    def request(
        self,
        method: int,
        attrs: Iterable[tuple[int, Any]] = (),
        now: float = 0.0,
        t: bytes | None = None,
    ) -> Message:
        """One request with the 401/438 dance done as a client would."""
        attrs = list(attrs)
        for _ in range(3):
            self.feed(self.build(method, attrs, t), now)
            responses = self.responses()
            if not responses:
                raise AssertionError(f"no response: {self.outputs}")
            response = responses[-1]
            err = response.error_code
            if err is not None and err.code in (401, 438) and response.nonce is not None:
                if err.code == 401 and self.nonce is not None:
                    return response
                self.nonce = response.nonce
                continue
            return response
        raise AssertionError("authentication loop")

    def allocate(self, now: float = 0.0, extra: Iterable[tuple[int, Any]] = ()) -> Message:
        return self.request(Method.ALLOCATE, [(AttrType.REQUESTED_TRANSPORT, 17), *extra], now)


def code(msg: Message) -> int | None:
    err = msg.error_code
    return None if err is None else err.code


def ok(msg: Message) -> bool:
    return msg.message_class == MessageClass.SUCCESS


def send_indication(peer: Address, data: bytes) -> bytes:
    return Message.indication(
        Method.SEND, tid(), [(AttrType.XOR_PEER_ADDRESS, peer), (AttrType.DATA, data)]
    ).encode()


def allocated(server: TurnServer | None = None, **kw: Any) -> tuple[TurnServer, Client, Message]:
    server = server or make_server(**kw)
    client = Client(server)
    response = client.allocate()
    assert ok(response), response
    return server, client, response


# -- STUN Binding and authentication ------------------------------------------------------------


def test_binding_needs_no_credentials() -> None:
    server = make_server()
    out = server.handle_client(ft(), Message.request(Method.BINDING, tid()).encode(), 0.0)
    assert len(out) == 1 and isinstance(out[0], ToClient)
    response = Message.decode(out[0].data)
    assert ok(response) and response.xor_mapped_address == ("198.51.100.2", 40000)
    assert response.check_fingerprint()


def test_unauthenticated_allocate_gets_401_with_realm_nonce_and_algorithms() -> None:
    server = make_server()
    wire = Message.request(Method.ALLOCATE, tid(), [(AttrType.REQUESTED_TRANSPORT, 17)]).encode()
    (out,) = server.handle_client(ft(), wire, 0.0)
    assert isinstance(out, ToClient)
    response = Message.decode(out.data)
    assert code(response) == 401
    assert response.realm == REALM and response.nonce and response.nonce.startswith("obMatJos2")
    assert response.password_algorithms is not None
    assert response.message_integrity is None
    assert server.state_size()["allocations"] == 0


def test_allocate_success() -> None:
    server, client, response = allocated()
    relay = response.xor_relayed_address
    assert relay is not None and relay[0] == RELAY and 50000 <= relay[1] <= 50999
    assert response.lifetime == DEFAULT_LIFETIME
    assert response.xor_mapped_address == client.ft.client
    assert response.check_integrity(client.key)
    assert any(isinstance(o, OpenRelay) and o.relay == relay for o in client.outputs)
    alloc = server.allocations[client.ft]
    assert alloc.state is AllocationState.ACTIVE and alloc.relay == relay
    assert server.counters.allocations_created == 1


def test_wrong_password_is_refused_without_state() -> None:
    server = make_server()
    client = Client(server, password="nope")
    response = client.allocate()
    assert code(response) == 401
    assert server.counters.integrity_failures == 1
    assert server.state_size()["allocations"] == 0


def test_unknown_user_and_wrong_realm_are_401() -> None:
    server = make_server()
    assert code(Client(server, user="mallory", password="x").allocate()) == 401
    client = Client(server)
    client.allocate()  # learns the nonce
    msg = Message.request(Method.ALLOCATE, tid(), [(AttrType.REQUESTED_TRANSPORT, 17)])
    msg.add(AttrType.USERNAME, "bob").add(AttrType.REALM, "other").add(AttrType.NONCE, client.nonce)
    client.ft = ft(40001)
    wire = msg.encode(long_term_key("bob", "other", "pw-bob"))
    (out,) = server.handle_client(ft(40001), wire, 0.0)
    assert isinstance(out, ToClient) and code(Message.decode(out.data)) in (401, 438)


def test_integrity_tampering_is_401() -> None:
    server = make_server()
    client = Client(server)
    client.allocate()
    client2 = Client(server, ft(40002))
    client2.nonce = None
    client2.request(Method.REFRESH)  # any request: fetch a nonce for this 5-tuple
    wire = bytearray(client2.build(Method.ALLOCATE, [(AttrType.REQUESTED_TRANSPORT, 17)]))
    wire[-1] ^= 1  # flip a bit of the HMAC
    (out,) = server.handle_client(client2.ft, bytes(wire), 0.0)
    assert isinstance(out, ToClient) and code(Message.decode(out.data)) == 401


def test_missing_username_with_integrity_is_400() -> None:
    server = make_server()
    msg = Message.request(Method.ALLOCATE, tid(), [(AttrType.REQUESTED_TRANSPORT, 17)])
    msg.add(AttrType.REALM, REALM).add(AttrType.NONCE, "obMatJos2xyz")
    (out,) = server.handle_client(ft(), msg.encode(b"key"), 0.0)
    assert isinstance(out, ToClient) and code(Message.decode(out.data)) == 400


def test_stale_nonce_is_438_and_a_new_nonce_works() -> None:
    server = make_server(nonce_lifetime=600.0)
    client = Client(server)
    assert ok(client.allocate(now=0.0))
    old = client.nonce
    # Well within the nonce lifetime: no new round trip needed.
    response = client.request(Method.REFRESH, [(AttrType.LIFETIME, 600)], now=500.0)
    assert ok(response)
    # Past it: 438 with a fresh nonce, which the client retries with.
    client.feed(client.build(Method.REFRESH, [(AttrType.LIFETIME, 600)]), 1000.0)
    (stale,) = client.responses()
    assert code(stale) == 438 and stale.nonce != old and stale.realm == REALM
    assert server.counters.stale_nonces == 1
    assert ok(client.request(Method.REFRESH, [(AttrType.LIFETIME, 600)], now=1000.0))


def test_nonce_is_bound_to_the_5tuple() -> None:
    server = make_server()
    a = Client(server, ft(40000))
    assert ok(a.allocate())
    b = Client(server, ft(40001))
    b.nonce = a.nonce  # replayed from another 5-tuple
    b.feed(b.build(Method.ALLOCATE, [(AttrType.REQUESTED_TRANSPORT, 17)]), 0.0)
    assert code(b.responses()[0]) == 438


def test_sha256_password_algorithm_and_integrity() -> None:
    server = make_server()
    client = Client(server, sha256=True)
    response = client.allocate()
    assert ok(response)
    assert response.message_integrity_sha256 is not None and response.message_integrity is None
    assert response.check_integrity(client.key)


def test_password_algorithms_mismatch_is_400() -> None:
    server = make_server()
    client = Client(server)
    client.allocate()
    msg = Message.request(Method.REFRESH, tid())
    msg.add(AttrType.USERNAME, "alice").add(AttrType.REALM, REALM).add(AttrType.NONCE, client.nonce)
    msg.add(AttrType.PASSWORD_ALGORITHMS, (PasswordAlgorithmValue(PasswordAlgorithm.MD5),))
    msg.add(AttrType.PASSWORD_ALGORITHM, PasswordAlgorithmValue(PasswordAlgorithm.MD5))
    client.feed(msg.encode(client.key), 0.0)
    assert code(client.responses()[0]) == 400


def test_rest_api_credentials() -> None:
    server = make_server()
    cred = make_rest_credential(AUTH_SECRET, "node1", WALL, 3600)
    client = Client(server, ft(40010), cred.username, cred.password)
    assert ok(client.allocate(now=0.0))
    # After the credential's expiry the same user is refused.
    later = Client(server, ft(40011), cred.username, cred.password)
    assert code(later.allocate(now=3601.0)) == 401
    bad = Client(server, ft(40012), cred.username, "not-the-hmac")
    assert code(bad.allocate()) == 401


# -- Allocate errors -------------------------------------------------------------------------------


def test_second_allocate_is_437_but_a_retransmission_is_answered_again() -> None:
    server = make_server()
    client = Client(server)
    t = tid()
    first = client.request(Method.ALLOCATE, [(AttrType.REQUESTED_TRANSPORT, 17)], t=t)
    assert ok(first)
    again = client.request(Method.ALLOCATE, [(AttrType.REQUESTED_TRANSPORT, 17)], t=t)
    assert ok(again) and again.xor_relayed_address == first.xor_relayed_address
    assert code(client.allocate()) == 437
    assert server.state_size()["allocations"] == 1


def test_requested_transport_rules() -> None:
    server = make_server()
    assert code(Client(server, ft(1)).request(Method.ALLOCATE, [])) == 400
    tcp = Client(server, ft(2)).request(Method.ALLOCATE, [(AttrType.REQUESTED_TRANSPORT, 6)])
    assert code(tcp) == 442


def test_address_families() -> None:
    server = make_server()
    v6 = Client(server, ft(1)).allocate(extra=[(AttrType.REQUESTED_ADDRESS_FAMILY, 2)])
    assert code(v6) == 440
    bad = Client(server, ft(2)).allocate(extra=[(AttrType.REQUESTED_ADDRESS_FAMILY, 9)])
    assert code(bad) == 440
    dual = Client(server, ft(3)).allocate(extra=[(AttrType.ADDITIONAL_ADDRESS_FAMILY, 2)])
    assert ok(dual) and dual.address_error_code is not None
    assert dual.address_error_code.code == 440
    assert dual.address_error_code.family == AddressFamily.IPV6
    both = Client(server, ft(4)).allocate(
        extra=[(AttrType.REQUESTED_ADDRESS_FAMILY, 1), (AttrType.ADDITIONAL_ADDRESS_FAMILY, 2)]
    )
    assert code(both) == 400


def test_even_port_and_reservations() -> None:
    server = make_server()
    for i in range(10):
        response = Client(server, ft(100 + i)).allocate(extra=[(AttrType.EVEN_PORT, False)])
        relay = response.xor_relayed_address
        assert relay is not None and relay[1] % 2 == 0
    reserve = Client(server, ft(1)).allocate(extra=[(AttrType.EVEN_PORT, True)])
    assert code(reserve) == 508
    token = Client(server, ft(2)).allocate(extra=[(AttrType.RESERVATION_TOKEN, b"12345678")])
    assert code(token) == 508


def test_user_quota_486_and_released_on_delete() -> None:
    server = make_server(user_quota=2)
    clients = [Client(server, ft(1000 + i)) for i in range(3)]
    assert ok(clients[0].allocate()) and ok(clients[1].allocate())
    assert code(clients[2].allocate()) == 486
    # Another user is not affected.
    assert ok(Client(server, ft(2000), "bob", "pw-bob").allocate())
    assert ok(clients[0].request(Method.REFRESH, [(AttrType.LIFETIME, 0)]))
    assert ok(clients[2].allocate())


def test_rest_users_share_a_quota_by_name() -> None:
    server = make_server(user_quota=1)
    c1 = make_rest_credential(AUTH_SECRET, "node1", WALL, 100)
    c2 = make_rest_credential(AUTH_SECRET, "node1", WALL, 200)
    assert ok(Client(server, ft(1), c1.username, c1.password).allocate())
    assert code(Client(server, ft(2), c2.username, c2.password).allocate()) == 486


def test_port_range_exhausted_is_508() -> None:
    server = make_server(relay_ports=(50000, 50001), user_quota=10)
    assert ok(Client(server, ft(1)).allocate())
    assert ok(Client(server, ft(2)).allocate())
    assert code(Client(server, ft(3)).allocate()) == 508
    assert server.state_size()["allocations"] == 2


def test_relay_bind_failure_retries_then_508() -> None:
    server = make_server(limits=ServerLimits(max_bind_attempts=3))
    client = Client(server)
    client.bind_ok = False
    response = client.allocate()
    assert code(response) == 508
    assert response.check_integrity(client.key)
    opens = [o for o in client.outputs if isinstance(o, OpenRelay)]
    assert len(opens) == 3 and len({o.relay for o in opens}) == 3
    assert server.counters.relay_bind_failures == 3
    assert server.state_size() == dict.fromkeys(server.state_size(), 0)


def test_late_relay_report_for_a_gone_allocation_closes_the_socket() -> None:
    server = make_server()
    assert server.relay_opened((RELAY, 50123), True, 0.0) == [CloseRelay((RELAY, 50123))]
    assert server.relay_opened((RELAY, 50123), False, 0.0) == []


# -- Refresh ---------------------------------------------------------------------------------------


def test_refresh_lifetimes_and_delete() -> None:
    server, client, _ = allocated(max_lifetime=3600)
    assert client.request(Method.REFRESH, [(AttrType.LIFETIME, 99999)]).lifetime == 3600
    assert client.request(Method.REFRESH, [(AttrType.LIFETIME, 30)]).lifetime == 30
    assert client.request(Method.REFRESH, []).lifetime == DEFAULT_LIFETIME
    relay = server.allocations[client.ft].relay
    response = client.request(Method.REFRESH, [(AttrType.LIFETIME, 0)])
    assert ok(response) and response.lifetime == 0
    assert CloseRelay(relay) in client.outputs
    assert client.ft not in server.allocations
    assert code(client.request(Method.REFRESH, [])) == 437


def test_refresh_by_another_user_is_441() -> None:
    server, client, _ = allocated()
    other = Client(server, client.ft, "bob", "pw-bob")
    assert code(other.request(Method.REFRESH, [])) == 441
    assert code(other.request(Method.CREATE_PERMISSION, [(AttrType.XOR_PEER_ADDRESS, PEER)])) == 441


def test_refresh_family_mismatch_is_443() -> None:
    _, client, _ = allocated()
    assert code(client.request(Method.REFRESH, [(AttrType.REQUESTED_ADDRESS_FAMILY, 2)])) == 443


def test_requests_without_allocation_are_437() -> None:
    server = make_server()
    client = Client(server)
    assert (
        code(client.request(Method.CREATE_PERMISSION, [(AttrType.XOR_PEER_ADDRESS, PEER)])) == 437
    )
    bind = [(AttrType.CHANNEL_NUMBER, 0x4000), (AttrType.XOR_PEER_ADDRESS, PEER)]
    assert code(client.request(Method.CHANNEL_BIND, bind)) == 437


# -- permissions, policy, relaying --------------------------------------------------------------

FORBIDDEN = [
    "127.0.0.1",
    "10.1.2.3",
    "172.16.0.1",
    "192.168.1.1",
    "100.64.0.1",
    "169.254.1.1",
    "224.0.0.1",
    "239.255.255.250",
    "0.0.0.0",
    "255.255.255.255",
    RELAY,
    "203.0.113.11",
]


@pytest.mark.parametrize("host", FORBIDDEN)
def test_forbidden_peers_get_403(host: str) -> None:
    server, client, _ = allocated()
    response = client.request(Method.CREATE_PERMISSION, [(AttrType.XOR_PEER_ADDRESS, (host, 5))])
    assert code(response) == 403
    bind = [(AttrType.CHANNEL_NUMBER, 0x4001), (AttrType.XOR_PEER_ADDRESS, (host, 5))]
    assert code(client.request(Method.CHANNEL_BIND, bind)) == 403
    assert server.state_size()["permissions"] == 0
    assert server.counters.forbidden_peers == 2


def test_one_forbidden_peer_fails_the_whole_create_permission() -> None:
    server, client, _ = allocated()
    attrs = [(AttrType.XOR_PEER_ADDRESS, PEER), (AttrType.XOR_PEER_ADDRESS, ("10.0.0.1", 1))]
    assert code(client.request(Method.CREATE_PERMISSION, attrs)) == 403
    assert server.state_size()["permissions"] == 0


def test_ipv6_peer_on_ipv4_relay_is_443() -> None:
    _, client, _ = allocated()
    v6 = [(AttrType.XOR_PEER_ADDRESS, ("2001:db8::1", 5))]
    assert code(client.request(Method.CREATE_PERMISSION, v6)) == 443


def test_allow_peers_opens_a_denied_range() -> None:
    _server, client, _ = allocated(allow_peers=(ipaddress.ip_network("10.0.0.0/8"),))
    attrs = [(AttrType.XOR_PEER_ADDRESS, ("10.0.1.2", 7))]
    assert ok(client.request(Method.CREATE_PERMISSION, attrs))
    assert (
        code(
            client.request(
                Method.CREATE_PERMISSION, [(AttrType.XOR_PEER_ADDRESS, ("192.168.0.1", 7))]
            )
        )
        == 403
    )


def test_peer_policy_matrix() -> None:
    policy = PeerPolicy.build([ipaddress.ip_network("10.9.0.0/16")], ["203.0.113.10", "0.0.0.0"])
    allowed = [
        "8.8.8.8",
        "1.1.1.1",
        "2606:4700::1111",
        "10.9.1.1",
        "::ffff:8.8.8.8",
        "64:ff9b::808:808",
        "2002:808:808::1",
    ]
    denied = [
        "192.0.2.1",
        "198.51.100.7",
        "2001:db8::1",
        "192.0.0.9",
        "198.18.0.1",
        "192.88.99.1",
        "64:ff9b:1::808:808",
        "2002:7f00:1::1",
        "2002:a00:1::1",
        "::ffff:0:7f00:1",
        "fec0::1",
        "2001::1",
        "100::1",
        "3fff::1",
        "::1",
        "::",
        "fc00::1",
        "fd12::1",
        "fe80::1",
        "ff02::1",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "64:ff9b::a00:1",
        "203.0.113.10",
        "not-an-ip",
        "10.8.0.1",
    ]
    assert all(policy.allowed(h) for h in allowed)
    assert not any(policy.allowed(h) for h in denied)


def test_send_indication_needs_a_permission() -> None:
    server, client, response = allocated()
    relay = response.xor_relayed_address
    assert relay is not None
    assert client.feed(send_indication(PEER, b"hello"), 1.0) == []
    assert server.counters.dropped_no_permission == 1
    assert ok(client.request(Method.CREATE_PERMISSION, [(AttrType.XOR_PEER_ADDRESS, PEER)], 1.0))
    # The permission is per IP: any port of the peer.
    (out,) = client.feed(send_indication(("192.0.2.50", 1234), b"hello"), 2.0)
    assert out == ToPeer(relay, ("192.0.2.50", 1234), b"hello")


def test_send_indication_drops() -> None:
    server, client, _ = allocated()
    stranger = Client(server, ft(5))
    assert stranger.feed(send_indication(PEER, b"x"), 0.0) == []
    assert server.counters.dropped_no_allocation == 1
    no_data = Message.indication(Method.SEND, tid(), [(AttrType.XOR_PEER_ADDRESS, PEER)]).encode()
    assert client.feed(no_data, 0.0) == []
    unknown = Message.indication(
        Method.SEND,
        tid(),
        [(AttrType.XOR_PEER_ADDRESS, PEER), (AttrType.DATA, b"x"), (0x7777, b"")],
    ).encode()
    assert client.feed(unknown, 0.0) == []
    wrong_method = Message.indication(Method.DATA, tid(), []).encode()
    assert client.feed(wrong_method, 0.0) == []
    assert server.counters.dropped_indications == 3


def test_peer_data_is_dropped_without_permission_and_relayed_with_one() -> None:
    server, client, response = allocated()
    relay = response.xor_relayed_address
    assert relay is not None
    assert server.handle_peer_data(relay, PEER, b"spam", 1.0) is None
    assert server.counters.dropped_no_permission == 1
    assert server.handle_peer_data((RELAY, 1), PEER, b"spam", 1.0) is None
    assert server.counters.dropped_no_allocation == 1
    client.request(Method.CREATE_PERMISSION, [(AttrType.XOR_PEER_ADDRESS, PEER)], 1.0)
    out = server.handle_peer_data(relay, PEER, b"data!", 2.0)
    assert out is not None and out.five_tuple == client.ft
    ind = Message.decode(out.data)
    assert ind.method == Method.DATA and ind.message_class == MessageClass.INDICATION
    assert ind.xor_peer_address == PEER and ind.data == b"data!"
    assert server.counters.relayed_to_client == 1


# -- channels ----------------------------------------------------------------------------------


def bind(client: Client, number: int, peer: Address, now: float = 0.0) -> Message:
    attrs = [(AttrType.CHANNEL_NUMBER, number), (AttrType.XOR_PEER_ADDRESS, peer)]
    return client.request(Method.CHANNEL_BIND, attrs, now)


def test_channel_bind_and_channel_data_both_ways() -> None:
    server, client, response = allocated()
    relay = response.xor_relayed_address
    assert relay is not None
    assert ok(bind(client, 0x4001, PEER))
    # ChannelBind installs the permission too.
    assert server.allocations[client.ft].has_permission(PEER[0], 1.0)
    (out,) = client.feed(b"\x40\x01\x00\x03abc\x00", 1.0)  # padded: accepted
    assert out == ToPeer(relay, PEER, b"abc")
    back = server.handle_peer_data(relay, PEER, b"xyz", 1.0)
    assert back is not None and decode_channel_data(back.data) == (0x4001, b"xyz")
    assert back.data == b"\x40\x01\x00\x03xyz"  # UDP: no padding
    # Another port of the same IP is not the channel's peer: Data indication.
    other = server.handle_peer_data(relay, (PEER[0], 1), b"q", 1.0)
    assert other is not None and Message.decode(other.data).method == Method.DATA


def test_channel_data_is_padded_over_tcp() -> None:
    server = make_server()
    client = Client(server, ft(7, transport=Transport.TCP))
    response = client.allocate()
    relay = response.xor_relayed_address
    assert relay is not None
    assert ok(bind(client, 0x4000, PEER))
    back = server.handle_peer_data(relay, PEER, b"xyz", 1.0)
    assert back is not None and back.data == b"\x40\x00\x00\x03xyz\x00"
    assert server.connection_closed(client.ft, 2.0) == [CloseRelay(relay)]
    assert server.state_size()["allocations"] == 0


def test_channel_bind_rules() -> None:
    _server, client, _ = allocated()
    assert code(bind(client, 0x3FFF, PEER)) == 400
    assert code(bind(client, 0x8000, PEER)) == 400
    assert code(client.request(Method.CHANNEL_BIND, [(AttrType.CHANNEL_NUMBER, 0x4000)])) == 400
    assert ok(bind(client, 0x4000, PEER))
    assert ok(bind(client, 0x4000, PEER, now=100.0))  # refresh
    assert code(bind(client, 0x4000, PEER2)) == 400  # channel taken by another peer
    assert code(bind(client, 0x4002, PEER)) == 400  # peer taken by another channel
    assert ok(bind(client, 0x7FFF, PEER2))  # RFC 5766 range accepted by default


def test_strict_rfc8656_channel_range() -> None:
    server, client, _ = allocated(channel_max=0x4FFF)
    assert code(bind(client, 0x5000, PEER)) == 400
    assert ok(bind(client, 0x4FFF, PEER))
    # ChannelData with a first byte past 0x4F is not ChannelData here.
    assert client.feed(b"\x50\x00\x00\x00", 0.0) == []
    assert server.counters.dropped_not_stun == 1


def test_channel_data_drops() -> None:
    server, client, _ = allocated()
    assert client.feed(b"\x40\x05\x00\x01a", 0.0) == []
    assert server.counters.dropped_unbound_channel == 1
    assert client.feed(b"\x40\x05\x00\x09a", 0.0) == []  # length beyond the datagram
    assert client.feed(b"\x40\x05\x00\x00" + b"\x00" * 8, 0.0) == []  # junk after padding
    assert server.counters.dropped_malformed == 2
    assert Client(server, ft(9)).feed(b"\x40\x05\x00\x00", 0.0) == []
    assert server.counters.dropped_no_allocation == 1


def test_routes_for_batches_follow_the_per_packet_checks() -> None:
    """channel_route and peer_route answer what handle_client and handle_peer_data decide
    for ChannelData, and None wherever those would drop or use a Data indication."""
    server, client, response = allocated()
    relay = response.xor_relayed_address
    assert relay is not None
    assert server.channel_route(client.ft, 0x4001, 0.0) is None  # no channel yet
    assert server.peer_route(relay, PEER, 0.0) is None
    assert ok(bind(client, 0x4001, PEER))
    assert server.channel_route(client.ft, 0x4001, 1.0) == (relay, PEER)
    assert server.peer_route(relay, PEER, 1.0) == (client.ft, 0x4001)
    assert server.channel_route(client.ft, 0x4002, 1.0) is None  # another channel
    assert server.channel_route(ft(9), 0x4001, 1.0) is None  # another client
    assert server.peer_route(relay, (PEER[0], 1), 1.0) is None  # permitted, no channel
    assert server.peer_route((RELAY, 1), PEER, 1.0) is None  # no such relay
    # The permission (300 s) runs out before the channel (600 s): both directions stop.
    t = PERMISSION_LIFETIME + 1.0
    assert server.channel_route(client.ft, 0x4001, t) is None
    assert server.peer_route(relay, PEER, t) is None
    assert client.feed(b"\x40\x01\x00\x01a", t) == []
    assert server.counters.dropped_no_permission == 1
    # A Refresh to 0 deletes the allocation at once.
    assert ok(client.request(Method.REFRESH, [(AttrType.LIFETIME, 0)], 2.0))
    assert server.channel_route(client.ft, 0x4001, 2.0) is None
    assert server.peer_route(relay, PEER, 2.0) is None


def test_peer_route_is_for_udp_clients_only() -> None:
    server = make_server()
    client = Client(server, ft(7, transport=Transport.TCP))
    relay = client.allocate().xor_relayed_address
    assert relay is not None
    assert ok(bind(client, 0x4000, PEER))
    assert server.channel_route(client.ft, 0x4000, 1.0) == (relay, PEER)
    assert server.peer_route(relay, PEER, 1.0) is None  # padded frames on its stream instead


# -- 420 -----------------------------------------------------------------------------------------


def test_unknown_comprehension_required_attribute_is_420_after_auth() -> None:
    server = make_server()
    client = Client(server)
    response = client.allocate(extra=[(0x7777, b"??"), (0x8999, b"optional is fine")])
    assert code(response) == 420
    assert response.unknown_attributes == (0x7777,)
    assert response.check_integrity(client.key)
    assert server.state_size()["allocations"] == 0
    # Without credentials the answer is 401: nothing is learnt, nothing is kept.
    wire = Message.request(Method.ALLOCATE, tid(), [(0x7777, b"")]).encode()
    (out,) = server.handle_client(ft(3), wire, 0.0)
    assert isinstance(out, ToClient) and code(Message.decode(out.data)) == 401


def test_non_turn_methods_are_400() -> None:
    server = make_server()
    for method in (Method.SEND, Method.DATA, 0x00A):
        (out,) = server.handle_client(ft(), Message.request(method, tid()).encode(), 0.0)
        assert isinstance(out, ToClient) and code(Message.decode(out.data)) == 400


# -- malformed input ----------------------------------------------------------------------------


def test_malformed_and_truncated_input() -> None:
    server, client, _ = allocated()
    good = client.build(Method.REFRESH, [])
    for n in (0, 1, 3, 4, 19, 20, len(good) - 1):
        for out in server.handle_client(client.ft, good[:n], 0.0):
            assert isinstance(out, ToClient) and code(Message.decode(out.data)) == 400
    assert server.handle_client(client.ft, b"\xff" * 40, 0.0) == []
    # A sound header with a broken attribute: 400, no state.
    broken = bytearray(Message.request(Method.ALLOCATE, tid(), [(AttrType.LIFETIME, 5)]).encode())
    broken[22:24] = b"\x00\x02"  # LIFETIME length 2, then garbage
    (out,) = server.handle_client(ft(77), bytes(broken), 0.0)
    assert isinstance(out, ToClient) and code(Message.decode(out.data)) == 400
    # A bad FINGERPRINT: dropped.
    fp = bytearray(Message.request(Method.BINDING, tid()).encode(fingerprint=True))
    fp[-1] ^= 0xFF
    assert server.handle_client(ft(78), bytes(fp), 0.0) == []
    assert server.counters.dropped_bad_fingerprint == 1
    # Responses from clients are dropped.
    resp = Message(Method.ALLOCATE, MessageClass.SUCCESS, tid()).encode()
    assert server.handle_client(ft(79), resp, 0.0) == []
    assert server.counters.dropped_responses == 1
    assert server.state_size()["allocations"] == 1


# -- virtual time -------------------------------------------------------------------------------


def test_allocation_expires() -> None:
    server, client, response = allocated()
    relay = response.xor_relayed_address
    assert relay is not None
    assert server.next_wakeup() is not None
    assert server.handle_timeout(DEFAULT_LIFETIME - 1) == []
    assert client.ft in server.allocations
    out = server.handle_timeout(DEFAULT_LIFETIME + 0.5)
    assert out == [CloseRelay(relay)]
    assert server.counters.allocations_expired == 1
    assert server.state_size() == dict.fromkeys(server.state_size(), 0)
    assert server.next_wakeup() is None
    assert code(client.request(Method.REFRESH, [], now=DEFAULT_LIFETIME + 1)) == 437


def test_refresh_keeps_it_alive() -> None:
    server, client, _ = allocated()
    for t in range(500, 3000, 500):
        assert ok(client.request(Method.REFRESH, [], now=float(t)))
        server.handle_timeout(float(t) + 1)
    assert client.ft in server.allocations


def test_permission_expires_after_300s() -> None:
    server, client, response = allocated()
    relay = response.xor_relayed_address
    assert relay is not None
    client.request(Method.CREATE_PERMISSION, [(AttrType.XOR_PEER_ADDRESS, PEER)], 0.0)
    assert server.handle_peer_data(relay, PEER, b"a", PERMISSION_LIFETIME - 1) is not None
    assert server.handle_peer_data(relay, PEER, b"a", PERMISSION_LIFETIME + 1) is None
    assert client.feed(send_indication(PEER, b"x"), PERMISSION_LIFETIME + 1) == []
    server.handle_timeout(PERMISSION_LIFETIME + 1)
    assert server.state_size()["permissions"] == 0
    assert server.counters.permissions_expired == 1


def test_channel_expires_after_600s_even_with_a_fresh_permission() -> None:
    server, client, response = allocated(max_lifetime=3600)
    relay = response.xor_relayed_address
    assert relay is not None
    client.request(Method.REFRESH, [(AttrType.LIFETIME, 3600)], 0.0)
    assert ok(bind(client, 0x4444, PEER, 0.0))
    t = CHANNEL_LIFETIME + 1.0
    client.request(Method.CREATE_PERMISSION, [(AttrType.XOR_PEER_ADDRESS, PEER)], t - 2)
    out = server.handle_peer_data(relay, PEER, b"a", t)
    assert out is not None and Message.decode(out.data).method == Method.DATA  # no channel
    assert client.feed(b"\x44\x44\x00\x01a", t) == []
    server.handle_timeout(t)
    assert server.state_size()["channels"] == 0
    # The channel number is free again.
    assert ok(bind(client, 0x4444, PEER2, t))


def test_pending_allocation_times_out() -> None:
    server = make_server()
    client = Client(server)
    client.request(Method.REFRESH)  # 437, but the client has its nonce now
    wire = client.build(Method.ALLOCATE, [(AttrType.REQUESTED_TRANSPORT, 17)])
    out = server.handle_client(client.ft, wire, 0.0)  # no relay_opened answer
    assert isinstance(out[0], OpenRelay)
    assert server.state_size()["pending"] == 1
    assert server.handle_timeout(31.0) == [CloseRelay(out[0].relay)]
    assert server.state_size() == dict.fromkeys(server.state_size(), 0)


def test_nonce_issuer() -> None:
    issuer = NonceIssuer(b"s" * 16, lifetime=10)
    nonce = issuer.issue(100.0, "a")
    assert issuer.valid(nonce, 100.0, "a") and issuer.valid(nonce, 109.9, "a")
    assert not issuer.valid(nonce, 110.0, "a")
    assert not issuer.valid(nonce, 99.0, "a")
    assert not issuer.valid(nonce, 100.0, "b")
    assert not issuer.valid(nonce[:-1] + ("A" if nonce[-1] != "A" else "B"), 100.0, "a")
    assert not issuer.valid("obMatJos2AAAAzz.x", 100.0, "a")
    assert not issuer.valid("", 100.0, "a")
    with pytest.raises(ValueError):
        NonceIssuer(b"short")
