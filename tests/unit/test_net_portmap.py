"""The port mapper's glue in the gatherer, on loopback: a silent gateway never holds a round
up, and a mapping that comes after the round starts a new one whose candidate is flagged
``mapped``. The gateway is a loopback address (127.0.0.3) given by the host; the PCP answers
come from a small responder built here from RFC 6887's figures (the real server, miniupnpd,
is tests/interop/test_portmap_miniupnpd.py). UPnP is off: its search would leave loopback."""

from __future__ import annotations

import ipaddress
import socket
import struct
from collections.abc import Sequence

import trio
from loopback_turn import HOST, serve_turn

from p2ptun.ice.candidate import CandidateType
from p2ptun.net.dispatch import Dispatcher
from p2ptun.net.gather import Gatherer, GatherOptions
from p2ptun.net.mux import UdpMux
from p2ptun.net.system import SystemHost
from p2ptun.net.udp import UdpEndpoint

GATEWAY = "127.0.0.3"
EXTERNAL = ("198.51.100.7", 40000)


class GatewayHost(SystemHost):
    """This machine, with a loopback address as its default gateway."""

    async def default_gateway(self) -> str | None:
        await trio.lowlevel.checkpoint()
        return GATEWAY


async def pcp_responder(delay: float, task_status: trio.TaskStatus[None]) -> None:
    """Answer each PCP MAP request after ``delay`` with a success for our nonce and port."""
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    await sock.bind((GATEWAY, 5351))
    task_status.started()
    async with trio.open_nursery() as nursery:
        while True:
            data, source = await sock.recvfrom(1100)
            if len(data) != 60 or data[0] != 2:
                continue  # NAT-PMP's probe: this gateway speaks PCP only

            async def answer(data: bytes = data, source: object = source) -> None:
                await trio.sleep(delay)
                lifetime = struct.unpack("!I", data[4:8])[0]
                nonce, internal = data[24:36], struct.unpack("!H", data[40:42])[0]
                ext_ip = ipaddress.IPv6Address(f"::ffff:{EXTERNAL[0]}").packed
                head = struct.pack("!BBBBII12s", 2, 0x81, 0, 0, lifetime, 1, bytes(12))
                body = struct.pack(
                    "!12sB3sHH16s", nonce, 17, bytes(3), internal, EXTERNAL[1], ext_ip
                )
                await sock.sendto(head + body, source)

            nursery.start_soon(answer)


async def gatherer(nursery: trio.Nursery, stun_port: int, changed: list[int]) -> Gatherer:
    ep = UdpEndpoint.bind(socket.AF_INET, HOST)
    mux = UdpMux([ep])
    nursery.start_soon(ep.receive_loop, Dispatcher(stun=mux.on_stun))

    async def lister() -> Sequence[str]:
        return [HOST]

    options = GatherOptions(stun=((HOST, stun_port),), port_mapping=True)
    g = Gatherer(
        mux,
        options,
        host=GatewayHost(),
        list_addresses=lister,
        on_relays_changed=lambda: changed.append(1),
    )
    assert g.port_mapper is not None
    g.port_mapper.use_upnp = False
    await nursery.start(g.run)
    return g


async def test_a_silent_gateway_does_not_hold_the_round(nursery: trio.Nursery) -> None:
    port, _ = await serve_turn(nursery, relay_ports=(45000, 45999))
    changed: list[int] = []
    g = await gatherer(nursery, port, changed)
    start = trio.current_time()
    result = await g.gather()
    assert trio.current_time() - start < 0.5  # the STUN answer, not the 2 s probe
    assert {c.type for c in result.candidates} == {CandidateType.HOST}
    assert result.failures == []  # no mapping is not a failure
    mapper = g.port_mapper
    assert mapper is not None and not mapper.settled
    with trio.fail_after(4):
        while not mapper.settled:
            await trio.sleep(0.05)
    assert mapper.mapping is None and "no PCP or NAT-PMP answer" in (mapper.failure or "")
    assert changed == []  # nothing to tell


async def test_a_late_mapping_starts_a_round_that_takes_it(nursery: trio.Nursery) -> None:
    port, _ = await serve_turn(nursery, relay_ports=(45000, 45999))
    await nursery.start(pcp_responder, 0.3)
    changed: list[int] = []
    g = await gatherer(nursery, port, changed)
    first = await g.gather()
    assert not any(dict(c.extensions).get("mapped") for c in first.candidates)
    with trio.fail_after(3):
        while not changed:
            await trio.sleep(0.02)
    second = await g.gather()
    (mapped,) = [c for c in second.candidates if dict(c.extensions).get("mapped")]
    assert mapped.type is CandidateType.SRFLX and mapped.address == EXTERNAL
    assert dict(mapped.extensions)["mapped"] == f"pcp@{GATEWAY}"
    assert mapped.related == (HOST, g.mux.port_for(HOST))
    # A round while the mapping is held takes it at once.
    third = await g.gather()
    assert any(c.address == EXTERNAL for c in third.candidates)
    await g.aclose()  # deletes it (the responder confirms)
    assert g.port_mapper is not None and g.port_mapper.mapping is None


async def test_stopping_before_a_silent_gateway_answered_does_not_wait(
    nursery: trio.Nursery,
) -> None:
    """A node stopped while its gateway has not answered (most gateways never do) withdraws
    the request with one datagram and goes: it does not wait RELEASE_WAIT for an answer that
    will not come."""
    port, _ = await serve_turn(nursery, relay_ports=(45000, 45999))
    g = await gatherer(nursery, port, [])
    await g.gather()
    mapper = g.port_mapper
    assert mapper is not None and not mapper.settled  # still probing the silent gateway
    start = trio.current_time()
    await g.aclose()
    assert trio.current_time() - start < 0.2
