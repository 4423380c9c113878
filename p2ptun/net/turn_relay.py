"""TURN allocations for the node: over the shared UDP socket, or over their own TCP/TLS stream.

:class:`TurnRelay` runs one :class:`~p2ptun.turn.client.TurnClient` allocation (RFC 8656): over
UDP it sends through the node's :class:`~p2ptun.net.mux.UdpMux` and receives what the mux routes
to it; over TCP or TLS (``turn:...?transport=tcp``, ``turns:``) it owns a connection (made
through the :class:`~p2ptun.net.ports.Host` by :func:`p2ptun.net.streams.open_stream`), a
reader task that cuts the byte stream into frames and a writer task that sends everything
queued since its last wake-up in one write. Either way the relay has a single timer task
re-armed at the client's ``next_wakeup()`` after every step, and nothing blocks:
:meth:`TurnRelay.send` wraps a payload (ChannelData on a bound channel, else a Send indication)
and queues it synchronously.

What the server relays to us takes one of two ways, decided here once:

- **WireGuard** goes to :attr:`TurnRelay.wireguard` (the node's data path, which
  authenticates every datagram itself), whichever way it came: from ChannelData on a bound
  channel straight from the receive buffer (a view: no TurnClient event, no copy), or from a
  Data indication (before the channel is bound) through the client;
- **everything else** (STUN: ICE checks and consent) goes to ``on_data(relay, peer, data)``
  (the ICE transport). Without a WireGuard receiver, WireGuard goes there too.

On a stream ``after_batch()`` follows each received chunk (the node flushes its data path
there; over UDP the endpoint's own end of batch does that).

The data path out: :meth:`TurnRelay.send_batch` frames a batch of payloads for a peer with a
bound channel as ChannelData without copying them (over UDP one GSO ``sendmsg`` per run of
equal size, over a stream padded frames queued for one write).

Peers the server refuses (403 to CreatePermission: our embedded server denies private ranges by
default) are remembered for the allocation's life, so that data and ICE checks to them are
dropped here instead of asking for the same permission on every packet.

::

    mux = UdpMux(endpoints)
    relay = TurnRelay.udp(mux, ("203.0.113.10", 3478), "user", "pass", random=os.urandom,
                          on_data=deliver)
    await nursery.start(relay.run)     # allocated (RuntimeFailure if not)
    relay.relayed                      # ("203.0.113.10", 50123)
    relay.send(peer, payload)          # synchronous, never blocks
    relay.close()                      # deallocate; run() returns
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import trio

from p2ptun.addr import Address, format_address
from p2ptun.config import TurnServerConfig
from p2ptun.errors import DecodeError, RuntimeFailure
from p2ptun.log import get_logger
from p2ptun.net.mux import UdpMux, normalize_address
from p2ptun.net.ports import Host
from p2ptun.net.streams import open_stream
from p2ptun.net.timer import CoreTimer
from p2ptun.stun import channel_data_end, channel_data_header
from p2ptun.turn.client import (
    AllocationFailed,
    AllocationLost,
    AllocationState,
    AllocationSucceeded,
    ChannelState,
    Deallocated,
    PeerData,
    PermissionFailed,
    TurnClient,
    TurnEvent,
)
from p2ptun.turn.client_stream import StreamFramingError

log = get_logger("net.turn")

RelayTransport = Literal["udp", "tcp", "tls"]

#: ``on_data(relay, peer, data)``: a payload the TURN server relayed from ``peer``.
RelayDataHandler = Callable[["TurnRelay", Address, bytes], None]
#: ``receiver(datagram, peer, relay)``: a WireGuard datagram the TURN server of ``relay``
#: relayed from ``peer``; ``datagram`` is only valid during the call (a view into a receive
#: buffer).
WireGuardReceiver = Callable[[memoryview, Address, "TurnRelay"], None]
#: ``on_event(relay, event)``: every event of the relay's TurnClient, after the relay's own
#: bookkeeping (AllocationSucceeded, AllocationLost, ChannelBound, PermissionFailed, ...).
RelayEventHandler = Callable[["TurnRelay", TurnEvent], None]

#: Bytes a stream relay queues for its writer before it drops relayed data (never control).
MAX_STREAM_BACKLOG = 1 << 20
#: Peers refused by the server (403) remembered per allocation.
MAX_FORBIDDEN = 256
#: Refresh at least this often over UDP: the Refresh keeps the NAT binding towards the server.
UDP_REFRESH_INTERVAL = 60.0
_RECV_SIZE = 65536 + 64
_PADDING = (b"", b"\0", b"\0\0", b"\0\0\0")


def _is_wireguard(data: bytes | memoryview) -> bool:
    """A WireGuard message: type 1-4, then three zero bytes (docs/ARCHITECTURE.md §2)."""
    return len(data) >= 4 and 0 < data[0] <= 4 and not data[1] and not data[2] and not data[3]


@dataclass
class RelayCounters:
    """Per-relay counters beyond the TurnClient's own."""

    tx_dropped: int = 0
    """Payloads not sent: allocation not usable, peer forbidden, stream backlog full."""
    rx_malformed: int = 0
    refreshes: int = 0
    rx_wireguard: int = 0
    """WireGuard datagrams handed to the relay's WireGuard receiver (ChannelData or Data
    indications)."""
    tx_batches: int = 0
    """Batches sent as ChannelData in one go (:meth:`TurnRelay.send_batch`)."""


