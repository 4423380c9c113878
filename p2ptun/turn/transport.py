"""Trio shell for :class:`p2ptun.turn.client.TurnClient`: one allocation over UDP, TCP or TLS.

The shell only moves bytes and time: a reader task feeds what the server sends into the
client, a timer task calls ``handle_timeout`` at ``next_wakeup()``, and after each step the
client's transmits are written to the socket and its events dispatched. All protocol logic
(RFC 8656) stays in the sans-I/O core.

::

    async with open_turn_session("203.0.113.10", 3478, "user", "pass", transport="tls",
                                 ca_file="ca.pem") as turn:
        turn.relayed                                  # ("203.0.113.10", 50123)
        await turn.create_permission(peer)            # or: await turn.bind_channel(peer)
        await turn.send(peer, b"hello")
        event = await turn.receive()                  # PeerData(peer, data, channel)

Leaving the block deallocates (Refresh with LIFETIME 0, bounded by a few seconds). A failed
Allocate raises :class:`p2ptun.errors.RuntimeFailure` with the client's one-line reason.

Sharing the node's UDP socket: the core does not care where bytes come from. The node creates a
:class:`TurnClient` itself, passes datagrams whose source is the TURN server (STUN and
ChannelData kinds of :class:`p2ptun.net.udp.UdpEndpoint`) to ``client.handle_datagram``, sends
``client.pop_transmits()`` with ``endpoint.send(data, server)`` and runs the same timer loop;
this module's UDP path is that arrangement with a socket of its own.

TLS (``turns:``, RFC 8656 §3.1 / RFC 7065): ``ssl.create_default_context`` — the server
certificate is verified against the system CAs, or against ``ca_file`` when given — and the
server name (SNI and hostname check) is the configured host.
"""

from __future__ import annotations

import ipaddress
import math
import os
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Literal

import trio

from p2ptun.addr import Address, format_address
from p2ptun.config import TurnServerConfig
from p2ptun.errors import DecodeError, RuntimeFailure
from p2ptun.log import get_logger
from p2ptun.turn.client import (
    AllocationFailed,
    AllocationLost,
    AllocationRefreshed,
    AllocationState,
    AllocationSucceeded,
    ChannelBindFailed,
    ChannelBound,
    ChannelState,
    Deallocated,
    PeerData,
    PermissionCreated,
    PermissionFailed,
    PermissionState,
    TurnClient,
    TurnEvent,
)
from p2ptun.turn.client_stream import StreamFramingError
from p2ptun.turn.transport_stun import resolve

log = get_logger("turn.transport")

Transport = Literal["udp", "tcp", "tls"]
_RECV_SIZE = 65536 + 64


class _Waiter:
    """One pending create_permission / bind_channel call."""

    __slots__ = ("error", "event")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.error: str | None = None


