"""The firewall between peers: rules, the flow table and their counters, for the data path.

:class:`Firewall` is sans-I/O: the data path hands it packets with the peer they come from or
go to and the current time, and hears which pass. Inbound (decrypted, from a peer) and
outbound (read from TUN, to a peer) packets are checked the same way:

1. a packet of a tracked flow of that peer passes (a reply, or more of a flow a rule allowed);
2. otherwise the first rule of its direction that matches allows it and its flow is tracked;
3. otherwise it is dropped and counted (``default_deny`` of the direction, and per peer).

Non-first fragments carry no ports: they are matched against the rules that name no port
(so ICMP and "any port" rules let them through, a port rule does not) and are not tracked.
Malformed packets are dropped and counted.

The fast path: consecutive packets of one flow in a batch (the segments of a TCP super-packet,
a bulk transfer; outbound: with the same ``now`` object, which the data path reads once per
batch) are recognised by comparing the header bytes that hold the addresses and
ports with the previous packet's (inbound with ``bytes.startswith`` at an offset, so no slice
is made; outbound, where packets are views of the TUN buffers, as a slice of the view), and
pass after one attribute store; the flow table is consulted once per run.

:meth:`Firewall.set_policy` replaces the rules at once (a reload): flows the new rules would
not have allowed are cut.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from p2ptun.firewall.flows import Flow, FlowKey, FlowTable
from p2ptun.firewall.packet import (
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_TCP,
    PROTO_UDP,
    TCP_FIN,
    TCP_RST,
    PacketInfo,
    parse,
)
from p2ptun.firewall.rules import CompiledRule, Policy, compile_for, first_match

TCP_CLOSING_TIMEOUT = 30.0
"""Idle seconds left to a TCP flow once a FIN or RST crossed (the rest of the close)."""
UNANSWERED_TIMEOUT = 60.0
"""Idle seconds of a flow until a packet came back the other way (then its protocol's
timeout applies): unanswered SYNs or probes do not hold their entries for an hour."""

_UNTRACKED = object()  # allowed, but not a tracked flow (a non-first fragment)


@dataclass
class DirectionCounters:
    default_deny: int = 0
    """Packets no flow and no rule allowed."""
    fragments: int = 0
    """Non-first fragments dropped (no rule without a port allowed them)."""
    malformed: int = 0


@dataclass
class _PeerState:
    name: str
    groups: frozenset[str]
    inbound: tuple[CompiledRule, ...]
    outbound: tuple[CompiledRule, ...]
    dropped: int = 0


@dataclass
class FirewallCounters:
    inbound: DirectionCounters = field(default_factory=DirectionCounters)
    outbound: DirectionCounters = field(default_factory=DirectionCounters)
    cut_on_reload: int = 0
    """Flows a new rule set did not allow any more."""


class Firewall:
    """Stateful filtering of the packets between this node and its peers.

    Peers are registered with their name and groups (:meth:`add_peer`); the peer object is
    any hashable the data path uses (the WireGuard :class:`~p2ptun.wireguard.Peer`). An
    unregistered peer is treated as one with no name and no groups.
    """

    def __init__(self, policy: Policy | None = None) -> None:
        self.policy = policy or Policy()
        self.counters = FirewallCounters()
        self.table = FlowTable(self.policy.max_flows, self.policy.max_flows_per_peer)
        self._peers: dict[Hashable, _PeerState] = {}
        self._anonymous = self._compile("", frozenset())
        self.inbound_hits = [0] * len(self.policy.inbound)
        """New flows each inbound rule allowed."""
        self.outbound_hits = [0] * len(self.policy.outbound)
        # The outbound path's one-entry cache (packets come one at a time from TUN), valid
        # for one batch: the data path passes the same ``now`` object for all of a batch.
        self._out_now: float | None = None
        self._out_peer: Hashable = None
        self._out_sig = b""
        self._out_proto = -1
        self._out_flow: Flow | None = None

    # -- peers and rules -------------------------------------------------------------------

    def _compile(self, name: str, groups: frozenset[str]) -> _PeerState:
        p = self.policy
        return _PeerState(
            name,
            groups,
            compile_for(p.inbound, name, groups),
            compile_for(p.outbound, name, groups),
        )

    def add_peer(self, peer: Hashable, name: str, groups: Iterable[str] = ()) -> None:
        """Register (or update) ``peer``: which rules apply to it follows from these."""
        groups = frozenset(groups)
        old = self._peers.get(peer)
        if old is not None and old.name == name and old.groups == groups:
            return
        state = self._peers[peer] = self._compile(name, groups)
        if old is not None:
            state.dropped = old.dropped
            self._cut(lambda flow: flow.owner is peer)

    def remove_peer(self, peer: Hashable) -> None:
        """Forget ``peer`` and its flows."""
        self._peers.pop(peer, None)
        self.table.remove_owner(peer)
        self._out_flow = None

    def set_policy(self, policy: Policy) -> int:
        """Replace the rule set (atomically: the next packet sees the new one); tracked flows
        the new rules do not allow are cut. Returns how many were."""
        old = self.policy
        self.policy = policy
        if (policy.max_flows, policy.max_flows_per_peer) != (old.max_flows, old.max_flows_per_peer):
            table = FlowTable(policy.max_flows, policy.max_flows_per_peer)
            table.counters = self.table.counters
            for flow in self.table:
                if table.held_by(flow.owner) < table.per_peer and len(table) < table.capacity:
                    copy = table.add(
                        flow.key, flow.owner, flow.seen, flow.timeout, flow.rule, flow.inbound
                    )
                    copy.answered = flow.answered
            self.table = table
        for peer, old_state in list(self._peers.items()):
            state = self._peers[peer] = self._compile(old_state.name, old_state.groups)
            state.dropped = old_state.dropped
        self._anonymous = self._compile("", frozenset())
        self.inbound_hits = [0] * len(policy.inbound)
        self.outbound_hits = [0] * len(policy.outbound)
        self._out_flow = None
        return self._cut(lambda flow: True)

    def _cut(self, which: Any) -> int:
        """Remove the chosen flows that the current rules would not open again."""
        cut = 0
        for flow in self.table:
            if not which(flow):
                continue
            state = self._peers.get(flow.owner, self._anonymous)
            proto, local, remote, lport, rport = flow.key
            rules = state.inbound if flow.inbound else state.outbound
            port = lport if flow.inbound else rport
            rule = first_match(rules, proto, port, remote, local)
            if rule < 0:
                self.table.remove(flow)
                cut += 1
            else:
                flow.rule = rule
        self.counters.cut_on_reload += cut
        self._out_flow = None
        return cut

    # -- the data path ---------------------------------------------------------------------

    def filter_inbound(self, peer: Hashable, packets: list[bytes], now: float) -> list[bytes]:
        """The packets decrypted from ``peer`` that may be written to TUN (``packets`` itself
        when all may)."""
        state = self._peers.get(peer, self._anonymous)
        out: list[bytes] | None = None
        last: Flow | None = None
        sig = b""
        proto = -1
        for i, p in enumerate(packets):
            # Fast path: the same flow as the previous packet (module docstring).
            if last is not None and last.live and len(p) >= 24:
                b0 = p[0]
                if b0 == 0x45:
                    if p[9] == proto and not (p[6] & 0x3F or p[7]) and p.startswith(sig, 12):
                        last.seen = now
                        if proto == PROTO_TCP and len(p) > 33 and p[33] & (TCP_FIN | TCP_RST):
                            last.timeout = TCP_CLOSING_TIMEOUT
                        if out is not None:
                            out.append(p)
                        continue
                elif b0 >> 4 == 6 and p[6] == proto and p.startswith(sig, 8):
                    last.seen = now
                    if proto == PROTO_TCP and len(p) > 53 and p[53] & (TCP_FIN | TCP_RST):
                        last.timeout = TCP_CLOSING_TIMEOUT
                    if out is not None:
                        out.append(p)
                    continue
            verdict = self._check(peer, state, p, now, True)
            if verdict is None:
                if out is None:
                    out = packets[:i]
                continue
            if out is not None:
                out.append(p)
            last = None
            if isinstance(verdict, Flow):
                b0 = p[0]
                proto = verdict.key[0]
                # The signature must be whole: a shorter one would match other flows too.
                size = len(p)
                if b0 == 0x45 and size >= 24 and not (p[6] & 0x3F or p[7]):
                    last, sig = verdict, p[12:24]
                elif b0 >> 4 == 6 and size >= 44 and p[6] == proto:
                    last, sig = verdict, p[8:44]
        return packets if out is None else out

    def allow_outbound(
        self, peer: Hashable, packet: bytes | bytearray | memoryview, now: float
    ) -> bool:
        """Whether ``packet``, read from TUN and routed to ``peer``, may be sent."""
        flow = self._out_flow
        if (
            flow is not None
            and now is self._out_now
            and flow.live
            and peer is self._out_peer
            and len(packet) >= 24
        ):
            b0 = packet[0]
            if b0 == 0x45:
                if (
                    packet[9] == self._out_proto
                    and not (packet[6] & 0x3F or packet[7])
                    and packet[12:24] == self._out_sig
                ):
                    flow.seen = now
                    if (
                        self._out_proto == PROTO_TCP
                        and len(packet) > 33
                        and packet[33] & (TCP_FIN | TCP_RST)
                    ):
                        flow.timeout = TCP_CLOSING_TIMEOUT
                    return True
            elif b0 >> 4 == 6 and packet[6] == self._out_proto and packet[8:44] == self._out_sig:
                flow.seen = now
                if (
                    self._out_proto == PROTO_TCP
                    and len(packet) > 53
                    and packet[53] & (TCP_FIN | TCP_RST)
                ):
                    flow.timeout = TCP_CLOSING_TIMEOUT
                return True
        state = self._peers.get(peer, self._anonymous)
        verdict = self._check(peer, state, packet, now, False)
        if verdict is None:
            return False
        self._out_flow = None
        if isinstance(verdict, Flow):
            b0 = packet[0]
            proto = verdict.key[0]
            size = len(packet)
            if b0 == 0x45 and size >= 24 and not (packet[6] & 0x3F or packet[7]):
                self._out_sig = bytes(packet[12:24])
            elif b0 >> 4 == 6 and size >= 44 and packet[6] == proto:
                self._out_sig = bytes(packet[8:44])
            else:
                return True
            self._out_flow, self._out_peer, self._out_proto = verdict, peer, proto
            self._out_now = now
        return True

    def _check(
        self,
        peer: Hashable,
        state: _PeerState,
        packet: bytes | bytearray | memoryview,
        now: float,
        inbound: bool,
    ) -> Flow | object | None:
        """The slow path: parse, look the flow up, else the rules. Returns the flow, or
        ``_UNTRACKED`` for an allowed fragment, or None (dropped, counted)."""
        # Most packets belong to a tracked flow: for plain IPv4/IPv6 TCP and UDP, look the
        # flow up from the header fields without a full parse first.
        quick = _quick_key(packet, inbound)
        if quick is not None:
            flow = self.table.get(quick)
            if flow is not None and flow.owner is peer and not flow.expired(now):
                flow.seen = now
                if not flow.answered and flow.inbound is not inbound:
                    self._answered(flow)
                if quick[0] == PROTO_TCP:
                    off = 33 if packet[0] == 0x45 else 53
                    if packet[off] & (TCP_FIN | TCP_RST):
                        flow.timeout = min(flow.timeout, TCP_CLOSING_TIMEOUT)
                return flow
        counters = self.counters.inbound if inbound else self.counters.outbound
        info = parse(packet)
        if info is None:
            counters.malformed += 1
            state.dropped += 1
            return None
        rules = state.inbound if inbound else state.outbound
        if inbound:
            local, remote, lport, rport = info.dst, info.src, info.dport, info.sport
        else:
            local, remote, lport, rport = info.src, info.dst, info.sport, info.dport
        if info.fragment:
            if first_match(rules, info.proto, -1, remote, local) < 0:
                counters.fragments += 1
                state.dropped += 1
                return None
            return _UNTRACKED
        key: FlowKey = (info.proto, local, remote, lport, rport)
        table = self.table
        flow = table.get(key)
        if flow is not None and flow.owner is peer and not flow.expired(now):
            flow.seen = now
            if not flow.answered and flow.inbound is not inbound:
                self._answered(flow)
            self._note_flags(flow, info)
            return flow
        rule = first_match(rules, info.proto, info.dport, remote, local)
        if rule < 0:
            if flow is not None and flow.owner is peer:
                table.remove(flow)
                table.counters.expired += 1
            counters.default_deny += 1
            state.dropped += 1
            return None
        (self.inbound_hits if inbound else self.outbound_hits)[rule] += 1
        timeout = min(self._timeout(info.proto), UNANSWERED_TIMEOUT)
        flow = table.add(key, peer, now, timeout, rule, inbound)
        self._note_flags(flow, info)
        return flow

    def _answered(self, flow: Flow) -> None:
        """The first packet of ``flow`` the other way: its protocol's timeout from now on
        (unless a FIN or RST already shortened it)."""
        flow.answered = True
        if flow.timeout != TCP_CLOSING_TIMEOUT:
            flow.timeout = self._timeout(flow.key[0])

    def _timeout(self, proto: int) -> float:
        p = self.policy
        if proto == PROTO_TCP:
            return p.tcp_timeout
        if proto in (PROTO_ICMP, PROTO_ICMPV6):
            return p.icmp_timeout
        return p.udp_timeout

    @staticmethod
    def _note_flags(flow: Flow, info: PacketInfo) -> None:
        if info.tcp_flags & (TCP_FIN | TCP_RST):
            flow.timeout = min(flow.timeout, TCP_CLOSING_TIMEOUT)

    # -- status ----------------------------------------------------------------------------

    def dropped(self, peer: Hashable) -> int:
        """Packets to or from ``peer`` the firewall dropped."""
        state = self._peers.get(peer)
        return 0 if state is None else state.dropped

    def status(self) -> dict[str, Any]:
        """A JSON-able snapshot: the rules with the flows each allowed, drops, the table."""
        p = self.policy
        table = self.table
        return {
            "inbound": [
                {"rule": r.describe(), "flows": n}
                for r, n in zip(p.inbound, self.inbound_hits, strict=True)
            ],
            "outbound": [
                {"rule": r.describe(), "flows": n}
                for r, n in zip(p.outbound, self.outbound_hits, strict=True)
            ],
            "dropped": {
                "inbound": asdict(self.counters.inbound),
                "outbound": asdict(self.counters.outbound),
            },
            "flows": len(table),
            "max_flows": table.capacity,
            "max_flows_per_peer": table.per_peer,
            "table": asdict(table.counters),
            "cut_on_reload": self.counters.cut_on_reload,
        }


def _quick_key(packet: bytes | bytearray | memoryview, inbound: bool) -> FlowKey | None:
    """The flow key of an IPv4 packet without options or fragmentation, or an IPv6 packet
    without extension headers, carrying TCP (with its flags byte) or UDP; None for anything
    else (:func:`~p2ptun.firewall.packet.parse` then decides)."""
    size = len(packet)
    if size < 28:
        return None
    b0 = packet[0]
    if b0 == 0x45:
        proto = packet[9]
        if (proto != PROTO_UDP and (proto != PROTO_TCP or size < 34)) or (
            packet[6] & 0x3F or packet[7]
        ):
            return None
        src, dst, l4 = bytes(packet[12:16]), bytes(packet[16:20]), 20
    elif b0 >> 4 == 6 and size >= 48:
        proto = packet[6]
        if proto != PROTO_UDP and (proto != PROTO_TCP or size < 54):
            return None
        src, dst, l4 = bytes(packet[8:24]), bytes(packet[24:40]), 40
    else:
        return None
    sport = (packet[l4] << 8) | packet[l4 + 1]
    dport = (packet[l4 + 2] << 8) | packet[l4 + 3]
    if inbound:
        return (proto, dst, src, dport, sport)
    return (proto, src, dst, sport, dport)
