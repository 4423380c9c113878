"""The node's DNS responder: ``NAME.DOMAIN`` of every member on the overlay address.

The answers are :class:`p2ptun.names.NameServer`'s (sans-I/O); this shell binds UDP port 53 on
each of the node's overlay addresses through the host (once the interface is up; an IPv6
address may still be tentative, so a failed bind is tried again a few times), answers each
query datagram on the socket it came in on, and registers the responder with the system's
resolver for the domain (systemd-resolved's per-link DNS server and ``~DOMAIN`` routing domain,
:meth:`p2ptun.net.ports.Host.register_dns`), undone when the node stops. The node's own name
and every member's come from their certificates (:meth:`DnsResponder.update`).

Binding port 53 needs CAP_NET_BIND_SERVICE (the unit grants it); a node that cannot bind logs
one warning and runs without names.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

import trio

from p2ptun.addr import Address
from p2ptun.config import IPInterface
from p2ptun.errors import P2ptunError
from p2ptun.log import get_logger
from p2ptun.names import NameServer, Records
from p2ptun.net.ports import DatagramPort, Host

log = get_logger("node.names")

DNS_PORT = 53
BIND_ATTEMPTS = 5


class _Receiver:
    """Answers every query that arrives on one port (a DatagramReceiver)."""

    def __init__(self, server: NameServer, port: DatagramPort) -> None:
        self.server = server
        self.port = port

    def datagram(self, data: memoryview, source: Address) -> None:
        reply = self.server.answer(bytes(data))
        if reply is not None:
            self.port.send(reply, source)

    def drained(self) -> None:
        pass


class DnsResponder:
    """DNS for the network's domain on the node's overlay addresses (module docstring)."""

    def __init__(
        self,
        host: Host,
        interface: str,
        addresses: Sequence[IPInterface],
        domain: str,
        port: int = DNS_PORT,
    ) -> None:
        self.host = host
        self.interface = interface
        self.addresses = [str(a.ip) for a in addresses]
        self.domain = domain
        self.port_number = port
        self.server = NameServer(domain)
        self.ports: list[DatagramPort] = []
        self.registered = False

    def update(self, records: Records) -> None:
        self.server.set_records(records)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Bind, register, answer until cancelled; then unregister and close."""
        try:
            async with trio.open_nursery() as nursery:
                for ip in self.addresses:
                    port = await self._bind(ip)
                    if port is not None:
                        self.ports.append(port)
                        nursery.start_soon(port.receive_loop, _Receiver(self.server, port))
                if self.ports:
                    served = [p.local_address[0] for p in self.ports]
                    log.info(
                        "names served",
                        domain=self.domain,
                        on=",".join(served),
                        port=self.port_number,
                    )
                    if self.port_number == DNS_PORT:
                        self.registered = await self.host.register_dns(
                            self.interface, served, self.domain
                        )
                        if self.registered:
                            log.info("registered with systemd-resolved", domain=f"~{self.domain}")
                task_status.started()
                await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                if self.registered:
                    await self.host.unregister_dns(self.interface)
                    self.registered = False
                for port in self.ports:
                    port.close()
                self.ports = []

    async def _bind(self, ip: str) -> DatagramPort | None:
        for attempt in range(BIND_ATTEMPTS):
            try:
                return self.host.bind_datagram(ip, self.port_number)
            except P2ptunError as exc:
                if attempt + 1 == BIND_ATTEMPTS or ipaddress.ip_address(ip).version == 4:
                    log.warning("cannot serve names", address=ip, error=str(exc))
                    return None
            await trio.sleep(1.0)  # an IPv6 address is tentative for a moment
        return None
