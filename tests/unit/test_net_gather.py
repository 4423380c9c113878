"""Candidate gathering over the shared socket, on loopback against our embedded STUN/TURN
server: host preferences, srflx by transaction, relays over UDP and TCP (priorities,
foundations, reuse), credentials, bounded failures."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import AsyncIterator, Sequence

import pytest
import trio

from p2ptun.config import IceConfig, StunServerSettings, TurnServerConfig, TurnServerSettings
from p2ptun.ice.candidate import Candidate, CandidateType
from p2ptun.net.gather import Gatherer, GatherOptions
from p2ptun.net.turn_shared import UdpMux
from p2ptun.net.udp import UdpEndpoint
from p2ptun.rendezvous.stun_turn import StunTurnService

HOST = "127.0.0.1"


def free_port() -> int:
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind((HOST, 0))
            port = int(u.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                try:
                    t.bind((HOST, port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free port")


@pytest.fixture
async def server(nursery: trio.Nursery) -> AsyncIterator[int]:
    port = free_port()
    settings = TurnServerSettings(
        realm="lab",
        relay_address=HOST,
        relay_ports=(45000, 45999),
        users={"alice": "pw"},
        allow_peers=(ipaddress.ip_network("127.0.0.0/8"),),
    )
    svc = await StunTurnService.bind(StunServerSettings(((HOST, port),)), settings)
    scope = trio.CancelScope()

    async def run() -> None:
        with scope:
            await svc.serve()

    nursery.start_soon(run)
    yield port
    scope.cancel()


def turn(port: int, transport: str = "udp", user: str | None = "alice") -> TurnServerConfig:
    url = f"turn:localhost:{port}?transport={transport}"
    password = "pw" if user else None
    return TurnServerConfig(url, "localhost", port, transport, user, password)  # type: ignore[arg-type]


async def start(
    nursery: trio.Nursery, options: GatherOptions, hosts: Sequence[str] = (HOST,), **kw: object
) -> Gatherer:
    ep = UdpEndpoint.bind(socket.AF_INET, HOST)
    nursery.start_soon(ep.receive_loop)

    async def lister() -> Sequence[str]:
        return list(hosts)

    gatherer = Gatherer(UdpMux([ep]), options, list_addresses=lister, **kw)  # type: ignore[arg-type]
    await nursery.start(gatherer.run)
    return gatherer


async def test_host_candidates_have_distinct_preferences(nursery: trio.Nursery) -> None:
    g = await start(nursery, GatherOptions(), hosts=["127.0.0.1", "127.0.0.2", "2001:db8::1"])
    seen: list[Candidate] = []
    result = await g.gather(seen.append)
    # No IPv6 socket: the IPv6 address gives no candidate.
    assert [c.host for c in result.candidates] == ["127.0.0.1", "127.0.0.2"]
    assert seen == result.candidates
    port = g.mux.endpoints[0].local_address[1]
    assert {c.port for c in seen} == {port}
    assert all(c.type is CandidateType.HOST for c in seen)
    assert len({c.priority for c in seen}) == 2
    assert len({c.foundation for c in seen}) == 2


async def test_relays_udp_and_tcp_priorities_and_reuse(nursery: trio.Nursery, server: int) -> None:
    options = GatherOptions(stun=(("localhost", server),), turn=(turn(server), turn(server, "tcp")))
    g = await start(nursery, options)
    result = await g.gather()
    assert not result.failures, result.failures
    relays = [c for c in result.candidates if c.type is CandidateType.RELAY]
    assert len(relays) == 2
    udp, tcp = sorted(relays, key=lambda c: -c.priority)
    host = result.candidates[0]
    assert host.priority > udp.priority > tcp.priority
    assert udp.foundation != tcp.foundation
    assert udp.related == (HOST, host.port)  # the mapped address the server saw
    assert {r.transport for r in g.relays} == {"udp", "tcp"}
    # A second round reuses the live allocations.
    again = await g.gather()
    assert sorted(c.address for c in again.candidates if c.type is CandidateType.RELAY) == sorted(
        c.address for c in relays
    )
    assert g.relay_for(udp.address) is not None


async def test_issued_credentials_and_failures(nursery: trio.Nursery, server: int) -> None:
    asked: list[str] = []

    async def credentials(config: TurnServerConfig) -> tuple[str, str] | None:
        asked.append(config.url)
        return ("alice", "pw") if "udp" in config.url else None

    silent = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    await silent.bind((HOST, 0))
    options = GatherOptions(
        stun=(silent.getsockname(), ("no-such-host.invalid", 3478)),
        turn=(turn(server, user=None), turn(server, "tcp", user=None)),
        stun_timeout=0.5,
        turn_timeout=3,
    )
    g = await start(nursery, options, credentials=credentials)
    start_time = trio.current_time()
    result = await g.gather()
    assert trio.current_time() - start_time < 3
    assert len(asked) == 2
    kinds = sorted((f.kind, f.server) for f in result.failures)
    assert [k for k, _ in kinds] == ["stun", "stun", "turn"]
    assert any("no TURN credentials" in f.reason for f in result.failures)
    assert [c.type for c in result.candidates].count(CandidateType.RELAY) == 1
    silent.close()


async def test_gather_needs_run() -> None:
    ep = UdpEndpoint.bind(socket.AF_INET, HOST)
    with pytest.raises(RuntimeError):
        await Gatherer(UdpMux([ep]), GatherOptions()).gather()
    ep.close()


def test_options_from_config() -> None:
    ice = IceConfig(stun=(("192.0.2.1", 3478),), ipv6_link_local=True)
    opts = GatherOptions.from_config(ice, "p2p0")
    assert opts.stun == ice.stun and opts.exclude_interfaces == ("p2p0",)
    assert opts.include_link_local


@pytest.mark.lab
async def test_host_addresses_from_netlink(nursery: trio.Nursery, natlab: object) -> None:
    lab = natlab(["cone"])  # type: ignore[operator]
    ns, ifname = lab.ns_host(1), lab.if_host(1)
    ep = UdpEndpoint.bind(socket.AF_INET, HOST)
    g = Gatherer(UdpMux([ep]), GatherOptions(netns=ns))
    await nursery.start(g.run)
    found = await g.gather()
    assert [c.host for c in found.candidates] == [lab.site(1).host_addr]  # no loopback
    g.options = GatherOptions(netns=ns, exclude_interfaces=(ifname,))
    assert (await g.gather()).candidates == []  # our own (TUN) interface is skipped
    ep.close()
