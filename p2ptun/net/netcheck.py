"""``p2ptun netcheck``: what this host's network does to p2ptun's traffic, measured.

- **UDP and the NAT** (RFC 5780 §4, verdicts from :mod:`p2ptun.stun.behavior`): Binding
  tests against the first STUN server that answers. Mapping: tests I, II, III from one socket
  (I first: its OTHER-ADDRESS names the server's alternate address; II and III at once).
  Filtering: from a second socket that talked to nothing else — test I, then II (answer
  from the other IP and port) and III (from the other port) at once; an answer that does not
  come is a verdict, so these tests use a short retransmission schedule
  (:data:`PROBE_RTO` doubling, :data:`PROBE_SENDS` sends: given up after about 2 s).
  Hairpinning (§4.5): a Binding request from a third socket to the first one's mapped
  address, and whether it arrives.
- **The TURN servers** of the config, each over its own transport: a Binding over UDP, a TCP
  connect, or a TCP connect and TLS handshake, with the time each took.
- **IPv6**: the host's global IPv6 addresses, and a Binding to an IPv6 STUN server if the
  config names one (or its name has an IPv6 address).
- **Port mapping** (PCP, NAT-PMP, UPnP): not checked yet; the report says so.

Everything goes through a :class:`~p2ptun.net.ports.Host` (this machine, or the in-memory
network of the tests). The report is a plain dict (``--json``) and :func:`render` its text.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import trio

from p2ptun.addr import Address, format_address, is_ipv6
from p2ptun.config import TurnServerConfig
from p2ptun.errors import DecodeError, RuntimeFailure
from p2ptun.net.ports import DatagramPort, Host
from p2ptun.net.streams import open_stream
from p2ptun.stun import ClientTransaction, Message, MessageClass, is_stun
from p2ptun.stun.behavior import (
    Behaviour,
    binding_request,
    filtering_behaviour,
    mapping_behaviour,
    other_address,
    verdict,
)

PROBE_RTO = 0.2
"""First retransmission interval of a probe (RFC 8489 §6.2.1's RTO, shortened: a lost
answer is a result here, and the server is one round trip away)."""
PROBE_SENDS = 4
"""Sends of a probe before it counts as unanswered (at 0, 0.2, 0.6 and 1.4 s; given up at
2.2 s)."""
STREAM_TIMEOUT = 5.0
"""A TURN server's TCP connect and TLS handshake."""
PORT_MAPPING_NOT_CHECKED = {
    "checked": False,
    "note": "not checked: PCP, NAT-PMP and UPnP probing is not part of netcheck yet",
}


@dataclass
class _Waiter:
    tx: ClientTransaction[None]
    done: trio.Event = field(default_factory=trio.Event)
    response: Message | None = None
    source: Address | None = None
    rtt: float | None = None


class _Probe:
    """One UDP socket and the Binding transactions on it (the socket's only receiver)."""

    def __init__(self, port: DatagramPort, random_bytes: Callable[[int], bytes]) -> None:
        self.port = port
        self.random_bytes = random_bytes
        self.waiting: dict[bytes, _Waiter] = {}
        #: Transaction ids of Binding requests that arrived here (hairpinning).
        self.requests_seen: set[bytes] = set()

    def datagram(self, data: memoryview, source: Address, local: str | None) -> None:
        if not is_stun(data):
            return
        try:
            msg = Message.decode(data)
        except DecodeError:
            return
        if msg.message_class == MessageClass.REQUEST:
            self.requests_seen.add(msg.transaction_id)
            return
        waiter = self.waiting.get(msg.transaction_id)
        if waiter is None:
            return
        outcome = waiter.tx.handle_response(msg, trio.current_time())
        if outcome is not None:
            waiter.response = outcome.response
            waiter.source = source
            waiter.rtt = outcome.rtt
            waiter.done.set()

    def drained(self) -> None:
        pass

    async def binding(
        self, server: Address, *, change_ip: bool = False, change_port: bool = False
    ) -> _Waiter:
        """One Binding transaction to ``server``; its response (None: unanswered)."""
        request = binding_request(self.random_bytes, change_ip=change_ip, change_port=change_port)
        tx: ClientTransaction[None] = ClientTransaction(
            request, trio.current_time(), rto=PROBE_RTO, rc=PROBE_SENDS, rm=4
        )
        waiter = _Waiter(tx)
        self.waiting[tx.transaction_id] = waiter
        try:
            while not waiter.done.is_set():
                step = tx.handle_timeout(trio.current_time())
                if isinstance(step, bytes):
                    self.port.send(step, server)
                elif step is not None:
                    break  # timed out (or failed)
                wake = tx.next_wakeup()
                with trio.move_on_at(math.inf if wake is None else wake):
                    await waiter.done.wait()
        finally:
            del self.waiting[tx.transaction_id]
        return waiter