class TurnSession:
    """A running allocation. Made by :func:`open_turn_session`; see the module docstring."""

    def __init__(
        self,
        client: TurnClient,
        *,
        sock: trio.socket.SocketType | None = None,
        stream: trio.abc.Stream | None = None,
        queue_size: int = 256,
        on_event: Callable[[TurnEvent], None] | None = None,
    ) -> None:
        if (sock is None) == (stream is None):
            raise ValueError("give either a UDP socket or a stream")
        self.client = client
        self.server: Address = client.server
        self._sock = sock
        self._stream = stream
        self._send_lock = trio.StrictFIFOLock()
        self._on_event = on_event
        self._wake = trio.Event()
        self._allocated = trio.Event()
        self._closed = trio.Event()
        self._permission_waiters: dict[str, list[_Waiter]] = {}
        self._channel_waiters: dict[Address, list[_Waiter]] = {}
        self._data_send, self._data_receive = trio.open_memory_channel[PeerData](queue_size)
        #: The event that ended the allocation, if it failed or was lost.
        self.failure: AllocationFailed | AllocationLost | None = None
        self.refreshes = 0
        self.rx_dropped = 0
        self.rx_malformed = 0

    # -- public API -----------------------------------------------------------------------

    @property
    def relayed(self) -> Address:
        """The relayed transport address (XOR-RELAYED-ADDRESS)."""
        assert self.client.relayed is not None
        return self.client.relayed

    @property
    def mapped(self) -> Address | None:
        """Our address as the server saw it (XOR-MAPPED-ADDRESS)."""
        return self.client.mapped

    async def create_permission(self, peer: Address | str, timeout: float = 10.0) -> None:
        """Install a permission for the peer's IP (RFC 8656 §9); waits for the server.
        Raises :class:`RuntimeFailure` if it is refused or times out."""
        self._check_alive()
        ip = peer if isinstance(peer, str) else peer[0]
        self.client.create_permission(ip, trio.current_time())
        if self.client.permission_state(ip) is PermissionState.INSTALLED:
            return
        waiter = _Waiter()
        self._permission_waiters.setdefault(self.client_ip(ip), []).append(waiter)
        await self._pump()
        await self._wait(waiter, timeout, f"CreatePermission for {ip}")

    async def bind_channel(self, peer: Address, timeout: float = 10.0) -> int:
        """Bind a channel to ``peer`` (RFC 8656 §11) and return its number once bound.
        Raises :class:`RuntimeFailure` if it is refused or times out."""
        self._check_alive()
        number = self.client.bind_channel(peer, trio.current_time())
        key = (self.client_ip(peer[0]), int(peer[1]))
        state = self.client.channel(key)
        if state is not None and state[1] is ChannelState.BOUND:
            return number
        waiter = _Waiter()
        self._channel_waiters.setdefault(key, []).append(waiter)
        await self._pump()
        await self._wait(waiter, timeout, f"ChannelBind for {format_address(peer)}")
        return number

    async def send(self, peer: Address, data: bytes) -> None:
        """Relay ``data`` to ``peer`` (ChannelData if a channel is bound, else a Send
        indication)."""
        self._check_alive()
        wire = self.client.send(peer, data, trio.current_time())
        await self._transmit([wire])
        await self._pump()

    async def receive(self) -> PeerData:
        """The next data relayed from a peer. Raises :class:`RuntimeFailure` once the
        allocation is gone."""
        try:
            return await self._data_receive.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            reason = self.failure.reason if self.failure else "the TURN allocation was closed"
            raise RuntimeFailure(reason) from None

    @staticmethod
    def client_ip(host: str) -> str:
        """The canonical text of an IP address (as the client keys its permissions)."""
        return str(ipaddress.ip_address(host.split("%", 1)[0]))

    # -- internals --------------------------------------------------------------------------

    def _check_alive(self) -> None:
        if self.failure is not None:
            raise RuntimeFailure(self.failure.reason)
        if self.client.state is not AllocationState.ALLOCATED:
            raise RuntimeFailure(f"the TURN allocation is {self.client.state.value}")

    async def _wait(self, waiter: _Waiter, timeout: float, what: str) -> None:
        with trio.move_on_after(timeout):
            await waiter.event.wait()
        if not waiter.event.is_set():
            raise RuntimeFailure(f"{what}: no answer within {timeout:g} s")
        if waiter.error is not None:
            raise RuntimeFailure(waiter.error)

    async def _transmit(self, messages: list[bytes]) -> None:
        if not messages:
            return
        async with self._send_lock:
            try:
                if self._sock is not None:
                    for data in messages:
                        await self._sock.sendto(data, self.server)
                else:
                    assert self._stream is not None
                    await self._stream.send_all(b"".join(messages))
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                if self._sock is not None:
                    log.debug("udp send failed", error=str(exc))  # UDP: like a lost datagram
                else:
                    self.client.connection_lost(trio.current_time(), f"send failed: {exc}")

    async def _pump(self) -> None:
        """Send what the client queued, dispatch its events, re-arm the timer."""
        while True:
            transmits = self.client.pop_transmits()
            events = self.client.pop_events()
            if not transmits and not events:
                break
            await self._transmit(transmits)
            for event in events:
                self._dispatch(event)
        self._wake.set()

    def _dispatch(self, event: TurnEvent) -> None:
        if self._on_event is not None:
            self._on_event(event)
        if isinstance(event, PeerData):
            try:
                self._data_send.send_nowait(event)
            except trio.WouldBlock:
                self.rx_dropped += 1
            except trio.ClosedResourceError:
                pass
        elif isinstance(event, AllocationSucceeded):
            self._allocated.set()
        elif isinstance(event, AllocationRefreshed):
            self.refreshes += 1
        elif isinstance(event, AllocationFailed | AllocationLost):
            self.failure = event
            self._allocated.set()
            self._closed.set()
            self._data_send.close()
            for waiters in (*self._permission_waiters.values(), *self._channel_waiters.values()):
                for waiter in waiters:
                    waiter.error = event.reason
                    waiter.event.set()
            self._permission_waiters.clear()
            self._channel_waiters.clear()
        elif isinstance(event, Deallocated):
            self._closed.set()
            self._data_send.close()
        elif isinstance(event, PermissionCreated | PermissionFailed):
            error = event.reason if isinstance(event, PermissionFailed) else None
            for waiter in self._permission_waiters.pop(event.peer_ip, []):
                waiter.error = error
                waiter.event.set()
        elif isinstance(event, ChannelBound | ChannelBindFailed):
            error = event.reason if isinstance(event, ChannelBindFailed) else None
            for waiter in self._channel_waiters.pop(event.peer, []):
                waiter.error = error
                waiter.event.set()

    async def _timer(self) -> None:
        while not self._closed.is_set():
            wakeup = self.client.next_wakeup()
            self._wake = trio.Event()
            with trio.move_on_at(math.inf if wakeup is None else wakeup):
                await self._wake.wait()
            self.client.handle_timeout(trio.current_time())
            await self._pump()

    async def _read_udp(self) -> None:
        assert self._sock is not None
        while not self._closed.is_set():
            try:
                data, source = await self._sock.recvfrom(_RECV_SIZE)
            except OSError:
                continue  # ICMP report for an earlier datagram
            if (source[0], source[1]) != self.server:
                continue
            try:
                self.client.handle_datagram(data, trio.current_time())
            except DecodeError:
                self.rx_malformed += 1
            await self._pump()

    async def _read_stream(self) -> None:
        assert self._stream is not None
        while not self._closed.is_set():
            try:
                chunk = await self._stream.receive_some(_RECV_SIZE)
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                self.client.connection_lost(trio.current_time(), f"connection broke: {exc}")
                await self._pump()
                return
            if not chunk:
                self.client.connection_lost(trio.current_time(), "the server closed the connection")
                await self._pump()
                return
            try:
                self.client.handle_stream_data(chunk, trio.current_time())
            except StreamFramingError as exc:
                self.client.connection_lost(trio.current_time(), f"unframeable stream: {exc}")
                await self._pump()
                return
            await self._pump()

    async def _deallocate(self, timeout: float) -> None:
        with trio.move_on_after(timeout) as scope:
            scope.shield = True
            if self.client.state is AllocationState.ALLOCATED:
                self.client.close(trio.current_time())
                await self._pump()
                await self._closed.wait()
        if self._stream is not None:
            with trio.move_on_after(1) as scope:
                scope.shield = True
                await self._stream.aclose()


