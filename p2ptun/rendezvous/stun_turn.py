"""The embedded STUN and TURN servers' trio shell.

:class:`StunTurnService` owns the sockets around the sans-I/O cores: the Binding server
(:func:`p2ptun.stun.handle_binding`) and, when ``[turn]`` is configured, the TURN server
(:class:`p2ptun.turn.server.TurnServer`, RFC 8656). Use it in two steps, so that every listen
address is bound (or the start fails with one clear line) before anything is served::

    service = await StunTurnService.bind(host, cfg.stun, cfg.turn)  # RuntimeFailure if not
    async with trio.open_nursery() as nursery:
        nursery.start_soon(service.serve)

- UDP on every ``[stun] listen`` address: STUN Binding, TURN requests, Send indications and
  ChannelData (RFC 8656 §3.1: TURN runs on the STUN port). A wildcard listener (the default,
  ``0.0.0.0:3478``) learns each datagram's local address (``IP_PKTINFO``): a client's 5-tuple
  has the address it sent to as the server's (RFC 8656 §2.2: two server addresses, two
  5-tuples), and everything for that client — Binding and TURN responses, Data indications,
  ChannelData — leaves from that address, as from a listener bound to it (coturn binds one
  socket per address for this). A client that sees its answer come from another address drops
  it. Without the local address (``P2PTUN_PKTINFO=off``) the 5-tuple has the wildcard and the
  kernel picks the source.
- TCP on the same addresses, and TLS on ``[turn] tls_listen``: STUN and ChannelData framed on
  the stream (RFC 8489 §6.2.2, RFC 8656 §12.5); each connection is its own 5-tuple and its
  allocation ends with it. Connections are bounded from the moment they are accepted (a TLS
  handshake in progress counts): :data:`MAX_CONNECTIONS` in all, of which the oldest that
  never authenticated makes room for a new one, and :data:`MAX_CONNECTIONS_PER_SOURCE` per
  source; a connection is closed :data:`IDLE_TIMEOUT` after its last authenticated request
  unless its allocation lives (unauthenticated Bindings keep nothing open; the deadline is
  checked again when it passes, so an allocation that expired or a Refresh that extended it
  is seen); what waits to be written to one is bounded in frames and bytes
  (:data:`STREAM_QUEUE`, :data:`STREAM_QUEUE_BYTES`), the rest dropped and counted.
- One UDP relay socket per allocation, bound where the core asks (through the
  :class:`~p2ptun.net.ports.Host`); each socket's task wakes once per readiness and drains it
  into receive buffers shared by every UDP socket of the service (no per-packet channel hops,
  no buffers per allocation).
- Every UDP socket is a :class:`~p2ptun.net.ports.DatagramPort` drained by the endpoint's own
  loop; what the batch holds goes to a receiver of this shell (:class:`_ClientReceiver` on a
  listener, :class:`_PeerReceiver` on a relay socket), which relays the batch at its end.
- The data path relays a whole drained batch: ChannelData both ways is forwarded from views
  into shared receive buffers, the core's checks (allocation, channel, permission) looked up
  once per client/peer and channel in a batch (:meth:`TurnServer.channel_route`,
  :meth:`TurnServer.peer_route`), and sent per destination with UDP GSO (GRO on receive).
- One timer task drives the core's expiries: it sleeps until :meth:`TurnServer.next_wakeup`
  (the earliest allocation, permission or channel expiry, RFC 8656 §6, §9, §12) and is moved
  earlier when a request brings that time closer, so an idle server sleeps between expiries.
  Expiry is exact to the clock: the timer runs at the deadline, and the data path checks the
  expiry times itself, so nothing outlives its lifetime while the timer sleeps. The wall-clock
  offset the core needs for REST-API credential expiry is refreshed before every request.
"""

from __future__ import annotations

import errno
import ipaddress
import ssl
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass, fields

import trio

