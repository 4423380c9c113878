"""Candidate gathering over the shared socket, on loopback against our embedded STUN/TURN
server: host preferences, srflx by transaction, relays over UDP and TCP (priorities,
foundations, reuse), credentials, bounded failures."""

from __future__ import annotations

import contextlib
import dataclasses
import socket
from collections.abc import AsyncIterator, Callable, Sequence

import pytest
import trio
from loopback_turn import HOST, free_port, serve_turn

from p2ptun.config import IceConfig, TurnServerConfig
from p2ptun.errors import RuntimeFailure
from p2ptun.ice.candidate import Candidate, CandidateType
from p2ptun.net.dispatch import Dispatcher
from p2ptun.net.gather import Gatherer, GatherOptions, IssuedCredentials, SlotState
from p2ptun.net.mux import UdpMux
from p2ptun.net.system import SystemHost
from p2ptun.net.udp import UdpEndpoint
from p2ptun.turn.client import AllocationState


async def serve(nursery: trio.Nursery, port: int) -> trio.CancelScope:
    return (await serve_turn(nursery, port, relay_ports=(45000, 45999)))[1]


@pytest.fixture
async def server(nursery: trio.Nursery) -> AsyncIterator[int]:
    port, scope = await serve_turn(nursery, relay_ports=(45000, 45999))
    yield port
    scope.cancel()


def turn(port: int, transport: str = "udp", user: str | None = "alice") -> TurnServerConfig:
    url = f"turn:localhost:{port}?transport={transport}"
    password = "pw" if user else None
    return TurnServerConfig(url, "localhost", port, transport, user, password)  # type: ignore[arg-type]


async def start(
    nursery: trio.Nursery,
    options: GatherOptions,
    hosts: Sequence[str] = (HOST,),
    *,
    route_lookup: Callable[[str], str | None] | None = None,
    **kw: object,
) -> Gatherer:
    """A running gatherer on a loopback endpoint; with ``route_lookup`` the endpoint is bound
    to the wildcard address and that function says which local address talks to whom."""
    if route_lookup is None:
        ep = UdpEndpoint.bind(socket.AF_INET, HOST)
        mux = UdpMux([ep])
    else:
        ep = UdpEndpoint.bind(socket.AF_INET)
        mux = UdpMux([ep], route_lookup=route_lookup)
    dispatcher = Dispatcher(stun=mux.on_stun, channel_data=mux.on_channel_data)
    nursery.start_soon(ep.receive_loop, dispatcher)

    async def lister() -> Sequence[str]:
        return list(hosts)

    gatherer = Gatherer(
        mux,
        options,
        host=SystemHost(),
        list_addresses=lister,
        **kw,  # type: ignore[arg-type]
    )
    await nursery.start(gatherer.run)
    return gatherer


async def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    with trio.fail_after(timeout):
        while not condition():
            await trio.sleep(0.01)


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

    async def credentials(config: TurnServerConfig) -> IssuedCredentials | None:
        asked.append(config.url)
        return IssuedCredentials("alice", "pw") if "udp" in config.url else None

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
        await Gatherer(UdpMux([ep]), GatherOptions(), host=SystemHost()).gather()
    ep.close()


def test_options_from_config() -> None:
    turn = TurnServerConfig("turn:192.0.2.1:3478", "192.0.2.1", 3478, "udp", None, None)
    ice = IceConfig(stun=(("192.0.2.1", 3478),), turn=(turn,), ipv6_link_local=True)
    opts = GatherOptions.from_config(ice, "p2p0")
    assert opts.stun == ice.stun and opts.turn == ice.turn
    assert opts.exclude_interfaces == ("p2p0",)
    assert opts.include_link_local
    # The node gives up on STUN sooner and ends its rounds after a few seconds.
    assert opts.stun_timeout < 3 and opts.round_timeout is not None
    # ICE-lite (RFC 8445 §2.5): host candidates only, so nothing to ask STUN/TURN servers.
    lite = GatherOptions.from_config(dataclasses.replace(ice, lite=True))
    assert lite.stun == () and lite.turn == ()
    # Port mapping: on by default, off by config, and off for ICE-lite (a public node).
    assert opts.port_mapping and not lite.port_mapping
    off = GatherOptions.from_config(dataclasses.replace(ice, port_mapping=False))
    assert not off.port_mapping