def _mapped(waiter: _Waiter) -> Address | None:
    r = waiter.response
    if r is None or r.message_class != MessageClass.SUCCESS:
        return None
    return r.xor_mapped_address or r.mapped_address


async def behaviour(host: Host, server: Address) -> dict[str, Any]:
    """RFC 5780 mapping, filtering and hairpinning against ``server`` (module docstring)."""
    result: dict[str, Any] = {
        "server": format_address(server),
        "udp": False,
        "local": None,
        "mapped": None,
        "other_address": None,
        "mapping": Behaviour.UNKNOWN.value,
        "filtering": Behaviour.UNKNOWN.value,
        "hairpinning": None,
        "rtt_ms": None,
    }
    ports: list[DatagramPort] = []
    try:
        for _ in range(3):
            ports.append(host.bind_datagram("::" if is_ipv6(server[0]) else "0.0.0.0", 0))
    except RuntimeFailure as exc:
        for port in ports:
            port.close()
        result["error"] = str(exc)
        return result
    try:
        async with trio.open_nursery() as nursery:
            probes = []
            for port in ports:
                probe = _Probe(port, host.random_bytes)
                nursery.start_soon(port.receive_loop, probe)
                probes.append(probe)
            mapping, filtering, hairpin = probes
            source_ip = host.route_source(server[0])
            local = None if source_ip is None else (source_ip, mapping.port.local_address[1])
            result["local"] = None if local is None else format_address(local)

            first = await mapping.binding(server)
            x1 = _mapped(first)
            if x1 is None:
                nursery.cancel_scope.cancel()
                return result
            result.update(udp=True, mapped=format_address(x1))
            if first.rtt is not None:
                result["rtt_ms"] = round(first.rtt * 1000, 3)
            assert first.response is not None
            other = other_address(first.response)
            if other is None:
                result["mapping"] = mapping_behaviour(local, x1, None, None).value
                nursery.cancel_scope.cancel()
                return result
            result["other_address"] = format_address(other)
            answers: dict[str, _Waiter] = {}

            async def ask(
                name: str, probe: _Probe, to: Address, change_ip: bool, change_port: bool
            ) -> None:
                answers[name] = await probe.binding(
                    to, change_ip=change_ip, change_port=change_port
                )

            async def hairpinning() -> None:
                if local is not None and x1 == local:
                    return  # no NAT: nothing to hairpin
                request = binding_request(host.random_bytes)
                for _ in range(PROBE_SENDS):
                    hairpin.port.send(request.encode(fingerprint=True), x1)
                    await trio.sleep(PROBE_RTO)
                    if request.transaction_id in mapping.requests_seen:
                        break
                result["hairpinning"] = request.transaction_id in mapping.requests_seen

            filter1 = await filtering.binding(server)
            async with trio.open_nursery() as tests:
                tests.start_soon(ask, "map2", mapping, (other[0], server[1]), False, False)
                tests.start_soon(ask, "map3", mapping, other, False, False)
                if _mapped(filter1) is not None:
                    tests.start_soon(ask, "filter2", filtering, server, True, True)
                    tests.start_soon(ask, "filter3", filtering, server, False, True)
                tests.start_soon(hairpinning)
            x2 = _mapped(answers["map2"])
            x3 = _mapped(answers["map3"])
            result["mapping"] = mapping_behaviour(local, x1, x2, x3).value
            if local is not None and x1 == local:
                result["filtering"] = Behaviour.NO_NAT.value
            elif "filter2" in answers:
                result["filtering"] = filtering_behaviour(
                    True,
                    _mapped(answers["filter2"]) is not None,
                    _mapped(answers["filter3"]) is not None,
                ).value
            nursery.cancel_scope.cancel()
    finally:
        for port in ports:
            port.close()
    return result