async def connect(
    host: str,
    port: int,
    transport: Transport,
    ca_file: str | None = None,
    local_host: str | None = None,
) -> tuple[Address, trio.socket.SocketType | None, trio.abc.Stream | None]:
    """Resolve ``host`` and open what a TURN client talks to the server over:
    ``(server address, UDP socket or None, TCP/TLS stream or None)``.

    UDP: a socket of the server's family bound to ``local_host`` (default: any address).
    TCP: a connected stream (trio sets TCP_NODELAY). TLS: that stream wrapped in TLS
    verified against the system CAs or ``ca_file``, with ``host`` as the server name, the
    handshake done. Raises :class:`RuntimeFailure` with one line; nothing is left open then.
    Also used by :class:`p2ptun.net.turn_shared.TurnRelay` for its TCP/TLS allocations.
    """
    kind = socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM
    server = await resolve(host, port, kind)
    shown = format_address(server)
    family = socket.AF_INET6 if ":" in server[0] else socket.AF_INET
    if transport == "udp":
        sock = trio.socket.socket(family, socket.SOCK_DGRAM)
        try:
            await sock.bind((local_host or ("::" if family == socket.AF_INET6 else "0.0.0.0"), 0))
        except OSError as exc:
            sock.close()
            raise RuntimeFailure(f"cannot bind a UDP socket: {exc.strerror}") from None
        return server, sock, None
    try:
        tcp = await trio.open_tcp_stream(server[0], server[1], local_address=local_host)
    except OSError as exc:
        reason = exc.strerror or str(exc).rsplit(": ", 1)[-1]
        raise RuntimeFailure(f"cannot connect to TURN server {shown}: {reason}") from None
    if transport == "tcp":
        return server, None, tcp
    try:
        context = ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        await tcp.aclose()
        raise RuntimeFailure(f"cannot load CA file {ca_file!r}: {exc}") from None
    tls = trio.SSLStream(tcp, context, server_hostname=host)
    try:
        await tls.do_handshake()
    except (ssl.SSLError, trio.BrokenResourceError, OSError) as exc:
        cause = exc.__cause__ if isinstance(exc, trio.BrokenResourceError) else exc
        await tcp.aclose()
        raise RuntimeFailure(f"TLS handshake with TURN server {shown} failed: {cause}") from None
    return server, None, tls