async def test_failed_relay_is_retried_and_announced(nursery: trio.Nursery) -> None:
    port = free_port()  # nothing listens yet: TCP connections are refused at once
    changes: list[int] = []
    options = GatherOptions(turn=(turn(port, "tcp"),), relay_retry=(0.3,), turn_timeout=2)
    g = await start(nursery, options, on_relays_changed=lambda: changes.append(1))
    first = await g.gather()
    assert [f.kind for f in first.failures] == ["turn"], first.failures
    assert "cannot connect" in first.failures[0].reason
    assert g.relay_status()[0].state is SlotState.WAITING and not changes
    scope = await serve(nursery, port)
    # The retry allocates while no round waits: the caller hears of it (to gather again).
    await wait_for(lambda: bool(changes))
    assert len(g.relays) == 1 and g.relays[0].transport == "tcp"
    second = await g.gather()
    assert not second.failures
    assert [c.type for c in second.candidates] == [CandidateType.HOST, CandidateType.RELAY]
    scope.cancel()  # the connection closes: the allocation is lost, announced, retried
    await wait_for(lambda: len(changes) == 2 and g.relay_status()[0].state is SlotState.WAITING)
    status = g.relay_status()[0]
    assert g.relays == [] and status.relay is None
    assert status.failure is not None and status.failure.startswith(status.url), status


async def test_issued_credentials_are_renewed_before_they_expire(
    nursery: trio.Nursery, server: int
) -> None:
    asked: list[float] = []

    async def credentials(config: TurnServerConfig) -> IssuedCredentials:
        asked.append(trio.current_time())
        return IssuedCredentials("alice", "pw", lifetime=0.5)

    changes: list[int] = []
    options = GatherOptions(turn=(turn(server, user=None),), min_credential_lifetime=0.5)
    g = await start(
        nursery, options, credentials=credentials, on_relays_changed=lambda: changes.append(1)
    )
    result = await g.gather()
    first = g.relays[0]
    assert [c.type for c in result.candidates].count(CandidateType.RELAY) == 1
    # At 80 % of the lifetime: released (a clean deallocation), then made again with fresh
    # credentials; both changes announced.
    await wait_for(lambda: len(asked) == 2 and len(g.relays) == 1 and g.relays[0] is not first)
    assert first.client.state is AllocationState.CLOSED and first.failure is None
    assert asked[1] - asked[0] >= 0.4 - 0.05
    await wait_for(lambda: len(changes) == 2)
    await g.aclose()
    assert g.relays == [] and len(asked) == 2


async def test_udp_relay_srflx_and_new_allocation_when_the_path_changes(
    nursery: trio.Nursery,
) -> None:
    # The endpoint is bound to the wildcard address; the route lookup says which local
    # address the kernel would send from (a documentation address this machine does not have:
    # sent from it, the kernel refuses, the endpoint sends without it, and the mapped address
    # the server reports, 127.0.0.1, differs from the base, as behind a NAT).
    route = {"ip": "198.51.100.201"}
    port = free_port()
    scope = await serve(nursery, port)
    changes: list[int] = []
    g = await start(
        nursery,
        GatherOptions(turn=(turn(port),)),
        hosts=["198.51.100.201"],
        route_lookup=lambda ip: route["ip"],
        on_relays_changed=lambda: changes.append(1),
    )
    result = await g.gather()
    host, srflx, relay = result.candidates
    assert (srflx.type, relay.type) == (CandidateType.SRFLX, CandidateType.RELAY)
    assert srflx.address == (HOST, host.port) and srflx.related == host.address
    assert relay.related == srflx.address
    old = g.relays[0]
    assert old.local_ip == "198.51.100.201"
    # The kernel now sends from another address: the server knows the allocation by the old
    # 5-tuple, so it is abandoned (no deallocation can reach it) and made again; the round
    # waits for the new one and nobody needs to hear about it. (On loopback the 5-tuple does
    # not really change: a fresh server stands in for the server seeing a new client.)
    scope = await restart_server(nursery, scope, port)
    route["ip"] = "198.51.100.202"
    again = await g.gather()
    assert not again.failures, again.failures
    assert not old.allocated and old.client.state is AllocationState.ALLOCATED  # not released
    new = g.relays[0]
    assert new is not old and new.local_ip == "198.51.100.202"
    assert [c.related for c in again.candidates if c.type is CandidateType.SRFLX] == [
        ("198.51.100.202", host.port)
    ]
    assert not changes
    scope.cancel()


