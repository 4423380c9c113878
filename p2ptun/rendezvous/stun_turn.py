"""The embedded STUN and TURN servers' trio shell.

:class:`StunTurnService` owns the sockets around the sans-I/O cores: the Binding server
(:func:`p2ptun.stun.handle_binding`) and, when ``[turn]`` is configured, the TURN server
(:class:`p2ptun.turn.server.TurnServer`, RFC 8656). Use it in two steps, so that every listen
address is bound (or the start fails with one clear line) before anything is served::

    service = await StunTurnService.bind(cfg.stun, cfg.turn)   # RuntimeFailure if it cannot
    async with trio.open_nursery() as nursery:
        nursery.start_soon(service.serve)

- UDP on every ``[stun] listen`` address: STUN Binding, TURN requests, Send indications and
  ChannelData (RFC 8656 §3.1: TURN runs on the STUN port).
- TCP on the same addresses, and TLS on ``[turn] tls_listen``: STUN and ChannelData framed on
  the stream (RFC 8489 §6.2.2, RFC 8656 §12.5); each connection is its own 5-tuple and its
  allocation ends with it.
- One UDP relay socket per allocation, bound where the core asks; each socket's task wakes
  once per readiness and drains it (no per-packet channel hops).
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

import contextlib
import errno
import math
import mmap
import os
import random
import socket
import ssl
import time
from collections.abc import Iterable
from dataclasses import dataclass, fields

import trio

from p2ptun.addr import Address, format_address
from p2ptun.config import StunServerSettings, TurnServerSettings
from p2ptun.errors import ConfigError, RuntimeFailure
from p2ptun.log import get_logger
from p2ptun.net.udp import (
    DEFAULT_BUFFER_SIZE,
    UdpCounters,
    UdpEndpoint,
    enable_gro,
    probe_gso,
    recv_segments,
    send_datagrams,
    set_buffers,
)
from p2ptun.stun import (
    channel_data_end,
    channel_data_frame_length,
    channel_data_header,
    handle_binding,
    message_length,
)
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
#: Connections served at once (TCP and TLS together); more are closed at once.
MAX_CONNECTIONS = 1024
#: A connection without an allocation that sends nothing for this long is closed.
IDLE_TIMEOUT = 120.0
#: Frames queued for one stream client before further ones are dropped.
STREAM_QUEUE = 256
#: Datagrams read from one relay socket before yielding to other tasks.
RELAY_BATCH = 64
#: Clients whose 5-tuple objects a UDP listener keeps (rebuilt when the table is full).
MAX_FIVE_TUPLES = 4096
#: ChannelData headers (channel number and length) kept for reuse.
MAX_CHANNEL_HEADS = 4096
TLS_HANDSHAKE_TIMEOUT = 10.0

#: Datagrams gathered per (relay socket, peer) in one batch.
_Gathered = dict[tuple[Address, Address], list[bytes | memoryview]]


@dataclass
class ShellCounters:
    """Drops and events of the I/O layer (the core counts protocol drops)."""

    connections: int = 0
    connections_rejected: int = 0
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


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


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
        udp: list[tuple[Address, UdpEndpoint]],
        tcp: list[tuple[Address, trio.SocketListener]],
        tls: list[tuple[Address, trio.SocketListener]],
        turn: TurnServer | None,
        tls_context: ssl.SSLContext | None,
    ) -> None:
        self.turn = turn
        self.counters = ShellCounters()
        self._udp: dict[Address, UdpEndpoint] = {}
        self._relay_gso: dict[Address, bool] = {}
        self._relay_gro: dict[Address, bool] = {}
        self._relay_counters = UdpCounters()
        """What the relay sockets sent (drops are also in ``relay_send_failed``)."""
        self._udp_list = udp
        self._tcp = tcp
        self._tls = tls
        self._tls_context = tls_context
        self._streams: dict[FiveTuple, trio.MemorySendChannel[bytes]] = {}
        self._relays: dict[Address, socket.socket] = {}
        # Receive buffers shared by every UDP loop: a loop relays what it read before it
        # yields, so no two batches are ever in flight. Pages become resident when written.
        self._pool = [memoryview(mmap.mmap(-1, 0x10000)) for _ in range(RELAY_BATCH)]
        self._channel_heads: dict[int, bytes] = {}
        self._nursery: trio.Nursery | None = None
        self._timer_scope: trio.CancelScope | None = None
        #: Times the timer task woke and ran the core's expiries (tests count them).
        self.timer_runs = 0
        for addr, endpoint in udp:
            self._udp[addr] = endpoint

    # -- construction ------------------------------------------------------------------------

    @classmethod
    async def bind(
        cls,
        stun: StunServerSettings,
        turn: TurnServerSettings | None,
        *,
        config_path: str = "",
        secret: bytes | None = None,
    ) -> StunTurnService:
        """Bind every listener; raise :class:`RuntimeFailure` naming the address that cannot
        be bound (closing what was opened), :class:`ConfigError` for an unusable TLS key."""
        tls_context = None
        if turn is not None and turn.tls_listen:
            tls_context = _tls_context(turn, config_path)
        udp: list[tuple[Address, UdpEndpoint]] = []
        tcp: list[tuple[Address, trio.SocketListener]] = []
        tls: list[tuple[Address, trio.SocketListener]] = []
        try:
            for host, port in stun.listen:
                endpoint = UdpEndpoint.bind(_family(host), host, port)
                udp.append(((host, port), endpoint))
            for host, port in stun.listen:
                tcp.append(((host, port), await _tcp_listener(host, port)))
            for host, port in turn.tls_listen if turn is not None else ():
                tls.append(((host, port), await _tcp_listener(host, port)))
        except BaseException:
            for _, endpoint in udp:
                endpoint.close()
            for _, listener in (*tcp, *tls):
                listener.socket.close()
            raise
        core = None
        if turn is not None:
            own = [h for h, _ in stun.listen] + [h for h, _ in turn.tls_listen]
            core = TurnServer(
                TurnServerOptions.from_settings(turn, own),
                secret if secret is not None else os.urandom(32),
                rng=random.SystemRandom(),
                wall_offset=time.time() - trio.current_time(),  # the clock `now` comes from
            )
        service = cls(udp, tcp, tls, core, tls_context)
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
                    nursery.start_soon(self._udp_loop, addr, endpoint)
                for _addr, listener in self._tcp:
                    nursery.start_soon(self._accept_loop, listener, Transport.TCP)
                for _addr, listener in self._tls:
                    nursery.start_soon(self._accept_loop, listener, Transport.TLS)
                if self.turn is not None:
                    nursery.start_soon(self._timer_loop)
        finally:
            self._nursery = None
            self.close()

    def close(self) -> None:
        """Close every socket (idempotent)."""
        for _, endpoint in self._udp_list:
            endpoint.close()
        for _, listener in (*self._tcp, *self._tls):
            listener.socket.close()
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

    # -- UDP listeners -----------------------------------------------------------------------

    async def _udp_loop(self, local: Address, endpoint: UdpEndpoint) -> None:
        """Wake once per readiness, drain the listener, and relay the batch.

        Not :meth:`UdpEndpoint.receive_loop`: its demultiplexer knows ChannelData only as
        0x40-0x4F, and a TURN server also takes the RFC 5766 channels up to 0x7FFF. With UDP
        GRO one read may hold several datagrams of a client; they are split at the size the
        kernel reports.

        ChannelData on a channel the core routes (:meth:`TurnServer.channel_route`: active
        allocation, bound channel, permission — looked up once per client and channel in a
        batch) is gathered per relay socket and peer, its payload a view into the receive
        buffer, and sent with UDP GSO at the end of the batch. Everything else goes to
        :meth:`TurnServer.handle_client`; since that may change the state, the data gathered
        before it is sent first (after the outputs of earlier messages) and the routes are
        looked up again after it.
        """
        sock = endpoint.socket
        counters = endpoint.counters
        gro = endpoint.gro
        pool = self._pool
        turn = self.turn
        channel_max = 0 if turn is None else turn.options.channel_max >> 8
        five_tuples: dict[Address, FiveTuple] = {}
        routes: dict[tuple[Address, int], tuple[Address, Address]] = {}
        while True:
            try:
                await trio.lowlevel.wait_readable(sock)
            except (trio.ClosedResourceError, OSError):
                return
            outputs: list[Output] = []
            to_peers: _Gathered = {}
            routes.clear()
            relayed = relayed_bytes = 0
            reads = 0
            now = trio.current_time()
            for view in pool:
                try:
                    n, segment, client = recv_segments(sock, view, gro=gro)
                except BlockingIOError:
                    break
                except OSError:
                    reads += 1
                    counters.rx_errors += 1
                    if sock.fileno() < 0:
                        return
                    continue
                reads += 1
                counters.rx_bytes += n
                counters.rx_reads += 1
                step = segment or n
                if turn is None:
                    for off in range(0, n, step) if n else (0,):
                        response = handle_binding(view[off : min(off + step, n)], client)
                        if response is not None:
                            endpoint.send(response, client)
                    continue
                ft = five_tuples.get(client)
                if ft is None:
                    if len(five_tuples) >= MAX_FIVE_TUPLES:
                        five_tuples.clear()
                    ft = five_tuples[client] = FiveTuple(client, local, Transport.UDP)
                for off in range(0, n, step) if n else (0,):
                    data = view[off : min(off + step, n)]
                    size = len(data)
                    if size >= 4 and 0x40 <= data[0] <= channel_max:
                        end = channel_data_end(data)
                        if end >= 0:
                            key = (client, (data[0] << 8) | data[1])
                            route = routes.get(key)
                            if route is None:
                                route = turn.channel_route(ft, key[1], now)
                                if route is not None:
                                    routes[key] = route
                            if route is not None:
                                batch = to_peers.get(route)
                                if batch is None:
                                    batch = to_peers[route] = []
                                batch.append(data[4:end])
                                relayed += 1
                                relayed_bytes += end - 4
                                continue
                    if to_peers:
                        self._dispatch(outputs)
                        outputs = []
                        self._send_to_peers(to_peers)
                    routes.clear()
                    turn.wall_offset = time.time() - now
                    outputs.extend(turn.handle_client(ft, data, now))
            if turn is not None and relayed:
                turn.counters.relayed_to_peer += relayed
                turn.counters.relayed_to_peer_bytes += relayed_bytes
            if outputs:
                self._dispatch(outputs)
            if to_peers:
                self._send_to_peers(to_peers)
            if reads == len(pool):
                await trio.lowlevel.checkpoint()

    # -- streams -----------------------------------------------------------------------------

    async def _accept_loop(self, listener: trio.SocketListener, transport: Transport) -> None:
        assert self._nursery is not None
        nursery = self._nursery
        while True:
            try:
                stream = await listener.accept()
            except trio.ClosedResourceError:
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self.counters.connections_rejected += 1
                    await trio.sleep(0.1)
                    continue
                raise
            if len(self._streams) >= MAX_CONNECTIONS:
                self.counters.connections_rejected += 1
                await stream.aclose()
                continue
            nursery.start_soon(self._serve_stream, stream, transport)

    async def _serve_stream(self, raw: trio.SocketStream, transport: Transport) -> None:
        try:
            peer = raw.socket.getpeername()
            local = raw.socket.getsockname()
        except OSError:
            await raw.aclose()
            return
        ft = FiveTuple((str(peer[0]), int(peer[1])), (str(local[0]), int(local[1])), transport)
        stream: trio.abc.Stream = raw
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
                await trio.aclose_forcefully(raw)
                return
            stream = tls_stream
        self.counters.connections += 1
        send, receive = trio.open_memory_channel[bytes](STREAM_QUEUE)
        self._streams[ft] = send
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._stream_writer, stream, receive)
                await self._stream_reader(stream, ft)
                nursery.cancel_scope.cancel()
        except Exception as exc:  # one client's trouble never ends the server
            self.counters.connection_errors += 1
            log.error("connection failed", client=str(ft), error=repr(exc))
        finally:
            del self._streams[ft]
            if self.turn is not None:
                self._dispatch(self.turn.connection_closed(ft, trio.current_time()))
            await trio.aclose_forcefully(stream)

    async def _stream_writer(
        self, stream: trio.abc.Stream, receive: trio.MemoryReceiveChannel[bytes]
    ) -> None:
        """Send queued frames, coalescing what is queued; returns when the peer is gone."""
        try:
            async for frame in receive:
                chunks = [frame]
                while len(chunks) < 64:
                    try:
                        chunks.append(receive.receive_nowait())
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                await stream.send_all(b"".join(chunks))
        except _STREAM_ERRORS:
            return

    async def _stream_reader(self, stream: trio.abc.Stream, ft: FiveTuple) -> None:
        """Read frames until EOF, an error, garbage or the idle timeout."""
        try:
            await self._read_frames(stream, ft)
        except _STREAM_ERRORS:
            return

    async def _read_frames(self, stream: trio.abc.Stream, ft: FiveTuple) -> None:
        buf = bytearray()
        turn = self.turn
        while True:
            idle = turn is None or ft not in turn.allocations
            with trio.move_on_after(IDLE_TIMEOUT if idle else math.inf):
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
            return  # idle timeout

    def _stream_frame(self, ft: FiveTuple, frame: bytes) -> None:
        if self.turn is not None:
            now = trio.current_time()
            self.turn.wall_offset = time.time() - now
            self._dispatch(self.turn.handle_client(ft, frame, now))
            return
        response = handle_binding(frame, ft.client)
        if response is not None:
            self._to_stream(ft, response)

    def _to_stream(self, ft: FiveTuple, data: bytes) -> None:
        send = self._streams.get(ft)
        if send is None:
            return
        try:
            send.send_nowait(data)
        except trio.WouldBlock:
            self.counters.stream_queue_full += 1
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    # -- relays ------------------------------------------------------------------------------

    def _open_relay(self, relay: Address) -> bool:
        sock = socket.socket(_family(relay[0]), socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            sock.setblocking(False)
            set_buffers(sock, DEFAULT_BUFFER_SIZE)
            sock.bind(relay)
        except OSError as exc:
            sock.close()
            log.warning("relay bind failed", relay=format_address(relay), error=exc.strerror)
            return False
        self._relays[relay] = sock
        self._relay_gso[relay] = probe_gso(sock)
        self._relay_gro[relay] = enable_gro(sock)
        self.counters.relays_opened += 1
        assert self._nursery is not None
        self._nursery.start_soon(self._relay_loop, relay, sock)
        return True

    def _close_relay(self, relay: Address) -> None:
        sock = self._relays.pop(relay, None)
        self._relay_gso.pop(relay, None)
        self._relay_gro.pop(relay, None)
        if sock is None:
            return
        self.counters.relays_closed += 1
        with contextlib.suppress(RuntimeError):
            trio.lowlevel.notify_closing(sock)
        sock.close()

    async def _relay_loop(self, relay: Address, sock: socket.socket) -> None:
        """Wake once per readiness, drain the relay socket (peer -> client) and relay the
        batch: a peer with a bound channel to a UDP client (:meth:`TurnServer.peer_route`,
        looked up once per peer in a batch) gets its datagrams sent as ChannelData from the
        listening socket — the header built here, the payload a view into the receive buffer,
        UDP GSO for runs of equal size; the rest goes through
        :meth:`TurnServer.handle_peer_data` (Data indications, stream clients, drops)."""
        turn = self.turn
        assert turn is not None
        pool = self._pool
        heads = self._channel_heads
        gro = self._relay_gro.get(relay, False)
        routes: dict[Address, tuple[UdpEndpoint, Address, int] | None] = {}
        while True:
            try:
                await trio.lowlevel.wait_readable(sock)
            except (trio.ClosedResourceError, OSError):
                return
            if sock.fileno() < 0:
                return
            outputs: list[Output] = []
            to_client: tuple[UdpEndpoint, Address] | None = None
            prefixes: list[bytes] = []
            payloads: list[memoryview] = []
            routes.clear()
            relayed = relayed_bytes = 0
            reads = 0
            now = trio.current_time()
            for view in pool:
                try:
                    n, segment, src = recv_segments(sock, view, gro=gro)
                except BlockingIOError:
                    break
                except OSError:
                    reads += 1
                    self.counters.relay_recv_errors += 1
                    if sock.fileno() < 0:
                        return
                    continue
                reads += 1
                step = segment or n
                if src in routes:
                    route = routes[src]
                else:
                    route = None
                    found = turn.peer_route(relay, src, now)
                    if found is not None:
                        endpoint = self._udp.get(found[0].server)
                        if endpoint is not None:
                            route = (endpoint, found[0].client, found[1])
                    routes[src] = route
                if route is None or not n or step > MAX_RELAY_PAYLOAD:
                    for off in range(0, n, step) if n else (0,):
                        out = turn.handle_peer_data(relay, src, view[off : min(off + step, n)], now)
                        if out is not None:
                            outputs.append(out)
                    continue
                # One allocation per relay socket: every route leads to the same client.
                to_client = (route[0], route[1])
                base = route[2] << 16
                for off in range(0, n, step):
                    end = min(off + step, n)
                    size = end - off
                    head = heads.get(base | size)
                    if head is None:
                        if len(heads) >= MAX_CHANNEL_HEADS:
                            heads.clear()
                        head = heads[base | size] = channel_data_header(route[2], size)
                    prefixes.append(head)
                    payloads.append(view[off:end])
                    relayed += 1
                    relayed_bytes += size
            if outputs:
                self._dispatch(outputs)
            if to_client is not None:
                turn.counters.relayed_to_client += relayed
                turn.counters.relayed_to_client_bytes += relayed_bytes
                to_client[0].send_batch_prefixed(prefixes, payloads, to_client[1])
            if reads == len(pool):
                await trio.lowlevel.checkpoint()

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
        self._rearm()

    def _rearm(self) -> None:
        """Move the timer's deadline to the core's next wake-up if that changed."""
        scope = self._timer_scope
        if scope is None or self.turn is None:
            return
        wake = self.turn.next_wakeup()
        deadline = math.inf if wake is None else wake
        if deadline != scope.deadline:
            scope.deadline = deadline

    def _send_gathered(
        self,
        to_peers: _Gathered,
        to_clients: dict[tuple[Address, Address], list[bytes]],
    ) -> None:
        self._send_to_peers(to_peers)
        for (server, client), datagrams in to_clients.items():
            endpoint = self._udp.get(server)
            if endpoint is not None:
                endpoint.send_batch(datagrams, client)
        to_clients.clear()

    def _send_to_peers(self, to_peers: _Gathered) -> None:
        """Send each ``(relay, peer)``'s datagrams from that relay socket (UDP GSO for runs of
        equal size), then forget them."""
        counters = self._relay_counters
        for (relay, peer), datagrams in to_peers.items():
            sock = self._relays.get(relay)
            if sock is None:
                continue
            before = counters.tx_dropped
            try:
                send_datagrams(
                    sock, datagrams, peer, counters, gso=self._relay_gso.get(relay, False)
                )
            except RuntimeFailure:
                counters.tx_dropped += len(datagrams)
            self.counters.relay_send_failed += counters.tx_dropped - before
        to_peers.clear()

    async def _timer_loop(self) -> None:
        turn = self.turn
        assert turn is not None
        while True:
            wake = turn.next_wakeup()
            with trio.move_on_at(math.inf if wake is None else wake) as scope:
                self._timer_scope = scope
                await trio.sleep_forever()
            self._timer_scope = None
            self.timer_runs += 1
            outputs = turn.handle_timeout(trio.current_time())
            if outputs:
                self._dispatch(outputs)


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


async def _tcp_listener(host: str, port: int) -> trio.SocketListener:
    shown = format_address((host, port))
    sock = trio.socket.socket(_family(host), socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if _family(host) == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        await sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise RuntimeFailure(f"cannot bind TCP {shown}: address already in use") from None
        if exc.errno == errno.EADDRNOTAVAIL:
            raise RuntimeFailure(
                f"cannot bind TCP {shown}: no such local address on this host"
            ) from None
        raise RuntimeFailure(f"cannot bind TCP {shown}: {exc.strerror}") from None
    return trio.SocketListener(sock)
