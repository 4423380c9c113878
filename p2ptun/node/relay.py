"""The node's TURN allocations: one :class:`TurnRelay` per configured TURN server.

A relay is a node-level resource shared by every peer: its relayed address is a local ICE
candidate of every peer's agent, the server keeps one permission (and, for the data path, one
channel) per peer address, and whatever the server relays back — ICE checks (STUN) or
WireGuard datagrams — is handed to :class:`~p2ptun.node.mux.UdpMux`, which routes it like a
datagram that arrived on the socket, with the relayed address as the local base.

Transport (ARCHITECTURE.md §2): over UDP the allocation lives on the node's one UDP socket of
the server's family; the mux passes every datagram whose source is the server to
:meth:`TurnRelay.handle_datagram`. Over TCP or TLS (``turn:…?transport=tcp``, ``turns:``) the
relay owns its connection: a reader task feeds the byte stream into the client, a writer task
drains a bounded output buffer (the data path's :meth:`TurnRelay.send` is synchronous and never
waits: when the buffer is full, datagrams are dropped and counted, as UDP would).

The protocol is the sans-I/O :class:`~p2ptun.turn.client.TurnClient`; this shell only moves
bytes and time. :meth:`TurnRelay.run` allocates, keeps the allocation refreshed, and returns
when it is lost or closed; the owner decides whether to try again.
"""

from __future__ import annotations

import enum
import math
import os
import socket
import ssl
from collections.abc import Callable

import trio

from p2ptun.addr import Address, format_address
from p2ptun.config import TurnServerConfig
from p2ptun.errors import DecodeError, RuntimeFailure
from p2ptun.log import get_logger
from p2ptun.turn.client import (
    AllocationFailed,
    AllocationLost,
    AllocationState,
    AllocationSucceeded,
    ChannelBindFailed,
    Deallocated,
    PeerData,
    PermissionFailed,
    TurnClient,
    TurnEvent,
)
from p2ptun.turn.client_stream import StreamFramingError

log = get_logger("node.relay")

MAX_STREAM_BUFFER = 4 * 1024 * 1024
"""Bytes queued for a TCP/TLS relay before datagrams are dropped."""
UDP_REFRESH_INTERVAL = 60.0
"""Refresh UDP allocations at least this often: it keeps the NAT binding to the server."""
CONNECT_TIMEOUT = 10.0


class RelayState(enum.Enum):
    CONNECTING = "connecting"
    ALLOCATING = "allocating"
    ALLOCATED = "allocated"
    FAILED = "failed"
    CLOSED = "closed"


