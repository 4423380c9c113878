"""``p2ptun netcheck`` and the rendezvous' RFC 5780 server (``[stun] alternate``).

The server's answers (p2ptun/stun/behavior.py) against RFC 5780 §6-§7, fuzzed; the verdict
rules of §4.3/§4.4; and the whole probe against the real rendezvous on the in-memory network
under virtual time, behind every NAT behaviour the network simulates — the result must name
the behaviour the simulated NAT was given. The NAT lab's real nftables NATs, cross-checked
with coturn's turnutils_natdiscovery, are ``tests/e2e/test_observe.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from p2plab.memnet import MemoryHost, MemoryNetwork
from p2plab.natmodel import Filtering, Mapping, NatBehaviour
from p2ptun.config import RendezvousConfig, StunServerSettings, TurnServerConfig
from p2ptun.net.netcheck import netcheck, render
from p2ptun.rendezvous.server import run_rendezvous
from p2ptun.stun import AttrType, Message, Method
from p2ptun.stun.behavior import (
    CHANGE_REQUEST,
    Behaviour,
    ServerAddresses,
    behavior_response,
    binding_request,
    change_request,
    filtering_behaviour,
    mapping_behaviour,
    other_address,
    response_origin,
    verdict,
)

A1, A2 = "203.0.113.10", "203.0.113.11"
SERVER = ServerAddresses((A1, 3478), (A2, 3479))
CLIENT = ("198.51.100.7", 40000)


def ask(local: tuple[str, int], *, change_ip: bool = False, change_port: bool = False) -> Message:
    request = binding_request(bytes, change_ip=change_ip, change_port=change_port)
    out = behavior_response(request.encode(), CLIENT, local, SERVER)
    assert out is not None
    data, origin = out
    response = Message.decode(data)
    assert response.check_fingerprint()
    assert response_origin(response) == origin
    return response


@pytest.mark.parametrize("local", SERVER.all())
@pytest.mark.parametrize(
    ("ip", "port"), [(False, False), (True, False), (False, True), (True, True)]
)
def test_the_server_answers_from_the_address_change_request_names(
    local: tuple[str, int], ip: bool, port: bool
) -> None:
    response = ask(local, change_ip=ip, change_port=port)
    assert response.xor_mapped_address == CLIENT
    origin = response_origin(response)
    assert origin is not None
    assert (origin[0] != local[0]) == ip and (origin[1] != local[1]) == port
    # OTHER-ADDRESS differs from the address asked in both IP and port (RFC 5780 §7.4).
    other = other_address(response)
    assert other is not None and other[0] != local[0] and other[1] != local[1]


def test_the_server_refuses_what_it_cannot_do() -> None:
    request = Message.request(Method.BINDING, b"x" * 12).add(CHANGE_REQUEST, b"\x00\x00\x06")
    data, origin = behavior_response(request.encode(), CLIENT, SERVER.primary, SERVER) or (
        b"",
        None,
    )
    assert Message.decode(data).error_code.code == 400 and origin == SERVER.primary  # type: ignore[union-attr]
    request = Message.request(Method.BINDING, b"y" * 12).add(0x0027, b"\x00\x01\x00\x00")
    data, _ = behavior_response(request.encode(), CLIENT, SERVER.primary, SERVER) or (b"", None)
    response = Message.decode(data)
    assert response.error_code.code == 420  # type: ignore[union-attr]  # RESPONSE-PORT: not done
    assert response.get(AttrType.UNKNOWN_ATTRIBUTES) == (0x0027,)
    indication = Message.indication(Method.BINDING, b"z" * 12)
    assert behavior_response(indication.encode(), CLIENT, SERVER.primary, SERVER) is None
    assert behavior_response(b"\x00\x01garbage", CLIENT, SERVER.primary, SERVER) is None


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=200), st.sampled_from(SERVER.all()))
def test_the_server_never_raises_and_answers_only_from_its_addresses(
    data: bytes, local: tuple[str, int]
) -> None:
    out = behavior_response(data, CLIENT, local, SERVER)
    if out is not None:
        assert out[1] in SERVER.all()


@given(st.booleans(), st.booleans())
def test_change_request_round_trips(ip: bool, port: bool) -> None:
    msg = Message.request(Method.BINDING, b"t" * 12).add(CHANGE_REQUEST, change_request(ip, port))
    decoded = Message.decode(msg.encode())
    response = behavior_response(decoded.encode(), CLIENT, SERVER.primary, SERVER)
    assert response is not None
    assert response[1] == SERVER.moved(SERVER.primary, ip, port)


def test_the_verdict_rules_of_rfc_5780() -> None:
    x, y, z = ("198.51.100.1", 1), ("198.51.100.1", 2), ("198.51.100.1", 3)
    local = ("10.0.0.2", 5000)
    assert mapping_behaviour(local, local, None, None) is Behaviour.NO_NAT
    assert mapping_behaviour(local, x, x, None) is Behaviour.ENDPOINT_INDEPENDENT
    assert mapping_behaviour(local, x, y, y) is Behaviour.ADDRESS_DEPENDENT
    assert mapping_behaviour(local, x, y, z) is Behaviour.ADDRESS_AND_PORT_DEPENDENT
    assert mapping_behaviour(local, None, None, None) is Behaviour.UNKNOWN
    assert filtering_behaviour(True, True, True) is Behaviour.ENDPOINT_INDEPENDENT
    assert filtering_behaviour(True, False, True) is Behaviour.ADDRESS_DEPENDENT
    assert filtering_behaviour(True, False, False) is Behaviour.ADDRESS_AND_PORT_DEPENDENT
    assert "UDP blocked" in verdict(False, Behaviour.UNKNOWN, Behaviour.UNKNOWN, True)
    assert verdict(
        True, Behaviour.ENDPOINT_INDEPENDENT, Behaviour.ADDRESS_AND_PORT_DEPENDENT, None
    ).startswith("easy NAT: direct with most peers")
    assert verdict(
        True, Behaviour.ADDRESS_AND_PORT_DEPENDENT, Behaviour.ADDRESS_AND_PORT_DEPENDENT, None
    ).startswith("hard NAT")


def rendezvous_config() -> RendezvousConfig:
    return RendezvousConfig(
        path="<rv>",
        listen=(A1, 7070),
        private_key=b"\x01" * 32,
        database=":memory:",
        open_registration=False,
        stun=StunServerSettings(((A1, 3478),), alternate=(A2, 3479)),
        turn=None,
        nodes=(),
    )


NATS = {
    "public": None,
    "full-cone": NatBehaviour(Mapping.EIM, Filtering.EIF),
    "restricted-cone": NatBehaviour(Mapping.EIM, Filtering.ADF),
    "port-restricted": NatBehaviour(Mapping.EIM, Filtering.APDF),
    "address-dependent-mapping": NatBehaviour(Mapping.ADM, Filtering.ADF),
    "symmetric": NatBehaviour(Mapping.APDM, Filtering.APDF),
}


@pytest.mark.parametrize("nat", NATS)
async def test_netcheck_names_the_behaviour_of_each_simulated_nat(
    autojump_clock: trio.testing.MockClock, nat: str
) -> None:
    net = MemoryNetwork(seed=1)
    server = net.public_host("rendezvous", A1)
    server.add_address(A2)
    behaviour = NATS[nat]
    client: MemoryHost
    if behaviour is None:
        client = net.public_host("client", "192.0.2.20")
    else:
        client = net.site("home", behaviour, "198.51.100.20", "10.0.1.0/24").host("client")
    turn = (
        TurnServerConfig(f"turn:{A1}:3478?transport=udp", A1, 3478, "udp"),
        TurnServerConfig(f"turn:{A1}:3478?transport=tcp", A1, 3478, "tcp"),
        TurnServerConfig(f"turn:{A1}:3999?transport=tcp", A1, 3999, "tcp"),
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(net.run)
        await nursery.start(run_rendezvous, rendezvous_config(), server)
        start = trio.current_time()
        report = await netcheck(client, [(A1, 3478)], turn)
        took = trio.current_time() - start
        nursery.cancel_scope.cancel()
    print(render(report))
    assert report["udp"] is True
    assert report["other_address"] == f"{A2}:3479"
    if behaviour is None:
        assert (report["mapping"], report["filtering"]) == ("no-nat", "no-nat")
        assert report["hairpinning"] is None  # nothing to hairpin through
        assert report["verdict"].startswith("no NAT")
    else:
        assert report["mapping"] == behaviour.mapping.value
        assert report["filtering"] == behaviour.filtering.value
        easy = behaviour.mapping is Mapping.EIM
        assert report["verdict"].startswith("easy NAT" if easy else "hard NAT")
        # The simulated routers hairpin, and filter the hairpinned datagram like any other
        # (it comes from the NAT's own address, which the mapping never sent to).
        assert report["hairpinning"] is (behaviour.filtering is Filtering.EIF)
    assert [t["reachable"] for t in report["turn"]] == [True, True, False]
    assert report["turn"][0]["rtt_ms"] > 0  # (memnet connects TCP without delay)
    assert report["turn"][1]["rtt_ms"] is not None
    assert report["port_mapping"]["checked"] is False
    assert took < 10  # the unanswered probes give up after about two seconds


async def test_udp_blocked_is_a_verdict_not_an_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = MemoryNetwork(seed=1)
    server = net.public_host("rendezvous", A1)
    server.add_address(A2)
    client = net.site("home", "prc", "198.51.100.20", "10.0.1.0/24").host("client")
    net.blocked = lambda src, dst: True  # no datagram crosses the internet
    async with trio.open_nursery() as nursery:
        await nursery.start(net.run)
        await nursery.start(run_rendezvous, rendezvous_config(), server)
        report = await netcheck(
            client,
            [(A1, 3478)],
            (TurnServerConfig(f"turn:{A1}:3478?transport=tcp", A1, 3478, "tcp"),),
        )
        nursery.cancel_scope.cancel()
    assert report["udp"] is False
    assert report["turn"][0]["reachable"] is True
    assert report["verdict"] == (
        "UDP blocked: relayed with every peer (TURN over TCP/TLS reachable)"
    )


async def test_turn_over_tls_is_reached_with_its_certificate_checked(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """Our TURN server's TLS listener on loopback: reachable with the right CA, and refused
    (with the reason) when the certificate does not verify."""
    from loopback_turn import HOST, free_port, serve_turn
    from test_net_turn_relay import _certificates

    from p2ptun.net.netcheck import turn_reachability
    from p2ptun.net.system import SystemHost

    ca, cert, key = _certificates(tmp_path)
    port = free_port()
    await serve_turn(nursery, tls=(port, str(cert), str(key)))
    url = f"turns:{HOST}:{port}"
    good = await turn_reachability(
        SystemHost(), TurnServerConfig(url, HOST, port, "tls", ca_file=str(ca))
    )
    assert good["reachable"] is True and good["rtt_ms"] > 0, good
    bad = await turn_reachability(SystemHost(), TurnServerConfig(url, HOST, port, "tls"))
    assert bad["reachable"] is False and "TLS handshake" in bad["error"], bad


async def test_ipv6_is_reported_with_its_mapped_address(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A dual-stack host and a STUN server whose name has an IPv6 address too: the behaviour
    tests run over IPv4, and a Binding over IPv6 is answered."""
    net = MemoryNetwork(seed=1)
    server = net.public_host("rendezvous", A1)
    server.add_address(A2)
    server.add_address("2001:db8::10")
    net.names["rv.example.net"] = [A1, "2001:db8::10"]
    client = net.public_host("client", "192.0.2.20")
    client.add_address("2001:db8::20")
    cfg = rendezvous_config()
    assert cfg.stun is not None
    stun = StunServerSettings(((A1, 3478), ("2001:db8::10", 3478)), alternate=(A2, 3479))
    cfg = RendezvousConfig(**{**cfg.__dict__, "stun": stun})
    async with trio.open_nursery() as nursery:
        await nursery.start(net.run)
        await nursery.start(run_rendezvous, cfg, server)
        report = await netcheck(client, [("rv.example.net", 3478)])
        nursery.cancel_scope.cancel()
    assert report["server"] == f"{A1}:3478" and report["mapping"] == "no-nat"
    assert report["ipv6"]["addresses"] == ["2001:db8::20"]
    assert report["ipv6"]["udp"] is True
    assert report["ipv6"]["mapped"].startswith("[2001:db8::20]:")
    assert "IPv6:         2001:db8::20; UDP yes (mapped [2001:db8::20]:" in render(report)