from p2ptun.addr import Address, format_address, is_ipv6, source_key
from p2ptun.config import StunServerSettings, TurnServerSettings
from p2ptun.errors import ConfigError, RuntimeFailure
from p2ptun.log import get_logger
from p2ptun.net.ports import Connection, DatagramPort, Host, Listener
from p2ptun.net.timer import CoreTimer
from p2ptun.net.wakeup import Wakeup
from p2ptun.rendezvous.behavior import BehaviorServer
from p2ptun.stun import (
    channel_data_end,
    channel_data_frame_length,
    channel_data_header,
    handle_binding,
    message_length,
)
from p2ptun.stun.behavior import ServerAddresses, is_binding_request
from p2ptun.turn.server import (
    MAX_RELAY_PAYLOAD,
    CloseRelay,
    FiveTuple,
    OpenRelay,
    Output,
    ToClient,
    ToPeer,
    Transport,
    TurnServer,
    TurnServerOptions,
)

log = get_logger("rendezvous.stun_turn")

#: What a client connection can raise when it breaks; it ends that connection only.
_STREAM_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError, OSError)
#: Largest frame accepted on a stream (a STUN message or padded ChannelData).
MAX_STREAM_FRAME = 0xFFFF + 20
MAX_CONNECTIONS = 1024
"""Connections served at once, TCP and TLS together, counted from accept (TLS handshakes in
progress included); past it the oldest connection that never authenticated is closed for a new
one, or the new one is refused."""
MAX_CONNECTIONS_PER_SOURCE = 64
"""Connections from one source (an IPv4 address, an IPv6 /64); more are refused at once."""
IDLE_TIMEOUT = 120.0
"""A connection is closed this long after its last authenticated request (or its opening),
unless its allocation lives: only authenticated progress keeps it open."""
STREAM_QUEUE = 256
"""Frames queued for one stream client before further ones are dropped..."""
STREAM_QUEUE_BYTES = 256 * 1024
"""...and bytes (a client that does not read holds at most this much, plus one write)."""
_WRITE_CHUNK = 64 * 1024
"""Bytes the writer takes off the queue for one write."""
#: Clients whose 5-tuple objects a UDP listener keeps per local address (rebuilt when the
#: table is full).
MAX_FIVE_TUPLES = 4096
#: Local addresses a wildcard listener keeps 5-tuple tables for.
MAX_LOCAL_ADDRESSES = 64
#: ChannelData headers (channel number and length) kept for reuse.
MAX_CHANNEL_HEADS = 4096
TLS_HANDSHAKE_TIMEOUT = 10.0
"""A TLS handshake not done within this is abandoned."""

#: Datagrams gathered per (relay socket, peer) in one batch.
_Gathered = dict[tuple[Address, Address], list[bytes | memoryview]]