async def restart_server(
    nursery: trio.Nursery, scope: trio.CancelScope, port: int
) -> trio.CancelScope:
    """Stop the server on ``port`` and start a fresh one there (one that knows no allocation:
    on loopback our 5-tuple never really changes)."""
    scope.cancel()
    with trio.fail_after(5):
        while True:  # until the stopped server has closed its sockets
            await trio.sleep(0.01)
            with contextlib.suppress(RuntimeFailure):
                return await serve(nursery, port)


async def test_stale_udp_relay_is_made_again_within_the_round(nursery: trio.Nursery) -> None:
    port = free_port()
    scope = await serve(nursery, port)
    changes: list[int] = []
    g = await start(
        nursery,
        GatherOptions(stun=((HOST, port),), turn=(turn(port),)),
        hosts=["192.0.2.1"],
        route_lookup=lambda ip: "192.0.2.1",  # behind a "NAT": mapped 127.0.0.1, base 192.0.2.1
        on_relays_changed=lambda: changes.append(1),
    )
    first = await g.gather()
    assert [c.type for c in first.candidates].count(CandidateType.SRFLX) == 1  # given once
    old = g.relays[0]
    # The server saw this allocation come from elsewhere than where the STUN server sees us
    # now: the NAT moved since, the allocation (and its srflx) went with the old mapping.
    old.client.mapped = ("198.51.100.7", 4000)
    scope = await restart_server(nursery, scope, port)
    again = await g.gather()
    assert not again.failures, again.failures
    new = g.relays[0]
    assert new is not old and not old.allocated
    relayed = [c for c in again.candidates if c.type is CandidateType.RELAY]
    assert [c.address for c in relayed] == [new.relayed]
    assert all(c.address != ("198.51.100.7", 4000) for c in again.candidates)
    assert all(c.related != ("198.51.100.7", 4000) for c in again.candidates)
    assert not changes  # the round waited for the new allocation itself
    scope.cancel()


async def test_nat_mapping_change_abandons_udp_relays(nursery: trio.Nursery, server: int) -> None:
    changes: list[int] = []
    options = GatherOptions(stun=((HOST, server),), turn=(turn(server), turn(server, "tcp")))
    g = await start(nursery, options, on_relays_changed=lambda: changes.append(1))
    await g.gather()
    udp, tcp = sorted(g.relays, key=lambda r: r.transport != "udp")
    # What a later round would see if the NAT in front of us rebound: another mapping from
    # the same STUN server. The UDP allocation went with the old mapping; TCP is not touched.
    g._check_mappings({((HOST, server), HOST): ("198.51.100.7", 4000)})
    assert not udp.allocated and tcp.allocated
    await wait_for(lambda: bool(changes))


async def test_round_timeout_ends_the_round_early(nursery: trio.Nursery) -> None:
    silent = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    await silent.bind((HOST, 0))
    addr = silent.getsockname()
    url = f"turn:{HOST}:{addr[1]}?transport=udp"
    options = GatherOptions(
        stun=(addr,),
        turn=(TurnServerConfig(url, HOST, addr[1], "udp", "alice", "pw"),),
        stun_timeout=5,
        turn_timeout=1.5,
        round_timeout=0.4,
        relay_retry=(30.0,),
    )
    g = await start(nursery, options)
    start_time = trio.current_time()
    result = await g.gather()
    assert trio.current_time() - start_time < 1
    reasons = sorted((f.kind, f.reason) for f in result.failures)
    assert [k for k, _ in reasons] == ["stun", "turn"]
    assert "within the round" in reasons[0][1] and "later round" in reasons[1][1]
    assert [c.type for c in result.candidates] == [CandidateType.HOST]
    # The allocation attempt goes on beyond the round, bounded by turn_timeout.
    assert g.relay_status()[0].state is SlotState.ALLOCATING
    await wait_for(lambda: g.relay_status()[0].state is SlotState.WAITING)
    silent.close()


