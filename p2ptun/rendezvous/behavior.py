"""The rendezvous' RFC 5780 sockets (``[stun] alternate = "IP:PORT"``).

With an alternate address A2:P2 beside the primary STUN listener A1:P1, the STUN/TURN shell
binds three more UDP sockets — A1:P2, A2:P1, A2:P2 — and every Binding request to any of the
four is answered by :func:`p2ptun.stun.behavior.behavior_response`: XOR-MAPPED-ADDRESS,
RESPONSE-ORIGIN, OTHER-ADDRESS, and the response sent from the address CHANGE-REQUEST asks for.
The primary listener keeps serving TURN; it hands only its Binding requests here. This is what
``p2ptun netcheck`` (and coturn's ``turnutils_natdiscovery``) needs to tell mapping and
filtering behaviour apart.

The answers are stateless and sent to the request's source only — from another of the four
addresses when asked —, which a spoofed source could use to reflect traffic at a victim; so,
like the TURN server's unauthenticated answers (SECURITY.md, L2), they come from a budget per
source (:data:`ANSWER_RATE` a second, :data:`ANSWER_BURST` at once, :data:`MAX_SOURCES`
remembered) and carry no SOFTWARE.
"""

from __future__ import annotations

from dataclasses import dataclass

import trio

from p2ptun.addr import Address, SourceBudget, format_address, source_key
from p2ptun.errors import RuntimeFailure
from p2ptun.log import get_logger
from p2ptun.net.ports import DatagramPort, Host
from p2ptun.stun.behavior import ServerAddresses, behavior_response

log = get_logger("rendezvous.behavior")

ANSWER_RATE = 10.0
"""Answers a second one source may get, sustained (the TURN server's unauthenticated rate)..."""
ANSWER_BURST = 20.0
"""...and at once."""
MAX_SOURCES = 16384
"""Sources whose budget is remembered (the least recent is forgotten first)."""


@dataclass
class BehaviorCounters:
    requests: int = 0
    changed: int = 0
    """Answers sent from another address than the one asked (CHANGE-REQUEST)."""
    dropped: int = 0
    rate_limited: int = 0
    """Requests left unanswered: their source spent its budget."""
    send_failed: int = 0


class BehaviorServer:
    """The four sockets' Binding answers (module docstring)."""

    def __init__(
        self,
        addresses: ServerAddresses,
        ports: dict[Address, DatagramPort],
        budget: SourceBudget | None = None,
    ) -> None:
        self.addresses = addresses
        self.ports = ports
        self.counters = BehaviorCounters()
        self.budget = (
            budget if budget is not None else SourceBudget(ANSWER_RATE, ANSWER_BURST, MAX_SOURCES)
        )

    @classmethod
    def bind(cls, host: Host, addresses: ServerAddresses, primary: DatagramPort) -> BehaviorServer:
        """Bind A1:P2, A2:P1 and A2:P2 beside the ``primary`` listener; raises
        :class:`RuntimeFailure` naming the address that cannot be bound (nothing stays open)."""
        ports: dict[Address, DatagramPort] = {addresses.primary: primary}
        try:
            for ip, port in addresses.all()[1:]:
                ports[(ip, port)] = host.bind_datagram(ip, port)
        except BaseException:
            for address, endpoint in ports.items():
                if address != addresses.primary:
                    endpoint.close()
            raise
        log.info(
            "RFC 5780 behaviour discovery",
            primary=format_address(addresses.primary),
            alternate=format_address(addresses.alternate),
        )
        return cls(addresses, ports)

    @property
    def extra_ports(self) -> list[tuple[Address, DatagramPort]]:
        """The sockets this server bound itself (not the primary listener)."""
        return [(a, p) for a, p in self.ports.items() if a != self.addresses.primary]

    def answer(
        self, data: memoryview | bytes, source: Address, local: Address, now: float | None = None
    ) -> None:
        """One datagram that came to our ``local`` address from ``source``."""
        self.counters.requests += 1
        if not self.budget.allow(
            source_key(source[0]), trio.current_time() if now is None else now
        ):
            self.counters.rate_limited += 1
            return
        out = behavior_response(data, source, local, self.addresses, software=None)
        if out is None:
            self.counters.dropped += 1
            return
        response, origin = out
        if origin != local:
            self.counters.changed += 1
        try:
            sent = self.ports[origin].send(response, source)
        except RuntimeFailure:
            sent = False
        if not sent:
            self.counters.send_failed += 1

    def receiver(self, local: Address) -> _Receiver:
        return _Receiver(self, local)

    def close(self) -> None:
        for _, endpoint in self.extra_ports:
            endpoint.close()


class _Receiver:
    """The receiver of one of the extra sockets: every datagram is a behaviour request."""

    def __init__(self, server: BehaviorServer, local: Address) -> None:
        self.server = server
        self.local = local

    def datagram(self, data: memoryview, source: Address, local: str | None) -> None:
        self.server.answer(data, source, self.local)

    def drained(self) -> None:
        pass


__all__ = ["BehaviorCounters", "BehaviorServer"]
