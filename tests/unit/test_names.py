"""The node's DNS: the sans-I/O answers (p2ptun.names) and the responder shell on loopback
(p2ptun.node.names), with dnspython as the client."""

from __future__ import annotations

import ipaddress

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from p2ptun.config import IPInterface
from p2ptun.names import NameServer
from p2ptun.net.system import SystemHost
from p2ptun.node.names import DnsResponder


def server() -> NameServer:
    s = NameServer("home")
    s.set_records(
        {
            "nas": [ipaddress.ip_address("10.77.0.3"), ipaddress.ip_address("fd00::3")],
            "laptop": [ipaddress.ip_address("10.77.0.2")],
            "bad.name": [ipaddress.ip_address("10.77.0.9")],  # not one label: left out
        }
    )
    return s


def ask(s: NameServer, name: str, rdtype: str = "A", **kw: object) -> dns.message.Message:
    query = dns.message.make_query(name, rdtype, **kw)  # type: ignore[arg-type]
    data = s.answer(query.to_wire())
    assert data is not None
    response = dns.message.from_wire(data)
    assert response.id == query.id and response.flags & dns.flags.QR
    return response


def addresses(response: dns.message.Message) -> list[str]:
    return [r.to_text() for rrset in response.answer for r in rrset]


def test_members_have_a_and_aaaa_records() -> None:
    s = server()
    r = ask(s, "nas.home")
    assert r.rcode() == dns.rcode.NOERROR and r.flags & dns.flags.AA
    assert addresses(r) == ["10.77.0.3"] and r.answer[0].ttl == 30
    assert addresses(ask(s, "NAS.HOME.", "AAAA")) == ["fd00::3"]
    assert sorted(addresses(ask(s, "nas.home", "ANY"))) == ["10.77.0.3", "fd00::3"]
    nodata = ask(s, "laptop.home", "AAAA")  # no IPv6 address: no data, with the SOA
    assert nodata.rcode() == dns.rcode.NOERROR and not nodata.answer and nodata.authority
    assert ask(s, "nas.home", "MX").rcode() == dns.rcode.NOERROR


def test_the_rest_of_the_domain_is_nxdomain_and_everything_else_refused() -> None:
    s = server()
    for name in ("tv.home", "x.nas.home", "bad.name.home"):
        r = ask(s, name)
        assert r.rcode() == dns.rcode.NXDOMAIN, name
        assert r.authority and r.authority[0].rdtype == dns.rdatatype.SOA
    for name in ("example.com", "home.arpa", "nas.homes"):
        r = ask(s, name)
        assert r.rcode() == dns.rcode.REFUSED and not r.answer, name
    apex = ask(s, "home", "SOA")
    assert apex.rcode() == dns.rcode.NOERROR and apex.answer[0].rdtype == dns.rdatatype.SOA
    assert s.names == ["laptop", "nas"]


def test_edns_queries_get_edns_answers_and_responses_are_not_answered() -> None:
    s = server()
    r = ask(s, "nas.home", use_edns=0, payload=1232)
    assert r.edns == 0
    response = dns.message.make_response(dns.message.make_query("nas.home", "A"))
    assert s.answer(response.to_wire()) is None


def test_malformed_queries_are_formerr_or_dropped() -> None:
    s = server()
    query = dns.message.make_query("nas.home", "A").to_wire()
    formerr = s.answer(query[:-3])
    assert formerr is not None
    assert dns.message.from_wire(formerr).rcode() == dns.rcode.FORMERR
    assert s.answer(b"\x00" * 5) is None


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_any_bytes_are_answered_or_dropped_never_raise(data: bytes) -> None:
    server().answer(data)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_mutated_queries_never_raise(data: st.DataObject) -> None:
    query = bytearray(dns.message.make_query("nas.home", "AAAA", use_edns=0).to_wire())
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(query) - 1))
        query[i] = data.draw(st.integers(0, 255))
    server().answer(bytes(query))


async def test_the_responder_answers_on_its_address() -> None:
    """The shell on loopback (port 0, so no registration with the system resolver)."""
    address: IPInterface = ipaddress.ip_interface("127.0.0.1/8")
    responder = DnsResponder(SystemHost(), "lo", [address], "home", port=0)
    responder.update({"nas": [ipaddress.ip_address("10.77.0.3")]})
    async with trio.open_nursery() as nursery:
        await nursery.start(responder.run)
        assert responder.ports and not responder.registered
        target = responder.ports[0].local_address
        sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
        with sock:
            query = dns.message.make_query("nas.home", "A")
            await sock.sendto(query.to_wire(), target)
            with trio.fail_after(5):
                data, _ = await sock.recvfrom(4096)
        answer = dns.message.from_wire(data)
        assert addresses(answer) == ["10.77.0.3"]
        nursery.cancel_scope.cancel()
    assert not responder.ports


@pytest.mark.parametrize("running", [False])
def test_registration_is_skipped_without_resolved(
    running: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    from p2ptun.net import system

    monkeypatch.setattr(system, "resolved_running", lambda: running)
    assert trio.run(SystemHost().register_dns, "p2p0", ["10.77.0.1"], "home") is False


def test_registration_uses_resolvectl_per_link(monkeypatch: pytest.MonkeyPatch) -> None:
    from p2ptun.net import system

    calls: list[list[str]] = []

    async def fake(args: list[str]) -> bool:
        calls.append(args)
        return True

    monkeypatch.setattr(system, "resolved_running", lambda: True)
    monkeypatch.setattr(system, "_resolvectl", fake)
    host = SystemHost()
    assert trio.run(host.register_dns, "p2p0", ["10.77.0.1"], "home") is True
    trio.run(host.unregister_dns, "p2p0")
    assert calls == [
        ["dns", "p2p0", "10.77.0.1"],
        ["domain", "p2p0", "~home"],
        ["default-route", "p2p0", "false"],
        ["revert", "p2p0"],
    ]
