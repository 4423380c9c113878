"""The trio shell of the port mapper: one mapping of the node's UDP port on the default gateway.

:class:`PortMapper` drives a :class:`~p2ptun.portmap.PortMapClient` (PCP, then NAT-PMP; when
both fail, UPnP IGD through :mod:`p2ptun.net.upnp`) over a
socket of its own from the host (:meth:`~p2ptun.net.ports.Host.bind_datagram`, bound to our
address towards the gateway), with one task that sleeps until the core's next wake-up. It talks
only to the default gateway (:meth:`~p2ptun.net.ports.Host.default_gateway`): never to a
gateway found by discovery, never to the internet.

- :meth:`refresh` (each gathering round calls it; a network change starts one) looks the
  gateway up again: a new gateway or a new address of ours towards it deletes the old mapping
  (best effort) and maps again — the re-request after a network change; a gateway that refused
  or was silent is asked again after :data:`RETRY_FAILED`.
- :attr:`mapping` is the mapping held now; :meth:`wait_settled` waits (bounded by the caller)
  until the current attempt has a result, so that a round can take the mapped candidate.
- ``on_change()`` is called when the mapping appears, moves or is lost outside such a wait
  (the node gathers again; the candidate follows).
- :meth:`aclose` deletes the mapping and waits (bounded) for the gateway's confirmation: the
  node is stopping.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import trio

from p2ptun.addr import Address
from p2ptun.errors import P2ptunError, RuntimeFailure
from p2ptun.log import get_logger
from p2ptun.net import upnp
from p2ptun.net.ports import DatagramPort, Host
from p2ptun.portmap import (
    MappingAcquired,
    MappingFailed,
    MappingLost,
    MappingReleased,
    MapState,
    PortMapClient,
)
from p2ptun.portmap.client import DEFAULT_LIFETIME

log = get_logger("net.portmap")

#: A gateway that gave no mapping is asked again after this long (at the next round).
RETRY_FAILED = 60.0
#: How long :meth:`PortMapper.aclose` waits for the deletion to be confirmed.
RELEASE_WAIT = 1.0


@dataclass(frozen=True)
class PortMapping:
    """A mapping the gateway holds for us."""

    protocol: str  # "pcp", "natpmp" (or "upnp")
    gateway: str
    external: Address
    #: Our address and port the gateway forwards to (the candidate's base).
    internal: Address

    def describe(self) -> str:
        names = {"pcp": "PCP", "natpmp": "NAT-PMP", "upnp": "UPnP"}
        return f"{names.get(self.protocol, self.protocol)} on {self.gateway}"


class _Receiver:
    def __init__(self, mapper: PortMapper, client: PortMapClient) -> None:
        self.mapper = mapper
        self.client = client

    def datagram(self, data: memoryview, source: Address, local: str | None) -> None:
        self.client.handle_datagram(bytes(data[:1100]), source, trio.current_time())
        self.mapper._after_input(self.client)

    def drained(self) -> None:
        pass


class PortMapper:
    """Keeps one mapping of UDP ``port`` on the default gateway (module docstring)."""

    def __init__(
        self,
        host: Host,
        port: int,
        *,
        on_change: Callable[[], None] | None = None,
        lifetime: int = DEFAULT_LIFETIME,
        use_upnp: bool = True,
    ) -> None:
        self.host = host
        self.use_upnp = use_upnp
        self.port = port
        self.on_change = on_change
        self.lifetime = lifetime
        self.mapping: PortMapping | None = None
        #: Why the latest attempt gave no mapping (None: it did, or none ended yet).
        self.failure: str | None = None
        self._client: PortMapClient | None = None
        self._socket: DatagramPort | None = None
        self._settled = trio.Event()
        self._kick = trio.Event()
        self._lock = trio.Lock()
        self._released = trio.Event()
        self._failed_at = -math.inf
        self._waiting = 0
        self._nursery: trio.Nursery | None = None
        self._client_scope: trio.CancelScope | None = None
        self._upnp: upnp.UpnpMapping | None = None
        self._upnp_scope: trio.CancelScope | None = None

    # -- the owner's side ------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Hold the mapping's task (started by the first :meth:`refresh`) until cancelled."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None
            self._close_socket()

    async def refresh(self) -> None:
        """Look the gateway up again and map anew if it or our address towards it changed
        (module docstring). Needs :meth:`run`."""
        async with self._lock:
            await self._check_gateway()

    async def wait_settled(self) -> PortMapping | None:
        """Wait until the current attempt ended (bound it from outside); the mapping."""
        self._waiting += 1
        try:
            await self._settled.wait()
        finally:
            self._waiting -= 1
        return self.mapping

    @property
    def settled(self) -> bool:
        return self._settled.is_set()

    async def aclose(self) -> None:
        """Delete the mapping (bounded by :data:`RELEASE_WAIT`): the node is stopping."""
        held = self._upnp
        if held is not None:
            self._upnp = None
            self.mapping = None
            with trio.move_on_after(RELEASE_WAIT):
                await upnp.delete(held)
            log.info("port mapping deleted", gateway=held.gateway, protocol="upnp")
            return
        client = self._client
        if client is None or client.state not in (
            MapState.MAPPED,
            MapState.PROBING,
            MapState.REQUESTING,
        ):
            return
        # A gateway that has answered nothing yet holds nothing we asked for, or its grant is
        # in flight: the delete goes out once, and the node does not wait for an answer that
        # a silent gateway will not send (it would hold the shutdown RELEASE_WAIT seconds).
        silent = client.state is MapState.PROBING
        self._released = trio.Event()
        client.release(trio.current_time())
        self._flush(client)
        self._kick.set()
        if silent:
            log.debug("port mapping request withdrawn", gateway=client.gateway)
            return
        with trio.move_on_after(RELEASE_WAIT):
            await self._released.wait()
        log.info("port mapping deleted", gateway=client.gateway, state=client.state.value)

    # -- internals -------------------------------------------------------------------------------

    async def _check_gateway(self) -> None:
        try:
            gateway = await self.host.default_gateway()
        except (OSError, P2ptunError) as exc:
            log.debug("no default gateway", error=str(exc))
            gateway = None
        source = self.host.route_source(gateway) if gateway else None
        client = self._client
        if client is not None and (client.gateway, client.client_ip) == (gateway, source):
            if client.state is not MapState.FAILED or self._upnp is not None:
                return
            if not self._settled.is_set():
                return  # UPnP is being tried
            if trio.current_time() - self._failed_at < RETRY_FAILED:
                return
        if client is not None and client.state is MapState.MAPPED:
            client.release(trio.current_time())  # best effort: the old path may be gone
            self._flush(client)
        held, self._upnp = self._upnp, None
        if held is not None and self._nursery is not None:
            self._nursery.start_soon(self._forget_upnp, held)
        self._stop_client()
        lost = self.mapping is not None
        self.mapping = None
        if gateway is None or source is None:
            self.failure = "no IPv4 default gateway"
            self._settle()
            if lost:
                self._changed()
            return
        nonce = self.host.random_bytes(12)
        client = PortMapClient(gateway, source, self.port, nonce, lifetime=self.lifetime)
        try:
            sock = self.host.bind_datagram(source, 0)
        except OSError as exc:
            self.failure = f"cannot open a socket towards {gateway}: {exc}"
            self._settle()
            return
        self._settled = trio.Event()
        self._client, self._socket = client, sock
        self.failure = None
        client.start(trio.current_time())
        log.info("asking the gateway for a port mapping", gateway=gateway, port=self.port)
        assert self._nursery is not None
        scope = trio.CancelScope()
        self._client_scope = scope
        self._nursery.start_soon(self._drive, client, sock, scope)
        if lost:
            self._changed()

    async def _drive(
        self, client: PortMapClient, sock: DatagramPort, scope: trio.CancelScope
    ) -> None:
        with scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(sock.receive_loop, _Receiver(self, client))
                self._flush(client)
                while True:
                    wake = client.next_wakeup()
                    with trio.move_on_at(math.inf if wake is None else wake):
                        await self._kick.wait()
                    self._kick = trio.Event()
                    client.handle_timeout(trio.current_time())
                    self._flush(client)

    def _after_input(self, client: PortMapClient) -> None:
        self._flush(client)
        self._kick.set()  # the wake-up may have moved

    def _flush(self, client: PortMapClient) -> None:
        sock = self._socket
        for data in client.pop_transmits():
            if sock is not None and client is self._client:
                sock.send(data, client.server)
        for event in client.pop_events():
            if client is not self._client:
                continue
            if isinstance(event, MappingAcquired):
                self.mapping = PortMapping(
                    event.protocol, event.gateway, event.external, (client.client_ip, self.port)
                )
                self.failure = None
                log.info(
                    "port mapped",
                    protocol=event.protocol,
                    gateway=event.gateway,
                    external=f"{event.external[0]}:{event.external[1]}",
                    lifetime=event.lifetime,
                )
                self._settle(changed=True)
            elif isinstance(event, MappingFailed):
                self.failure = event.reason
                self._failed_at = trio.current_time()
                unavailable = upnp.available() if self.use_upnp else "UPnP not used"
                if (
                    unavailable is None
                    and self._nursery is not None
                    and client.state is MapState.FAILED
                ):
                    self._nursery.start_soon(self._upnp_task, client)
                else:
                    log.info("no port mapping", reason=event.reason, upnp=unavailable)
                    self._settle()
            elif isinstance(event, MappingLost):
                log.info("port mapping lost", reason=event.reason)
                self.mapping = None
                self.failure = event.reason
                self._changed()
            elif isinstance(event, MappingReleased):
                self.mapping = None
                self._released.set()

    async def _upnp_task(self, client: PortMapClient) -> None:
        """PCP and NAT-PMP failed: map with UPnP (:mod:`p2ptun.net.upnp`) and renew at half
        the lease, until the client is replaced."""
        with trio.CancelScope() as scope:
            self._upnp_scope = scope
            internal = (client.client_ip, self.port)
            try:
                held = await upnp.map_port(client.gateway, internal)
            except RuntimeFailure as exc:
                if client is self._client:
                    self.failure = f"{self.failure}; {exc}"
                    self._failed_at = trio.current_time()
                    log.info("no port mapping", reason=self.failure)
                    self._settle()
                return
            if client is not self._client:
                await upnp.delete(held)
                return
            self._upnp = held
            self.mapping = PortMapping("upnp", client.gateway, held.external, internal)
            self.failure = None
            log.info(
                "port mapped",
                protocol="upnp",
                gateway=client.gateway,
                external=f"{held.external[0]}:{held.external[1]}",
                lifetime=held.lease,
            )
            self._settle(changed=True)
            while True:
                # A permanent lease is re-added now and then too: it may have been removed.
                await trio.sleep(held.lease / 2 if held.lease else upnp.LEASE / 2)
                try:
                    await upnp.renew(held)
                except RuntimeFailure as exc:
                    log.info("port mapping lost", reason=str(exc))
                    self._upnp = None
                    self.mapping = None
                    self.failure = str(exc)
                    self._failed_at = trio.current_time()
                    self._changed()
                    return

    @staticmethod
    async def _forget_upnp(held: upnp.UpnpMapping) -> None:
        with trio.move_on_after(RELEASE_WAIT):
            await upnp.delete(held)

    def _settle(self, *, changed: bool = False) -> None:
        waited = self._waiting > 0
        self._settled.set()
        if changed and not waited:
            self._changed()

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    def _stop_client(self) -> None:
        if self._upnp_scope is not None:
            self._upnp_scope.cancel()
            self._upnp_scope = None
        if self._client_scope is not None:
            self._client_scope.cancel()
            self._client_scope = None
        self._close_socket()
        self._client = None

    def _close_socket(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


__all__ = ["RELEASE_WAIT", "RETRY_FAILED", "PortMapper", "PortMapping"]