async def turn_reachability(host: Host, server: TurnServerConfig) -> dict[str, Any]:
    """Can this host reach a TURN server over its transport, and how long did it take?"""
    entry: dict[str, Any] = {
        "url": server.url,
        "transport": server.transport,
        "reachable": False,
        "rtt_ms": None,
        "error": None,
    }
    start = trio.current_time()
    if server.transport == "udp":
        try:
            addresses = await host.resolve(server.host, server.port)
        except RuntimeFailure as exc:
            entry["error"] = str(exc)
            return entry
        if not addresses:
            entry["error"] = f"{server.host!r} has no address"
            return entry
        target = addresses[0]
        try:
            port = host.bind_datagram("::" if is_ipv6(target[0]) else "0.0.0.0", 0)
        except RuntimeFailure as exc:
            entry["error"] = str(exc)
            return entry
        try:
            async with trio.open_nursery() as nursery:
                probe = _Probe(port, host.random_bytes)
                nursery.start_soon(port.receive_loop, probe)
                waiter = await probe.binding(target)
                nursery.cancel_scope.cancel()
        finally:
            port.close()
        if waiter.response is None:
            entry["error"] = "no answer over UDP"
        else:
            entry["reachable"] = True
            rtt = waiter.rtt if waiter.rtt is not None else trio.current_time() - start
            entry["rtt_ms"] = round(rtt * 1000, 3)
        return entry
    with trio.move_on_after(STREAM_TIMEOUT) as scope:
        try:
            conn = await open_stream(
                host, server.host, server.port, server.transport, server.ca_file
            )
        except RuntimeFailure as exc:
            entry["error"] = str(exc)
            return entry
        entry["reachable"] = True
        entry["rtt_ms"] = round((trio.current_time() - start) * 1000, 3)
        with trio.CancelScope(shield=True):
            await trio.aclose_forcefully(conn.stream)
    if scope.cancelled_caught:
        entry["error"] = f"no connection within {STREAM_TIMEOUT:g} s"
    return entry


_ULA = ipaddress.ip_network("fc00::/7")


def _routable_v6(text: str) -> bool:
    """An IPv6 address that can reach the internet's IPv6: not link-local, loopback or
    unique-local (documentation addresses count: the lab's internet uses them)."""
    ip = ipaddress.ip_address(text)
    return not (ip.is_link_local or ip.is_loopback or ip.is_multicast or ip in _ULA)


async def ipv6(host: Host, stun_servers: Sequence[Address]) -> dict[str, Any]:
    """The host's global IPv6 addresses and whether a Binding over IPv6 is answered."""
    addresses = [
        a.address
        for a in await host.local_addresses()
        if a.version == 6 and _routable_v6(a.address)
    ]
    out: dict[str, Any] = {"addresses": addresses, "udp": None, "mapped": None}
    servers = [s for s in stun_servers if is_ipv6(s[0])]
    if not addresses:
        out["note"] = "no global IPv6 address"
        return out
    if not servers:
        out["note"] = "no IPv6 STUN server to ask"
        return out
    for server in servers:
        try:
            port = host.bind_datagram(addresses[0], 0)
        except RuntimeFailure as exc:
            out.update(udp=False, note=str(exc))
            return out
        try:
            async with trio.open_nursery() as nursery:
                probe = _Probe(port, host.random_bytes)
                nursery.start_soon(port.receive_loop, probe)
                waiter = await probe.binding(server)
                nursery.cancel_scope.cancel()
        finally:
            port.close()
        mapped = _mapped(waiter)
        out["udp"] = mapped is not None
        if mapped is not None:
            out["mapped"] = format_address(mapped)
            break
    return out