class TurnRelay:
    """One allocation on one TURN server, shared by all peers of the node.

    ``server`` is the resolved server address. ``send_udp(data, server)`` sends on the node's
    shared socket (UDP relays only). ``on_data(relay, peer, data)`` receives relayed payloads;
    ``on_change(relay)`` hears about allocation, loss and closing. ``local_ip`` is filled in
    by the owner: the local address the allocation is made from (for the candidate
    foundation).
    """

    def __init__(
        self,
        config: TurnServerConfig,
        server: Address,
        username: str,
        password: str,
        *,
        send_udp: Callable[[bytes, Address], object],
        on_data: Callable[[TurnRelay, Address, bytes], None],
        on_change: Callable[[TurnRelay], None],
        local_ip: str,
        random: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.config = config
        self.server = server
        self.transport = config.transport
        self.local_ip = local_ip
        stream = config.transport != "udp"
        self.client = TurnClient(
            server,
            username,
            password,
            stream=stream,
            random=random,
            refresh_interval=None if stream else UDP_REFRESH_INTERVAL,
        )
        self._send_udp = send_udp
        self._on_data = on_data
        self._on_change = on_change
        self.state = RelayState.CONNECTING if stream else RelayState.ALLOCATING
        self.failure: str | None = None
        self.tx_dropped = 0
        self.rx_malformed = 0
        self._stream: trio.abc.Stream | None = None
        self._out = bytearray()
        self._writer_wake = trio.Event()
        self._timer_wake = trio.Event()
        self._done = trio.Event()

    # -- queries ----------------------------------------------------------------------------

    @property
    def relayed(self) -> Address | None:
        return self.client.relayed if self.state is RelayState.ALLOCATED else None

    @property
    def mapped(self) -> Address | None:
        return self.client.mapped

    @property
    def name(self) -> str:
        return f"{self.config.url} ({format_address(self.server)})"

    def __repr__(self) -> str:
        return f"<TurnRelay {self.name} {self.state.value}>"

    # -- running ----------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Connect (TCP/TLS), allocate, keep refreshing; return when the allocation failed,
        was lost or was closed (see :attr:`state` and :attr:`failure`)."""
        task_status.started()
        try:
            async with trio.open_nursery() as nursery:
                if self.transport != "udp":
                    try:
                        with trio.fail_after(CONNECT_TIMEOUT):
                            self._stream = await self._connect()
                    except (RuntimeFailure, trio.TooSlowError) as exc:
                        reason = (
                            str(exc)
                            if isinstance(exc, RuntimeFailure)
                            else f"cannot connect to TURN server {self.name} in time"
                        )
                        self._finish(RelayState.FAILED, reason)
                        return
                    self.state = RelayState.ALLOCATING
                    nursery.start_soon(self._read_stream, self._stream)
                    nursery.start_soon(self._write_stream, self._stream)
                nursery.start_soon(self._timer)
                self.client.allocate(trio.current_time())
                self.pump()
                await self._done.wait()
                nursery.cancel_scope.cancel()
        finally:
            if self._stream is not None:
                with trio.move_on_after(1) as scope:
                    scope.shield = True
                    await self._stream.aclose()
                self._stream = None

    async def _connect(self) -> trio.abc.Stream:
        host, port = self.server
        try:
            tcp = await trio.open_tcp_stream(host, port)
        except OSError as exc:
            reason = exc.strerror or str(exc).rsplit(": ", 1)[-1]
            raise RuntimeFailure(f"cannot connect to TURN server {self.name}: {reason}") from None
        tcp.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.transport == "tcp":
            return tcp
        try:
            context = ssl.create_default_context(cafile=self.config.ca_file)
        except (OSError, ssl.SSLError) as exc:
            await tcp.aclose()
            raise RuntimeFailure(f"cannot load CA file {self.config.ca_file!r}: {exc}") from None
        tls = trio.SSLStream(tcp, context, server_hostname=self.config.host)
        try:
            await tls.do_handshake()
        except (ssl.SSLError, trio.BrokenResourceError, OSError) as exc:
            cause = exc.__cause__ if isinstance(exc, trio.BrokenResourceError) else exc
            await tcp.aclose()
            raise RuntimeFailure(f"TLS handshake with TURN server {self.name}: {cause}") from None
        return tls

    async def close(self, timeout: float = 2.0) -> None:
        """Release the allocation (Refresh with LIFETIME 0), waiting at most ``timeout``."""
        if self._done.is_set():
            return
        with trio.move_on_after(timeout) as scope:
            scope.shield = True
            if self.client.state is AllocationState.ALLOCATED:
                self.client.close(trio.current_time())
                self.pump()
                await self._done.wait()
        self._finish(RelayState.CLOSED, None)

    def abandon(self) -> None:
        """Stop without talking to the server (the path to it is gone)."""
        self._finish(RelayState.CLOSED, None)

    def _finish(self, state: RelayState, reason: str | None) -> None:
        if self._done.is_set():
            return
        self.state = state
        self.failure = reason
        self._done.set()
        self._writer_wake.set()
        self._timer_wake.set()
        self._on_change(self)

    async def _timer(self) -> None:
        while not self._done.is_set():
            wake = self.client.next_wakeup()
            self._timer_wake = trio.Event()
            with trio.move_on_at(math.inf if wake is None else wake):
                await self._timer_wake.wait()
            if self._done.is_set():
                return
            self.client.handle_timeout(trio.current_time())
            self.pump()

    # -- bytes in ---------------------------------------------------------------------------

    def handle_datagram(self, data: bytes | bytearray | memoryview) -> None:
        """A datagram from the server on the shared UDP socket (STUN or ChannelData)."""
        try:
            self.client.handle_datagram(data, trio.current_time())
        except DecodeError:
            self.rx_malformed += 1
        self.pump(wake_timer=False)

    async def _read_stream(self, stream: trio.abc.Stream) -> None:
        while True:
            try:
                chunk = await stream.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                self.client.connection_lost(trio.current_time(), f"connection broke: {exc}")
                self.pump()
                return
            if not chunk:
                self.client.connection_lost(trio.current_time(), "the server closed the connection")
                self.pump()
                return
            try:
                self.client.handle_stream_data(chunk, trio.current_time())
            except StreamFramingError as exc:
                self.client.connection_lost(trio.current_time(), f"unframeable stream: {exc}")
            self.pump(wake_timer=False)

    # -- bytes out --------------------------------------------------------------------------

    def _transmit(self, wire: bytes) -> None:
        if self.transport == "udp":
            self._send_udp(wire, self.server)
            return
        if self._stream is None or len(self._out) + len(wire) > MAX_STREAM_BUFFER:
            self.tx_dropped += 1
            return
        self._out += wire
        self._writer_wake.set()

    async def _write_stream(self, stream: trio.abc.Stream) -> None:
        while True:
            if not self._out:
                self._writer_wake = trio.Event()
                await self._writer_wake.wait()
                if self._done.is_set() and not self._out:
                    return
                continue
            data = bytes(self._out)
            self._out.clear()
            try:
                await stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                self.client.connection_lost(trio.current_time(), f"send failed: {exc}")
                self.pump()
                return

    def send(self, peer: Address, data: bytes) -> None:
        """Relay ``data`` to ``peer`` (ChannelData once a channel is bound, else a Send
        indication). Synchronous: the data path calls it per datagram."""
        if self.state is not RelayState.ALLOCATED:
            self.tx_dropped += 1
            return
        wire = self.client.send(peer, data, trio.current_time())
        self._transmit(wire)
        self.pump(wake_timer=False)  # a first Send may have asked for a permission

    def bind_channel(self, peer: Address) -> None:
        """Bind a channel to ``peer`` (data then goes as 4-byte-header ChannelData)."""
        if self.state is RelayState.ALLOCATED:
            self.client.bind_channel(peer, trio.current_time())
            self.pump()

    def create_permission(self, peer: Address) -> None:
        if self.state is RelayState.ALLOCATED:
            self.client.create_permission(peer, trio.current_time())
            self.pump()

    # -- events -----------------------------------------------------------------------------

    def pump(self, *, wake_timer: bool = True) -> None:
        """Send what the client queued, dispatch its events, re-arm the timer (always, or
        with ``wake_timer=False`` only when the client had something to say)."""
        busy = False
        while True:
            transmits = self.client.pop_transmits()
            events = self.client.pop_events()
            if not transmits and not events:
                break
            for wire in transmits:
                self._transmit(wire)
                busy = True
            for event in events:
                self._dispatch(event)
                busy = busy or not isinstance(event, PeerData)
        if wake_timer or busy:
            self._timer_wake.set()

    def _dispatch(self, event: TurnEvent) -> None:
        if isinstance(event, PeerData):
            self._on_data(self, event.peer, event.data)
        elif isinstance(event, AllocationSucceeded):
            self.state = RelayState.ALLOCATED
            log.info(
                "relay allocated",
                server=self.name,
                relayed=format_address(event.relayed),
                mapped=format_address(event.mapped) if event.mapped else "-",
                lifetime=event.lifetime,
            )
            self._on_change(self)
        elif isinstance(event, AllocationFailed):
            log.warning("relay allocation failed", server=self.name, reason=event.reason)
            self._finish(RelayState.FAILED, event.reason)
        elif isinstance(event, AllocationLost):
            log.warning("relay allocation lost", server=self.name, reason=event.reason)
            self._finish(RelayState.FAILED, event.reason)
        elif isinstance(event, Deallocated):
            log.info("relay released", server=self.name)
            self._finish(RelayState.CLOSED, None)
        elif isinstance(event, PermissionFailed | ChannelBindFailed):
            # Typically a peer candidate in a range the server refuses (403): normal.
            log.debug("relay request failed", server=self.name, reason=event.reason)