@asynccontextmanager
async def open_turn_session(
    host: str,
    port: int,
    username: str,
    password: str,
    *,
    transport: Transport = "udp",
    ca_file: str | None = None,
    local_host: str | None = None,
    timeout: float = 15.0,
    close_timeout: float = 5.0,
    random: Callable[[int], bytes] = os.urandom,
    on_event: Callable[[TurnEvent], None] | None = None,
    **client_options: Any,
) -> AsyncIterator[TurnSession]:
    """Connect to a TURN server, allocate, and yield the :class:`TurnSession`.

    ``client_options`` go to :class:`TurnClient` (``lifetime``, ``refresh_interval``,
    ``permission_refresh``, ...). Raises :class:`RuntimeFailure` if the connection or the
    Allocate fails (the message is the client's reason) or nothing succeeds within
    ``timeout``. On exit the allocation is released (waiting at most ``close_timeout``).
    """
    with trio.move_on_after(timeout) as connect_scope:
        server, sock, stream = await connect(host, port, transport, ca_file, local_host)
    if connect_scope.cancelled_caught:
        raise RuntimeFailure(f"cannot reach TURN server {host}:{port} within {timeout:g} s")
    client = TurnClient(
        server, username, password, stream=stream is not None, random=random, **client_options
    )
    session = TurnSession(client, sock=sock, stream=stream, on_event=on_event)
    error: BaseException | None = None
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(session._timer)
            nursery.start_soon(session._read_udp if sock is not None else session._read_stream)
            client.allocate(trio.current_time())
            await session._pump()
            with trio.move_on_after(timeout):
                await session._allocated.wait()
            if client.state is AllocationState.ALLOCATED:
                try:
                    yield session
                except Exception as exc:  # re-raised below, outside the nursery
                    error = exc
                finally:
                    await session._deallocate(close_timeout)
            elif session.failure is None:
                shown = format_address(server)
                error = RuntimeFailure(
                    f"TURN server {shown}: no Allocate answer over {transport} within {timeout:g} s"
                )
            else:
                error = RuntimeFailure(session.failure.reason)
            nursery.cancel_scope.cancel()
    finally:
        if sock is not None:
            sock.close()
        if stream is not None:
            with trio.move_on_after(1) as scope:
                scope.shield = True
                await stream.aclose()
    if error is not None:
        raise error


def session_for(
    config: TurnServerConfig, username: str | None = None, password: str | None = None, **kw: Any
) -> Any:
    """:func:`open_turn_session` for a configured ``[ice] turn`` entry; ``username`` and
    ``password`` override (or supply, for rendezvous-issued credentials) the configured ones."""
    user = username if username is not None else config.username
    secret = password if password is not None else config.password
    if user is None or secret is None:
        raise RuntimeFailure(f"{config.url}: no TURN credentials configured or issued")
    return open_turn_session(
        config.host,
        config.port,
        user,
        secret,
        transport=config.transport,
        ca_file=config.ca_file,
        **kw,
    )