@dataclass
class ShellCounters:
    """Drops and events of the I/O layer (the core counts protocol drops)."""

    connections: int = 0
    connections_rejected: int = 0
    #: Connections closed to make room: the oldest that never authenticated.
    connections_evicted: int = 0
    #: Connections closed because no authenticated request came within IDLE_TIMEOUT.
    idle_closed: int = 0
    tls_handshake_failures: int = 0
    connection_errors: int = 0
    stream_garbage: int = 0
    stream_queue_full: int = 0
    relay_send_failed: int = 0
    relay_recv_errors: int = 0
    relays_opened: int = 0
    relays_closed: int = 0

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _tls_context(turn: TurnServerSettings, config_path: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    assert turn.tls_cert is not None and turn.tls_key is not None
    try:
        context.load_cert_chain(turn.tls_cert, turn.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            config_path, "turn.tls_cert", f"cannot load the certificate and key: {exc}"
        ) from None
    return context


class StunTurnService:
    """The bound sockets and the cores; :meth:`serve` runs them until cancelled."""

    def __init__(
        self,
        host: Host,
        udp: list[tuple[Address, DatagramPort]],
        tcp: list[tuple[Address, Listener]],
        tls: list[tuple[Address, Listener]],
        turn: TurnServer | None,
        tls_context: ssl.SSLContext | None,
        behavior: BehaviorServer | None = None,
    ) -> None:
        self.host = host
        self.turn = turn
        #: The RFC 5780 sockets (``[stun] alternate``), or None.
        self.behavior = behavior
        self.counters = ShellCounters()
        self._udp: dict[Address, DatagramPort] = dict(udp)
        self._udp_list = udp
        self._tcp = tcp
        self._tls = tls
        self._tls_context = tls_context
        self._streams: dict[FiveTuple, _StreamQueue] = {}
        # Every accepted connection until it ends, oldest first: its cancel scope and (once
        # any TLS handshake is done) its 5-tuple.
        self._accepted: OrderedDict[int, tuple[trio.CancelScope, FiveTuple | None]] = OrderedDict()
        self._per_source: dict[str, int] = {}
        self._accepted_seq = 0
        self._relays: dict[Address, DatagramPort] = {}
        #: A 5-tuple's server address -> the listener that serves it and the source its
        #: datagrams leave from (None: the listener's own address).
        self._listeners: dict[Address, tuple[DatagramPort, str | None] | None] = {}
        self._channel_heads: dict[int, bytes] = {}
        self._nursery: trio.Nursery | None = None
        self._timer = CoreTimer(turn.next_wakeup, self._on_timeout) if turn is not None else None

    # -- construction ------------------------------------------------------------------------

    @classmethod
    async def bind(
        cls,
        host: Host,
        stun: StunServerSettings,
        turn: TurnServerSettings | None,
        *,
        config_path: str = "",
        secret: bytes | None = None,
    ) -> StunTurnService:
        """Bind every listener on ``host``; raise :class:`RuntimeFailure` naming the address
        that cannot be bound (closing what was opened), :class:`ConfigError` for an unusable
        TLS key."""
        tls_context = None
        if turn is not None and turn.tls_listen:
            tls_context = _tls_context(turn, config_path)
        udp: list[tuple[Address, DatagramPort]] = []
        tcp: list[tuple[Address, Listener]] = []
        tls: list[tuple[Address, Listener]] = []
        try:
            for ip, port in stun.listen:
                # Every receiver of this shell relays its batch before it yields: the
                # listeners and the relay sockets can share one set of receive buffers.
                udp.append(((ip, port), host.bind_datagram(ip, port, shared_buffers=True)))
            for ip, port in stun.listen:
                tcp.append(((ip, port), await host.listen_tcp(ip, port)))
            for ip, port in turn.tls_listen if turn is not None else ():
                tls.append(((ip, port), await host.listen_tcp(ip, port)))
            behavior = None
            if stun.alternate is not None:
                addresses = ServerAddresses(stun.behavior_primary(), stun.alternate)
                primary = dict(udp)[addresses.primary]
                behavior = BehaviorServer.bind(host, addresses, primary)
        except BaseException:
            for _, endpoint in udp:
                endpoint.close()
            with trio.CancelScope(shield=True):
                for _, listener in (*tcp, *tls):
                    await listener.aclose()
            raise
        core = None
        if turn is not None:
            own = [h for h, _ in stun.listen] + [h for h, _ in turn.tls_listen]
            core = TurnServer(
                TurnServerOptions.from_settings(turn, own),
                secret if secret is not None else host.random_bytes(32),
                rng=host.rng,
                wall_offset=host.wall_clock() - trio.current_time(),  # `now` is trio's clock
            )
        service = cls(host, udp, tcp, tls, core, tls_context, behavior)
        log.info(
            "stun/turn listening",
            udp=",".join(format_address(a) for a, _ in udp),
            tcp=",".join(format_address(a) for a, _ in tcp),
            tls=",".join(format_address(a) for a, _ in tls) or "-",
            turn="on" if core is not None else "off",
        )
        return service

    # -- running ------------------------------------------------------------------------------

    async def serve(self) -> None:
        """Serve until cancelled; closes every socket on the way out."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                for addr, endpoint in self._udp_list:
                    nursery.start_soon(endpoint.receive_loop, _ClientReceiver(self, addr, endpoint))
                if self.behavior is not None:
                    for addr, endpoint in self.behavior.extra_ports:
                        nursery.start_soon(endpoint.receive_loop, self.behavior.receiver(addr))
                for _addr, listener in self._tcp:
                    nursery.start_soon(self._accept_loop, listener, Transport.TCP)
                for _addr, listener in self._tls:
                    nursery.start_soon(self._accept_loop, listener, Transport.TLS)
                if self._timer is not None:
                    nursery.start_soon(self._timer.run)
        finally:
            self._nursery = None
            self.close()
            with trio.CancelScope(shield=True):
                for _, listener in (*self._tcp, *self._tls):
                    await listener.aclose()

    def close(self) -> None:
        """Close every UDP socket (idempotent); the listeners close when :meth:`serve` ends."""
        for _, endpoint in self._udp_list:
            endpoint.close()
        if self.behavior is not None:
            self.behavior.close()
        for relay in list(self._relays):
            self._close_relay(relay)

    def counters_dict(self) -> dict[str, int]:
        """Shell, core and listener counters in one flat dict."""
        out = self.counters.as_dict()
        if self.turn is not None:
            out.update({f"turn_{k}": v for k, v in self.turn.counters.as_dict().items()})
        for _, endpoint in self._udp_list:
            for k, v in endpoint.counters.as_dict().items():
                key = f"udp_{k}"
                out[key] = out.get(key, 0) + v
        return out

    def wall_offset(self, now: float) -> None:
        """Keep the core's Unix-time offset current (REST-API credential expiry)."""
        assert self.turn is not None
        self.turn.wall_offset = self.host.wall_clock() - now

    # -- streams -----------------------------------------------------------------------------

    async def _accept_loop(self, listener: Listener, transport: Transport) -> None:
        assert self._nursery is not None
        nursery = self._nursery
        while True:
            try:
                conn = await listener.accept()
            except trio.ClosedResourceError:
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self.counters.connections_rejected += 1
                    await trio.sleep(0.1)
                    continue
                raise
            source = source_key(conn.remote[0])
            if self._per_source.get(source, 0) >= MAX_CONNECTIONS_PER_SOURCE or (
                len(self._accepted) >= MAX_CONNECTIONS and not self._evict()
            ):
                self.counters.connections_rejected += 1
                await trio.aclose_forcefully(conn.stream)
                continue
            self._accepted_seq += 1
            scope = trio.CancelScope()
            self._accepted[self._accepted_seq] = (scope, None)
            self._per_source[source] = self._per_source.get(source, 0) + 1
            nursery.start_soon(
                self._serve_stream, conn, transport, self._accepted_seq, scope, source
            )

    def _evict(self) -> bool:
        """Close the oldest connection that never authenticated (still in its TLS handshake,
        or without an authenticated request) to make room; False if every one did."""
        turn = self.turn
        for seq, (scope, ft) in self._accepted.items():
            if ft is not None and turn is not None and turn.stream_authenticated(ft):
                continue
            self.counters.connections_evicted += 1
            scope.cancel()
            del self._accepted[seq]  # its slot is free now; its task ends at once
            return True
        return False

    async def _serve_stream(
        self,
        conn: Connection,
        transport: Transport,
        seq: int,
        scope: trio.CancelScope,
        source: str,
    ) -> None:
        raw = conn.stream
        ft = FiveTuple(conn.remote, conn.local, transport)
        stream: trio.abc.Stream = raw
        served = False
        try:
            with scope:
                if transport is Transport.TLS:
                    assert self._tls_context is not None
                    tls_stream = trio.SSLStream(raw, self._tls_context, server_side=True)
                    shaken = False
                    with trio.move_on_after(TLS_HANDSHAKE_TIMEOUT):
                        try:
                            await tls_stream.do_handshake()
                            shaken = True
                        except _STREAM_ERRORS:
                            pass
                    if not shaken:
                        self.counters.tls_handshake_failures += 1
                        return
                    stream = tls_stream
                if seq in self._accepted:
                    self._accepted[seq] = (scope, ft)
                self.counters.connections += 1
                queue = _StreamQueue()
                self._streams[ft] = queue
                served = True
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._stream_writer, stream, queue)
                    await self._stream_reader(stream, ft)
                    nursery.cancel_scope.cancel()
        except Exception as exc:  # one client's trouble never ends the server
            self.counters.connection_errors += 1
            log.error("connection failed", client=str(ft), error=repr(exc))
        finally:
            self._accepted.pop(seq, None)
            left = self._per_source.get(source, 0) - 1
            if left > 0:
                self._per_source[source] = left
            else:
                self._per_source.pop(source, None)
            if served:
                del self._streams[ft]
                if self.turn is not None:
                    self._dispatch(self.turn.connection_closed(ft, trio.current_time()))
            await trio.aclose_forcefully(stream)

    async def _stream_writer(self, stream: trio.abc.Stream, queue: _StreamQueue) -> None:
        """Send queued frames, coalescing what is queued; returns when the peer is gone."""
        try:
            while True:
                data = queue.take(_WRITE_CHUNK)
                if not data:
                    await queue.wakeup.wait()
                    continue
                await stream.send_all(data)
        except _STREAM_ERRORS:
            return

    async def _stream_reader(self, stream: trio.abc.Stream, ft: FiveTuple) -> None:
        """Read frames until EOF, an error, garbage or the idle timeout."""
        try:
            await self._read_frames(stream, ft)
        except _STREAM_ERRORS:
            return

    def _deadline(self, ft: FiveTuple, opened: float) -> float:
        """When the connection may be closed as idle (see :data:`IDLE_TIMEOUT`)."""
        if self.turn is None:
            return opened + IDLE_TIMEOUT
        return self.turn.stream_deadline(ft, opened, IDLE_TIMEOUT)

    async def _read_frames(self, stream: trio.abc.Stream, ft: FiveTuple) -> None:
        buf = bytearray()
        opened = trio.current_time()
        while True:
            with trio.move_on_at(self._deadline(ft, opened)):
                data = await stream.receive_some(65536)
                if not data:
                    return
                buf += data
                while True:
                    size = _frame_size(buf)
                    if size is None:
                        break
                    if size < 0:
                        self.counters.stream_garbage += 1
                        return
                    if len(buf) < size:
                        break
                    frame = bytes(buf[:size])
                    del buf[:size]
                    self._stream_frame(ft, frame)
                continue
            if self._deadline(ft, opened) > trio.current_time():
                continue  # a Refresh or an authenticated request moved it meanwhile
            self.counters.idle_closed += 1
            return

    def _stream_frame(self, ft: FiveTuple, frame: bytes) -> None:
        if self.turn is not None:
            now = trio.current_time()
            self.wall_offset(now)
            self._dispatch(self.turn.handle_client(ft, frame, now))
            return
        response = handle_binding(frame, ft.client)
        if response is not None:
            self._to_stream(ft, response)

    def _to_stream(self, ft: FiveTuple, data: bytes) -> None:
        queue = self._streams.get(ft)
        if queue is not None and not queue.put(data):
            self.counters.stream_queue_full += 1

    # -- relays ------------------------------------------------------------------------------

    def _open_relay(self, relay: Address) -> bool:
        try:
            endpoint = self.host.bind_datagram(relay[0], relay[1], shared_buffers=True)
        except RuntimeFailure as exc:
            log.warning("relay bind failed", relay=format_address(relay), error=str(exc))
            return False
        self._relays[relay] = endpoint
        self.counters.relays_opened += 1
        assert self._nursery is not None
        self._nursery.start_soon(endpoint.receive_loop, _PeerReceiver(self, relay))
        return True

    def _close_relay(self, relay: Address) -> None:
        endpoint = self._relays.pop(relay, None)
        if endpoint is None:
            return
        self.counters.relays_closed += 1
        self.counters.relay_recv_errors += endpoint.counters.rx_errors
        endpoint.close()

    def listener(self, server: Address) -> tuple[DatagramPort, str | None] | None:
        """The UDP listener that serves a 5-tuple's ``server`` address, and the source address
        answers and ChannelData leave from: the listener bound to it (source None: its own),
        else the wildcard listener of its port and family with ``server``'s address as the
        source. None if no listener has it."""
        try:
            return self._listeners[server]
        except KeyError:
            pass
        found: tuple[DatagramPort, str | None] | None = None
        endpoint = self._udp.get(server)
        if endpoint is not None:
            found = (endpoint, None)
        else:
            wildcard = ("::" if is_ipv6(server[0]) else "0.0.0.0", server[1])
            endpoint = self._udp.get(wildcard)
            if endpoint is not None:
                found = (endpoint, server[0])
        if len(self._listeners) >= MAX_FIVE_TUPLES:
            self._listeners.clear()
        self._listeners[server] = found
        return found

    # -- output dispatch ---------------------------------------------------------------------

    def _dispatch(self, outputs: Iterable[Output]) -> None:
        """Carry out the core's outputs in order; datagrams to one destination from one
        socket are gathered and sent together (one ``sendmsg`` per run with UDP GSO). Every
        request that changes an expiry answers, so this is also where the timer is re-armed."""
        pending = list(outputs)
        pending.reverse()
        turn = self.turn
        to_peers: _Gathered = {}
        to_clients: dict[tuple[Address, Address], list[bytes]] = {}
        while pending:
            out = pending.pop()
            if isinstance(out, ToClient):
                ft = out.five_tuple
                if ft.transport is Transport.UDP:
                    to_clients.setdefault((ft.server, ft.client), []).append(out.data)
                else:
                    self._to_stream(ft, out.data)
            elif isinstance(out, ToPeer):
                to_peers.setdefault((out.relay, out.peer), []).append(out.data)
            elif isinstance(out, OpenRelay):
                assert turn is not None
                self._send_gathered(to_peers, to_clients)
                ok = self._nursery is not None and self._open_relay(out.relay)
                more = turn.relay_opened(out.relay, ok, trio.current_time())
                pending.extend(reversed(more))
            elif isinstance(out, CloseRelay):
                self._send_gathered(to_peers, to_clients)
                self._close_relay(out.relay)
        self._send_gathered(to_peers, to_clients)
        if self._timer is not None:
            self._timer.rearm()

    def _send_gathered(
        self,
        to_peers: _Gathered,
        to_clients: dict[tuple[Address, Address], list[bytes]],
    ) -> None:
        self._send_to_peers(to_peers)
        for (server, client), datagrams in to_clients.items():
            found = self.listener(server)
            if found is not None:
                found[0].send_batch(datagrams, client, found[1])
        to_clients.clear()

    def _send_to_peers(self, to_peers: _Gathered) -> None:
        """Send each ``(relay, peer)``'s datagrams from that relay socket (UDP GSO for runs of
        equal size), then forget them."""
        for (relay, peer), datagrams in to_peers.items():
            endpoint = self._relays.get(relay)
            if endpoint is None:
                continue
            counters = endpoint.counters
            before = counters.tx_dropped
            try:
                endpoint.send_batch(datagrams, peer)
            except RuntimeFailure:
                counters.tx_dropped += len(datagrams)
            self.counters.relay_send_failed += counters.tx_dropped - before
        to_peers.clear()

    @property
    def timer_runs(self) -> int:
        """Times the timer woke and ran the core's expiries (tests count them)."""
        return 0 if self._timer is None else self._timer.runs

    def _on_timeout(self, now: float) -> None:
        assert self.turn is not None
        outputs = self.turn.handle_timeout(now)
        if outputs:
            self._dispatch(outputs)