class TurnRelay:
    """One TURN allocation for the node (see the module docstring).

    Make it with :meth:`udp` (through the mux's shared socket), :meth:`stream` (own TCP or TLS
    connection through ``host``) or :meth:`from_config`; run :meth:`run` in a nursery with
    ``nursery.start``:
    it returns once allocated (or raises :class:`RuntimeFailure` with the reason), keeps the
    allocation refreshed, and ends when the allocation is lost or :meth:`close` deallocated
    it (:attr:`failure` says why it was lost).
    """

    def __init__(
        self,
        client: TurnClient,
        transport: RelayTransport,
        *,
        mux: UdpMux | None = None,
        host: Host | None = None,
        server_name: str | None = None,
        ca_file: str | None = None,
        on_data: RelayDataHandler | None = None,
        on_event: RelayEventHandler | None = None,
        wireguard: WireGuardReceiver | None = None,
        after_batch: Callable[[], None] | None = None,
    ) -> None:
        if (transport == "udp") != (mux is not None):
            raise ValueError("a UDP relay needs the mux; a stream relay must not have one")
        if transport != "udp" and host is None:
            raise ValueError("a stream relay connects through a host")
        self.client = client
        self.transport: RelayTransport = transport
        self.server: Address = client.server
        self.on_data = on_data
        self.on_event = on_event
        self.wireguard = wireguard
        """Where relayed WireGuard goes (the node: its data path); None: to :attr:`on_data`."""
        self.after_batch = after_batch
        self.counters = RelayCounters()
        #: Why the allocation ended (None while it lives or after a clean close).
        self.failure: AllocationFailed | AllocationLost | None = None
        #: The local address the allocation is made from (the relay candidate's base IP).
        self.local_ip: str | None = None
        self._mux = mux
        self._host = host
        self._server_name = server_name or client.server[0]
        self._ca_file = ca_file
        self._stream: trio.abc.Stream | None = None
        self._out = bytearray()
        self._out_ready = trio.Event()
        self._allocated = trio.Event()
        self._ended = trio.Event()
        self._close_requested = trio.Event()
        self._abandoned = False
        self._timer = CoreTimer(client.next_wakeup, self._on_timeout)
        self._forbidden: set[str] = set()
        self._channel_peers: dict[int, Address] = {}
        """Bound channel number -> its peer (what arrives on it goes to :attr:`wireguard`)."""
        self._headers: dict[int, bytes] = {}
        """ChannelData header per payload size, for the channel :attr:`_headers_channel`."""
        self._headers_channel = -1

    # -- construction ----------------------------------------------------------------------------

    @classmethod
    def udp(
        cls,
        mux: UdpMux,
        server: Address,
        username: str,
        password: str,
        *,
        random: Callable[[int], bytes],
        on_data: RelayDataHandler | None = None,
        on_event: RelayEventHandler | None = None,
        wireguard: WireGuardReceiver | None = None,
        **client_options: Any,
    ) -> TurnRelay:
        """An allocation over the mux's UDP socket for ``server`` (an IP literal address);
        ``random`` is the source of transaction ids."""
        server = normalize_address(server)
        client_options.setdefault("refresh_interval", UDP_REFRESH_INTERVAL)
        client = TurnClient(server, username, password, random=random, **client_options)
        return cls(client, "udp", mux=mux, on_data=on_data, on_event=on_event, wireguard=wireguard)

    @classmethod
    def stream(
        cls,
        host: Host,
        server: Address,
        username: str,
        password: str,
        *,
        random: Callable[[int], bytes],
        transport: Literal["tcp", "tls"] = "tcp",
        server_name: str | None = None,
        ca_file: str | None = None,
        on_data: RelayDataHandler | None = None,
        on_event: RelayEventHandler | None = None,
        wireguard: WireGuardReceiver | None = None,
        after_batch: Callable[[], None] | None = None,
        **client_options: Any,
    ) -> TurnRelay:
        """An allocation over its own TCP or TLS connection (made through ``host``) to
        ``server`` (an IP literal address); ``server_name`` is the TLS server name
        (default: the address)."""
        server = normalize_address(server)
        client = TurnClient(
            server, username, password, stream=True, random=random, **client_options
        )
        return cls(
            client,
            transport,
            host=host,
            server_name=server_name,
            ca_file=ca_file,
            on_data=on_data,
            on_event=on_event,
            wireguard=wireguard,
            after_batch=after_batch,
        )

    @classmethod
    def from_config(
        cls,
        mux: UdpMux,
        host: Host,
        config: TurnServerConfig,
        server: Address,
        username: str,
        password: str,
        **kwargs: Any,
    ) -> TurnRelay:
        """A relay for a configured ``[ice] turn`` entry whose host resolved to ``server``."""
        if config.transport == "udp":
            return cls.udp(mux, server, username, password, **kwargs)
        return cls.stream(
            host,
            server,
            username,
            password,
            transport=config.transport,
            server_name=config.host,
            ca_file=config.ca_file,
            **kwargs,
        )

    # -- queries ---------------------------------------------------------------------------------

    @property
    def state(self) -> AllocationState:
        return self.client.state

    @property
    def allocated(self) -> bool:
        """The allocation exists and can relay."""
        return self.client.state is AllocationState.ALLOCATED and not self._abandoned

    @property
    def relayed(self) -> Address:
        """The relayed transport address (XOR-RELAYED-ADDRESS); only once allocated."""
        if self.client.relayed is None:
            raise RuntimeFailure("the TURN allocation has no relayed address yet")
        return self.client.relayed

    @property
    def mapped(self) -> Address | None:
        """Our address as the server saw it (XOR-MAPPED-ADDRESS)."""
        return self.client.mapped

    def is_forbidden(self, peer_ip: str) -> bool:
        """The server refused a permission for this peer (403)."""
        return peer_ip in self._forbidden

    def __repr__(self) -> str:
        relayed = format_address(self.client.relayed) if self.client.relayed else "-"
        return (
            f"<TurnRelay {self.transport} {format_address(self.server)} "
            f"{self.client.state.value} relayed={relayed}>"
        )

    # -- data ------------------------------------------------------------------------------------

    def send(self, peer: Address, data: bytes | bytearray | memoryview) -> bool:
        """Relay ``data`` to ``peer``: ChannelData on a bound channel, else a Send indication
        (asking for the permission first if there is none). Synchronous; False (counted) if
        the allocation is not usable, the peer is forbidden or a stream's backlog is full."""
        client = self.client
        if not self.allocated or peer[0] in self._forbidden:
            self.counters.tx_dropped += 1
            return False
        wire = client.send(peer, bytes(data), trio.current_time())
        if self._mux is not None:
            sent = self._mux.send(wire, self.server)
        else:
            sent = self._queue(wire, droppable=True)
        self._pump()
        return sent

    def send_batch(self, peer: Address, datagrams: Sequence[bytes]) -> int:
        """Relay ``datagrams`` (in order) to ``peer``; returns how many were sent.

        On a bound channel they go as ChannelData (RFC 8656 §12.4) framed here without
        copying the payloads: over UDP one :meth:`UdpEndpoint.send_batch_prefixed` (UDP GSO
        for runs of equal size), over a stream padded to 4 bytes (§12.5) and queued for one
        write. Without a bound channel each goes through :meth:`send`. Drops are counted."""
        if not self.allocated or peer[0] in self._forbidden:
            self.counters.tx_dropped += len(datagrams)
            return 0
        number = self.client.channel_for_batch(peer, len(datagrams))
        if number is None:
            sent = 0
            for datagram in datagrams:
                sent += self.send(peer, datagram)
            return sent
        self.counters.tx_batches += 1
        if number != self._headers_channel:
            self._headers_channel = number
            self._headers = {}
        headers = self._headers
        prefixes = []
        for datagram in datagrams:
            size = len(datagram)
            head = headers.get(size)
            if head is None:
                if len(headers) >= 256:
                    headers.clear()
                head = headers[size] = channel_data_header(number, size)
            prefixes.append(head)
        if self._mux is not None:
            return self._mux.send_prefixed(prefixes, datagrams, self.server)
        if len(self._out) > MAX_STREAM_BACKLOG:
            self.counters.tx_dropped += len(datagrams)
            return 0
        out = self._out
        for head, datagram in zip(prefixes, datagrams, strict=True):
            out += head
            out += datagram
            pad = -len(datagram) & 3
            if pad:
                out += _PADDING[pad]
        self._out_ready.set()
        return len(datagrams)

    def receive_channel_data(self, data: memoryview) -> None:
        """ChannelData from the server (the mux calls this): a WireGuard payload on a bound
        channel goes straight to :attr:`wireguard` (a view, no event, no copy), a malformed
        message there is dropped and counted (RFC 8656 §12.4 lengths), everything else goes
        to :meth:`handle_datagram`."""
        if self.wireguard is None or not self._take_wireguard(data):
            self.handle_datagram(data)

    def _take_wireguard(self, data: bytes | memoryview) -> bool:
        """Hand a ChannelData message's WireGuard payload to :attr:`wireguard`; False if the
        channel is not bound or the payload is not WireGuard. A malformed one is taken:
        dropped and counted."""
        peer = self._channel_peers.get((data[0] << 8) | data[1])
        if peer is None:
            return False
        end = channel_data_end(data)
        if end < 0:
            self.counters.rx_malformed += 1
            return True
        # WireGuard: type 1-4 then three zero bytes (STUN starts 0x00/0x01 0x01-0x3F, not 0).
        if end < 8 or not 0 < data[4] <= 4 or data[5] or data[6] or data[7]:
            return False
        self.counters.rx_wireguard += 1
        assert self.wireguard is not None
        self.wireguard(memoryview(data)[4:end], peer, self)
        return True

    def bind_channel(self, peer: Address) -> None:
        """Bind a channel to ``peer`` (RFC 8656 §11) so that data goes as 4-byte-header
        ChannelData; done in the background, data goes by Send indication meanwhile."""
        if not self.allocated or peer[0] in self._forbidden:
            return
        state = self.client.channel(peer)
        if state is not None:
            return
        try:
            self.client.bind_channel(peer, trio.current_time())
        except (ValueError, RuntimeError) as exc:  # out of channel numbers, state changed
            log.debug("channel bind not started", peer=format_address(peer), error=str(exc))
        self._pump()

    def channel_bound(self, peer: Address) -> bool:
        state = self.client.channel(peer)
        return state is not None and state[1] is ChannelState.BOUND

    def create_permission(self, peer_ip: str) -> None:
        """Ask for a permission for ``peer_ip`` ahead of the first packet (no-op if one exists
        or the server already refused it)."""
        if not self.allocated or peer_ip in self._forbidden:
            return
        self.client.create_permission(peer_ip, trio.current_time())
        self._pump()

    def handle_datagram(self, data: bytes | bytearray | memoryview) -> None:
        """A datagram from the server (the mux calls this for UDP relays)."""
        try:
            self.client.handle_datagram(data, trio.current_time())
        except DecodeError:
            self.counters.rx_malformed += 1
        self._pump()

    # -- lifetime --------------------------------------------------------------------------------

    def close(self) -> None:
        """Deallocate (Refresh with LIFETIME 0) and let :meth:`run` return. Idempotent."""
        self._close_requested.set()

    def abandon(self) -> None:
        """End at once without talking to the server: the path to it changed (a new local
        address or NAT mapping), so the server no longer knows this allocation by our
        5-tuple and a deallocation could not reach it. A UDP relay detaches from the mux at
        once, so that a new allocation on the same server may attach."""
        self._abandoned = True
        self._allocated.set()
        self._end()

    async def aclose(self) -> None:
        """:meth:`close` and wait until :meth:`run` has deallocated (bounded by its
        ``close_timeout``). Only for a relay whose :meth:`run` was started."""
        self.close()
        await self._ended.wait()

    async def run(
        self,
        *,
        timeout: float = 10.0,
        close_timeout: float = 2.0,
        task_status: trio.TaskStatus[TurnRelay] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Connect (streams), allocate within ``timeout``, report ``started(self)``, then keep
        the allocation until it is lost or :meth:`close` is called (graceful deallocation,
        at most ``close_timeout``). Cancelled, it sends the deallocation without waiting.

        Raises :class:`RuntimeFailure` (before ``started``) if the allocation cannot be made.
        """
        error: RuntimeFailure | None = None
        started = False
        try:
            async with trio.open_nursery() as nursery:
                with trio.move_on_after(timeout) as connect_scope:
                    error = await self._open(nursery)
                if connect_scope.cancelled_caught:
                    error = RuntimeFailure(
                        f"cannot reach TURN server {format_address(self.server)} over "
                        f"{self.transport} within {timeout:g} s"
                    )
                if error is None:
                    nursery.start_soon(self._timer.run)
                    self.client.allocate(trio.current_time())
                    self._pump()
                    with trio.move_on_after(timeout):
                        await self._allocated.wait()
                    if self.allocated:
                        started = True
                        task_status.started(self)
                        await self._wait_end(close_timeout)
                    elif self._abandoned:
                        error = RuntimeFailure(
                            f"TURN server {format_address(self.server)}: allocation abandoned "
                            "(the path to the server changed)"
                        )
                    elif self.failure is not None:
                        error = RuntimeFailure(self.failure.reason)
                    else:
                        error = RuntimeFailure(
                            f"TURN server {format_address(self.server)}: no Allocate answer "
                            f"over {self.transport} within {timeout:g} s"
                        )
                nursery.cancel_scope.cancel()
        finally:
            if not self._abandoned and self.client.state in (
                AllocationState.ALLOCATED,
                AllocationState.ALLOCATING,
            ):
                # Cancelled from outside: tell the server once, do not wait for it.
                self.client.close(trio.current_time())
                with contextlib.suppress(Exception):
                    self._flush_transmits_now()
            self._ended.set()
            if self._mux is not None:
                self._mux.detach_relay(self)
            if self._stream is not None:
                with trio.move_on_after(1) as scope:
                    scope.shield = True
                    with contextlib.suppress(Exception):
                        await self._stream.aclose()
        if error is not None and not started:
            raise error

    async def _open(self, nursery: trio.Nursery) -> RuntimeFailure | None:
        """Attach to the mux (UDP) or connect and start the stream tasks."""
        if self._mux is not None:
            try:
                self._mux.attach_relay(self)
            except RuntimeFailure as exc:
                return exc
            self.local_ip = self._mux.local_ip_for(self.server[0])
            if self.local_ip is None:
                return RuntimeFailure(f"no route to TURN server {format_address(self.server)}")
            return None
        assert self.transport != "udp"
        assert self._host is not None
        try:
            conn = await open_stream(
                self._host,
                self._server_name if self.transport == "tls" else self.server[0],
                self.server[1],
                self.transport,
                self._ca_file,
            )
        except RuntimeFailure as exc:
            return exc
        self._stream = conn.stream
        self.local_ip = conn.local[0]
        nursery.start_soon(self._read_stream)
        nursery.start_soon(self._write_stream)
        return None

    async def _wait_end(self, close_timeout: float) -> None:
        async with trio.open_nursery() as nursery:

            async def on_close() -> None:
                await self._close_requested.wait()
                if self.allocated:
                    self.client.close(trio.current_time())
                    self._pump()
                    with trio.move_on_after(close_timeout):
                        await self._ended.wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(on_close)
            await self._ended.wait()
            nursery.cancel_scope.cancel()

    # -- internals -------------------------------------------------------------------------------

    def _queue(self, data: bytes, *, droppable: bool) -> bool:
        if droppable and len(self._out) + len(data) > MAX_STREAM_BACKLOG:
            self.counters.tx_dropped += 1
            return False
        self._out += data
        self._out_ready.set()
        return True

    def _transmit(self, data: bytes) -> None:
        if self._mux is not None:
            self._mux.send(data, self.server)
        else:
            self._queue(data, droppable=False)

    def _flush_transmits_now(self) -> None:
        for data in self.client.pop_transmits():
            if self._mux is not None:
                self._mux.send(data, self.server)
            elif self._stream is not None:
                self._out += data

    def _pump(self) -> None:
        """Send what the client queued, dispatch its events, re-arm the timer."""
        client = self.client
        busy = False
        while True:
            transmits = client.pop_transmits()
            events = client.pop_events()
            if not transmits and not events:
                break
            if transmits:
                busy = True
                for data in transmits:
                    self._transmit(data)
            for event in events:
                if not isinstance(event, PeerData):
                    busy = True
                self._dispatch(event)
        # New requests always come with a transmit, so a step without output never needs an
        # earlier wake-up; a later one only costs one early wake (the timer re-computes).
        # Relayed data alone (the bulk path) changes no timer of the client: no re-arm.
        if busy:
            self._timer.rearm()

    def _update_channels(self) -> None:
        """Rebuild the channel -> peer table from the client's bound channels."""
        self._channel_peers = (
            {number: peer for peer, number in self.client.bound_channels()}
            if self.allocated
            else {}
        )

    def _dispatch(self, event: TurnEvent) -> None:
        if isinstance(event, PeerData):
            data = event.data
            if self.wireguard is not None and _is_wireguard(data):
                self.counters.rx_wireguard += 1
                self.wireguard(memoryview(data), event.peer, self)
            elif self.on_data is not None:
                self.on_data(self, event.peer, data)
            return
        self._update_channels()
        if isinstance(event, AllocationSucceeded):
            log.info(
                "relay allocated",
                server=format_address(self.server),
                transport=self.transport,
                relayed=format_address(event.relayed),
            )
            self._allocated.set()
        elif isinstance(event, AllocationFailed | AllocationLost):
            self.failure = event
            self._allocated.set()
            self._end()
        elif isinstance(event, Deallocated):
            self._end()
        elif (
            isinstance(event, PermissionFailed)
            and event.code == 403
            and len(self._forbidden) < MAX_FORBIDDEN
        ):
            self._forbidden.add(event.peer_ip)
        if self.on_event is not None:
            self.on_event(self, event)

    def _on_timeout(self, now: float) -> None:
        self.client.handle_timeout(now)
        self._pump()

    async def _read_stream(self) -> None:
        stream = self._stream
        assert stream is not None
        while True:
            try:
                chunk = await stream.receive_some(_RECV_SIZE)
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                self._lost(f"connection broke: {exc}")
                return
            if not chunk:
                self._lost("the server closed the connection")
                return
            try:
                self.client.handle_stream_data(
                    chunk,
                    trio.current_time(),
                    self._take_wireguard if self.wireguard is not None else None,
                )
            except StreamFramingError as exc:
                self._lost(f"unframeable stream: {exc}")
                return
            self._pump()
            if self.after_batch is not None:
                self.after_batch()

    async def _write_stream(self) -> None:
        stream = self._stream
        assert stream is not None
        while True:
            await self._out_ready.wait()
            self._out_ready = trio.Event()
            if not self._out:
                continue
            data = bytes(self._out)
            self._out.clear()
            try:
                await stream.send_all(data)
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                self._lost(f"send failed: {exc}")
                return

    def _end(self) -> None:
        """The allocation is gone: stop taking the server's datagrams at once (a new relay
        for the same server may attach before :meth:`run` has unwound)."""
        if self._mux is not None:
            self._mux.detach_relay(self)
        self._ended.set()

    def _lost(self, reason: str) -> None:
        self.client.connection_lost(trio.current_time(), reason)
        self._pump()
        self._ended.set()


__all__ = [
    "MAX_STREAM_BACKLOG",
    "RelayCounters",
    "RelayDataHandler",
    "RelayEventHandler",
    "RelayTransport",
    "TurnRelay",
    "WireGuardReceiver",
]