async def wildcard_gatherer(
    nursery: trio.Nursery, options: GatherOptions, hosts: Sequence[str]
) -> Gatherer:
    """A gatherer on a wildcard loopback endpoint whose host addresses are ``hosts`` (the
    real route lookup: loopback holds all of 127.0.0.0/8)."""
    ep = UdpEndpoint.bind(socket.AF_INET)
    mux = UdpMux([ep])
    nursery.start_soon(ep.receive_loop, Dispatcher(stun=mux.on_stun))

    async def lister() -> Sequence[str]:
        return list(hosts)

    g = Gatherer(mux, options, host=SystemHost(), list_addresses=lister)
    await nursery.start(g.run)
    return g


async def test_every_host_address_asks_the_stun_server_and_the_routed_one_comes_first(
    nursery: trio.Nursery, server: int
) -> None:
    # 127.0.0.2 is listed first, but the host routes towards the server (127.0.0.1) from
    # 127.0.0.1: that address is preferred. Each address asks the server from itself (the
    # server sees each as the mapped address: no NAT on loopback, so no srflx candidate).
    options = GatherOptions(stun=((HOST, server),), stun_keepalive=0.3)
    hosts = ["127.0.0.2", "127.0.0.1"]
    g = await wildcard_gatherer(nursery, options, hosts)
    result = await g.gather()
    assert not result.failures, result.failures
    port = g.mux.endpoints[0].local_address[1]
    ranked = sorted(result.candidates, key=lambda c: -c.priority)
    assert [c.host for c in ranked] == ["127.0.0.1", "127.0.0.2"]
    assert g._mapped == {
        ((HOST, server), "127.0.0.1"): ("127.0.0.1", port),
        ((HOST, server), "127.0.0.2"): ("127.0.0.2", port),
    }
    # The keepalive asks from each base too.
    with trio.fail_after(5):
        while g.keepalives < 2:
            await trio.sleep(0.01)
    assert g.keepalive_moves == 0
    # An address that went away is neither asked from nor kept alive any more.
    hosts.remove("127.0.0.2")
    await g.gather()
    assert list(g._mapped) == [((HOST, server), "127.0.0.1")]


async def test_an_address_that_cannot_ask_does_not_hold_the_round_up(
    nursery: trio.Nursery, server: int
) -> None:
    # 198.51.100.201 is not ours (an address that vanished after the listing): the endpoint
    # sends its request without it, from 127.0.0.1, and the answer is not taken for that
    # base. The round ends soon after the routed address's answer, without a failure.
    options = GatherOptions(stun=((HOST, server),), stun_timeout=5)
    g = await wildcard_gatherer(nursery, options, ["127.0.0.1", "198.51.100.201"])
    start = trio.current_time()
    result = await g.gather()
    assert trio.current_time() - start < 2
    assert not result.failures, result.failures
    assert list(g._mapped) == [((HOST, server), "127.0.0.1")]
    assert all(c.type is CandidateType.HOST for c in result.candidates)
    assert g.mux.endpoints[0].counters.tx_source_fallbacks >= 1


@pytest.mark.lab
async def test_host_addresses_from_netlink(nursery: trio.Nursery, natlab: object) -> None:
    lab = natlab(["cone"])  # type: ignore[operator]
    ns, ifname = lab.ns_host(1), lab.if_host(1)
    ep = UdpEndpoint.bind(socket.AF_INET, HOST)
    g = Gatherer(UdpMux([ep]), GatherOptions(), host=SystemHost(netns=ns))
    await nursery.start(g.run)
    found = await g.gather()
    assert [c.host for c in found.candidates] == [lab.site(1).host_addr]  # no loopback
    g.options = GatherOptions(exclude_interfaces=(ifname,))
    assert (await g.gather()).candidates == []  # our own (TUN) interface is skipped
    ep.close()