class _ClientReceiver:
    """What one UDP listener received in a batch, relayed at its end (clients -> peers).

    ChannelData on a channel the core routes (:meth:`TurnServer.channel_route`: active
    allocation, bound channel, permission — looked up once per client and channel in a batch)
    is gathered per relay socket and peer, its payload a view into the receive buffer, and sent
    with UDP GSO at the end of the batch. Everything else goes to
    :meth:`TurnServer.handle_client`; since that may change the state, the data gathered
    before it is sent first (after the outputs of earlier messages) and the routes are looked
    up again after it. The endpoint's generic demultiplexer is not used: a TURN server also
    takes the RFC 5766 channels up to 0x7FFF as ChannelData.

    On a wildcard listener each datagram's local address (the endpoint's pktinfo) is the
    server address of its 5-tuple; the 5-tuples are kept per local address (the endpoint hands
    the same string object for a run of datagrams to one address, so finding the table is
    an identity test), and a batch's route cache is emptied when the local address changes.
    """

    def __init__(self, service: StunTurnService, local: Address, endpoint: DatagramPort) -> None:
        self.service = service
        self.local = local
        self.endpoint = endpoint
        self.wildcard = is_unspecified(local[0])
        turn = service.turn
        self.channel_max = 0 if turn is None else turn.options.channel_max >> 8
        #: Local address (None: unknown, or a listener bound to one) -> client -> 5-tuple.
        self.five_tuples: dict[str | None, dict[Address, FiveTuple]] = {}
        self._at: str | None = None
        self._at_tuples: dict[Address, FiveTuple] = self.five_tuples.setdefault(None, {})
        self.routes: dict[tuple[Address, int], tuple[Address, Address]] = {}
        self.outputs: list[Output] = []
        self.to_peers: _Gathered = {}
        self.relayed = 0
        self.relayed_bytes = 0
        self.now: float | None = None
        behavior = service.behavior
        #: The RFC 5780 server, when this is its primary listener (its Binding requests).
        self.behavior = behavior if behavior and behavior.addresses.primary == local else None

    def datagram(self, data: memoryview, client: Address, local: str | None) -> None:
        service = self.service
        if self.behavior is not None and is_binding_request(data):
            self.behavior.answer(data, client, self.local)
            return
        turn = service.turn
        if not self.wildcard:
            local = None  # bound to one address: that is the server's
        if turn is None:
            response = handle_binding(data, client)
            if response is not None:
                self.endpoint.send(response, client, local)
            return
        now = self.now
        if now is None:
            now = self.now = trio.current_time()
        if local is not self._at:
            self._switch_local(local)
        tuples = self._at_tuples
        ft = tuples.get(client)
        if ft is None:
            if len(tuples) >= MAX_FIVE_TUPLES:
                tuples.clear()
            server = self.local if local is None else (local, self.local[1])
            ft = tuples[client] = FiveTuple(client, server, Transport.UDP)
        if len(data) >= 4 and 0x40 <= data[0] <= self.channel_max:
            end = channel_data_end(data)
            if end >= 0:
                key = (client, (data[0] << 8) | data[1])
                route = self.routes.get(key)
                if route is None:
                    route = turn.channel_route(ft, key[1], now)
                    if route is not None:
                        self.routes[key] = route
                if route is not None:
                    batch = self.to_peers.get(route)
                    if batch is None:
                        batch = self.to_peers[route] = []
                    batch.append(data[4:end])
                    self.relayed += 1
                    self.relayed_bytes += end - 4
                    return
        if self.to_peers:
            service._dispatch(self.outputs)
            self.outputs = []
            self._flush_to_peers()
        self.routes.clear()
        service.wall_offset(now)
        self.outputs.extend(turn.handle_client(ft, data, now))

    def _switch_local(self, local: str | None) -> None:
        """The datagram came to another local address than the one before it: its 5-tuples,
        and no route of the other address's."""
        self._at = local
        tables = self.five_tuples
        tuples = tables.get(local)
        if tuples is None:
            if len(tables) >= MAX_LOCAL_ADDRESSES:
                tables.clear()
            tuples = tables[local] = {}
        self._at_tuples = tuples
        self.routes.clear()

    def drained(self) -> None:
        service = self.service
        turn = service.turn
        if turn is not None and self.relayed:
            turn.counters.relayed_to_peer += self.relayed
            turn.counters.relayed_to_peer_bytes += self.relayed_bytes
        if self.outputs:
            service._dispatch(self.outputs)
            self.outputs = []
        if self.to_peers:
            self._flush_to_peers()
        self.routes.clear()
        self.relayed = self.relayed_bytes = 0
        self.now = None

    def _flush_to_peers(self) -> None:
        """Send the gathered ChannelData payloads, counted per allocation first (once per
        relay socket and peer in the batch: the rendezvous' map page shows them per node)."""
        turn = self.service.turn
        if turn is not None:
            for (relay, _peer), batch in self.to_peers.items():
                alloc = turn.allocation_for_relay(relay)
                if alloc is not None:
                    alloc.bytes_to_peer += sum(map(len, batch))
        self.service._send_to_peers(self.to_peers)