async def test_a_stun_server_that_does_not_resolve_is_said_so(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = MemoryNetwork(seed=1)
    client = net.public_host("client", "192.0.2.20")
    async with trio.open_nursery() as nursery:
        await nursery.start(net.run)
        report = await netcheck(client, [("nowhere.example.net", 3478)])
        nursery.cancel_scope.cancel()
    assert report["verdict"].startswith("unknown: no STUN server")
    assert "error:" in render(report)


def test_the_rfc_5780_sockets_answer_a_flood_from_one_source_only_within_its_budget() -> None:
    """A spoofed source may make the server answer from its other addresses: a budget per
    source bounds what a flood reflects at one victim (like the TURN server's unauthenticated
    answers), and the table of sources is bounded too."""
    from p2ptun.addr import SourceBudget
    from p2ptun.rendezvous.behavior import ANSWER_BURST, ANSWER_RATE, BehaviorServer

    sent: list[tuple[bytes, tuple[str, int]]] = []

    class Port:
        def send(self, data: bytes, addr: tuple[str, int], source: str | None = None) -> bool:
            sent.append((data, addr))
            return True

    ports = {a: Port() for a in SERVER.all()}
    server = BehaviorServer(SERVER, ports, SourceBudget(ANSWER_RATE, ANSWER_BURST, 64))  # type: ignore[arg-type]
    victim = ("192.0.2.99", 5000)
    request = binding_request(bytes, change_ip=True, change_port=True).encode()
    for i in range(1000):  # in one second
        server.answer(request, victim, SERVER.primary, now=i / 1000)
    assert len(sent) <= ANSWER_BURST + ANSWER_RATE
    assert server.counters.rate_limited == 1000 - len(sent)
    reflected = sum(len(d) for d, _ in sent)
    print(f"FIGURE behaviour flood: {reflected} bytes reflected for {1000 * len(request)} sent")
    assert reflected < 0.1 * 1000 * len(request)
    assert all(b"p2ptun" not in d for d, _ in sent)  # no SOFTWARE in these answers
    # Many sources: each gets its answers, the budget table stays bounded.
    for i in range(500):
        server.answer(request, (f"198.51.100.{i % 250}", 1000 + i), SERVER.primary, now=2.0)
    assert len(server.budget) <= 64