async def netcheck(
    host: Host,
    stun: Sequence[tuple[str, int]],
    turn: Sequence[TurnServerConfig] = (),
) -> dict[str, Any]:
    """The whole report (module docstring). ``stun``: the STUN servers (host, port) to ask,
    in order; the first that answers test I is used for the behaviour tests."""
    resolved: list[Address] = []
    unresolved: list[str] = []
    for name, port in stun:
        try:
            found = await host.resolve(name, port)
        except RuntimeFailure as exc:
            unresolved.append(str(exc))
            continue
        resolved.extend(found)
    v4 = [a for a in resolved if not is_ipv6(a[0])]
    report: dict[str, Any] = {}
    behaviours = []
    for server in v4 or resolved[:1]:
        tested = await behaviour(host, server)
        behaviours.append(tested)
        if tested["udp"] and tested["other_address"] is not None:
            break
    best = next((b for b in behaviours if b["udp"]), behaviours[0] if behaviours else None)
    if best is None:
        best = {"server": None, "udp": False, "mapping": "unknown", "filtering": "unknown"}
    report.update(best)
    turn_results: list[dict[str, Any]] = [{} for _ in turn]
    async with trio.open_nursery() as nursery:

        async def one(relay: TurnServerConfig, slot: int) -> None:
            turn_results[slot] = await turn_reachability(host, relay)

        for slot, relay in enumerate(turn):
            nursery.start_soon(one, relay, slot)
        report["ipv6"] = await ipv6(host, resolved)
    report["turn"] = turn_results
    report["port_mapping"] = dict(PORT_MAPPING_NOT_CHECKED)
    streams = [t for t in turn_results if t["transport"] in ("tcp", "tls")]
    stream_ok = None if not streams else any(t["reachable"] for t in streams)
    report["verdict"] = verdict(
        bool(report["udp"]),
        Behaviour(report["mapping"]),
        Behaviour(report["filtering"]),
        stream_ok,
    )
    if not resolved:
        report["error"] = "; ".join(unresolved) or "the STUN servers' names have no address"
        report["verdict"] = "unknown: no STUN server could be reached by name"
    return report


def render(report: dict[str, Any]) -> str:
    """``p2ptun netcheck`` without ``--json``."""

    def show(value: object) -> str:
        if value is None:
            return "-"
        if isinstance(value, bool):
            return "yes" if value else "no"
        return str(value)

    lines = [f"verdict:      {report['verdict']}"]
    if report.get("error"):
        lines.append(f"error:        {report['error']}")
    other = show(report.get("other_address"))
    lines.append(f"STUN server:  {show(report.get('server'))} (other address {other})")
    lines.append(
        f"UDP:          {show(report.get('udp'))}"
        + (f", rtt {report['rtt_ms']:.1f} ms" if report.get("rtt_ms") is not None else "")
    )
    lines.append(f"local:        {show(report.get('local'))}")
    lines.append(f"mapped:       {show(report.get('mapped'))}")
    lines.append(f"mapping:      {show(report.get('mapping'))}")
    lines.append(f"filtering:    {show(report.get('filtering'))}")
    lines.append(f"hairpinning:  {show(report.get('hairpinning'))}")
    v6 = report.get("ipv6", {})
    v6_line = ", ".join(v6.get("addresses", [])) or "no global address"
    if v6.get("udp") is not None:
        v6_line += f"; UDP {show(v6['udp'])}"
        if v6.get("mapped"):
            v6_line += f" (mapped {v6['mapped']})"
    elif v6.get("note"):
        v6_line += f"; {v6['note']}"
    lines.append(f"IPv6:         {v6_line}")
    for t in report.get("turn", []):
        state = (
            f"reachable in {t['rtt_ms']:.1f} ms" if t["reachable"] else f"unreachable: {t['error']}"
        )
        lines.append(f"TURN:         {t['url']}: {state}")
    if not report.get("turn"):
        lines.append("TURN:         none configured")
    lines.append(f"port mapping: {report['port_mapping']['note']}")
    return "\n".join(lines)


__all__ = [
    "PORT_MAPPING_NOT_CHECKED",
    "behaviour",
    "ipv6",
    "netcheck",
    "render",
    "turn_reachability",
]