class _PeerReceiver:
    """What one relay socket received in a batch (peers -> client), relayed at its end.

    A peer with a bound channel to a UDP client (:meth:`TurnServer.peer_route`, looked up once
    per peer in a batch) gets its datagrams sent as ChannelData from the listening socket — the
    header built here, the payload a view into the receive buffer, UDP GSO for runs of equal
    size; the rest goes through :meth:`TurnServer.handle_peer_data` (Data indications, stream
    clients, drops).
    """

    def __init__(self, service: StunTurnService, relay: Address) -> None:
        self.service = service
        self.relay = relay
        self.routes: dict[Address, tuple[DatagramPort, Address, int, str | None] | None] = {}
        self.outputs: list[Output] = []
        self.to_client: tuple[DatagramPort, Address, str | None] | None = None
        self.prefixes: list[bytes] = []
        self.payloads: list[memoryview] = []
        self.relayed = 0
        self.relayed_bytes = 0
        self.now: float | None = None

    def datagram(self, data: memoryview, src: Address, local: str | None) -> None:
        service = self.service
        turn = service.turn
        assert turn is not None
        now = self.now
        if now is None:
            now = self.now = trio.current_time()
        if src in self.routes:
            route = self.routes[src]
        else:
            route = None
            found = turn.peer_route(self.relay, src, now)
            if found is not None:
                listener = service.listener(found[0].server)
                if listener is not None:
                    route = (listener[0], found[0].client, found[1], listener[1])
            self.routes[src] = route
        size = len(data)
        if route is None or not size or size > MAX_RELAY_PAYLOAD:
            out = turn.handle_peer_data(self.relay, src, data, now)
            if out is not None:
                self.outputs.append(out)
            return
        # One allocation per relay socket: every route leads to the same client.
        self.to_client = (route[0], route[1], route[3])
        heads = service._channel_heads
        key = (route[2] << 16) | size
        head = heads.get(key)
        if head is None:
            if len(heads) >= MAX_CHANNEL_HEADS:
                heads.clear()
            head = heads[key] = channel_data_header(route[2], size)
        self.prefixes.append(head)
        self.payloads.append(data)
        self.relayed += 1
        self.relayed_bytes += size

    def drained(self) -> None:
        service = self.service
        turn = service.turn
        assert turn is not None
        if self.outputs:
            service._dispatch(self.outputs)
            self.outputs = []
        to_client = self.to_client
        if to_client is not None:
            turn.counters.relayed_to_client += self.relayed
            turn.counters.relayed_to_client_bytes += self.relayed_bytes
            alloc = turn.allocation_for_relay(self.relay)
            if alloc is not None:
                alloc.bytes_to_client += self.relayed_bytes
            to_client[0].send_batch_prefixed(
                self.prefixes, self.payloads, to_client[1], to_client[2]
            )
            self.to_client = None
            self.prefixes = []
            self.payloads = []
        self.routes.clear()
        self.relayed = self.relayed_bytes = 0
        self.now = None


def is_unspecified(ip: str) -> bool:
    """Whether ``ip`` is the wildcard address (``0.0.0.0``, ``::``)."""
    try:
        return ipaddress.ip_address(ip).is_unspecified
    except ValueError:
        return False


class _StreamQueue:
    """What waits to be written to one stream client: at most :data:`STREAM_QUEUE` frames and
    :data:`STREAM_QUEUE_BYTES` bytes (per-connection memory stays bounded when the client
    does not read while its relay receives)."""

    __slots__ = ("frames", "queued", "wakeup")

    def __init__(self) -> None:
        self.frames: deque[bytes] = deque()
        self.queued = 0
        self.wakeup = Wakeup()

    def put(self, data: bytes) -> bool:
        """Queue ``data``; False (dropped) when it does not fit."""
        if len(self.frames) >= STREAM_QUEUE or self.queued + len(data) > STREAM_QUEUE_BYTES:
            return False
        self.frames.append(data)
        self.queued += len(data)
        self.wakeup.set()
        return True

    def take(self, limit: int) -> bytes:
        """Whole frames off the queue, about ``limit`` bytes (at least one frame), joined."""
        frames = self.frames
        chunks: list[bytes] = []
        size = 0
        while frames and (not chunks or size + len(frames[0]) <= limit):
            frame = frames.popleft()
            chunks.append(frame)
            size += len(frame)
        self.queued -= size
        return b"".join(chunks)


def _frame_size(buf: bytearray) -> int | None:
    """Size of the frame at the start of a stream buffer: None if unknown yet, -1 if the
    bytes are neither STUN nor ChannelData (RFC 8656 §12.5 framing)."""
    if len(buf) < 4:
        return None
    first = buf[0]
    if 0x40 <= first <= 0x7F:  # RFC 5766 channels reach 0x7FFF
        size = channel_data_frame_length(buf)
    elif first < 4:
        size = message_length(buf)
        if size is not None and (size & 3 or size > MAX_STREAM_FRAME):
            return -1
    else:
        return -1
    return size
