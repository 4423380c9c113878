"""The rendezvous' signaling server: a sans-I/O core and the trio shell that serves it on TCP.

Per connection (:class:`ConnState`)::

    HANDSHAKE --(Noise IK message 1 → message 2)--> REGISTERING --(Register, admitted)--> READY
    any --(error, refusal, silence, limit, shutdown)--> CLOSING --(flushed)--> closed

A node is authenticated once its first transport frame decrypts (see
:mod:`p2ptun.signal.channel` on message-1 replays); its identity is the static key from the
handshake, and :class:`~p2ptun.rendezvous.store.RegistrationStore` decides whether that key may
use the name it asks for. Then the core:

- answers Ping with Pong; closes connections silent for ``idle_timeout`` and connections that
  have not registered within ``handshake_timeout``, each at its own deadline (the core is woken
  for the earliest one, never on a fixed tick);
- keeps presence: a node watches names and gets Presence(name, online) now and on every change;
- routes Route(ref, to, blob) as Deliver(from, blob) to the node registered as ``to``, or
  answers RouteFailed (peer offline, busy, rate limited). It never looks inside ``blob``, which
  is sealed end to end (:mod:`p2ptun.signal.seal`);
- issues TURN credentials in coturn's REST-API form to registered nodes (``[turn] auth_secret``);
- bounds everything: connections, unauthenticated connections, a token bucket of messages per
  connection, bytes queued to each connection (routes to a full queue fail as busy; a queue past
  the hard limit closes the connection), names watched per connection.

A new registration of a name that is online (same key, the store guarantees) replaces the old
connection, whose socket is likely dead after a network change, without presence flapping.

Logs name connections, node names and reasons; never keys or sealed payloads.

Entry point for the rendezvous main: :func:`serve_signaling`.
"""

from __future__ import annotations

import enum
import math
import os
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from p2ptun.addr import format_address
from p2ptun.config import RendezvousConfig, TurnServerSettings
from p2ptun.log import get_logger
from p2ptun.net.wakeup import Wakeup
from p2ptun.noise import Rng
from p2ptun.rendezvous.store import RegistrationStore, SqliteStore
from p2ptun.signal.channel import ChannelLimits, NoiseChannel
from p2ptun.signal.errors import ChannelError, SignalDecodeError
from p2ptun.signal.frames import FrameDecoder
from p2ptun.signal.messages import (
    Deliver,
    Error,
    ErrorCode,
    GoingAway,
    Message,
    Ping,
    Pong,
    Presence,
    Refused,
    Register,
    Registered,
    Route,
    RouteFailed,
    RouteFailure,
    TurnCredentials,
    TurnRequest,
    Unwatch,
    Watch,
    decode_message,
    encode_message,
)
from p2ptun.turn.credentials import make_rest_credential

log = get_logger("rendezvous.signaling")


@dataclass(frozen=True)
class ServerLimits:
    """Bounds that keep one node (or a crowd) from exhausting the rendezvous."""

    max_connections: int = 10_000
    #: Connections not yet registered.
    max_pending: int = 512
    #: Handshake and registration must finish within this.
    handshake_timeout: float = 10.0
    #: A registered node that sends nothing for this long is dropped: two missed Pings of a
    #: client that pings every 25 s, plus 10 s (:class:`p2ptun.signal.client.ClientTimers`).
    idle_timeout: float = 60.0
    #: Token bucket per connection: sustained messages per second, and burst.
    rate: float = 50.0
    burst: float = 200.0
    #: Messages dropped for rate in a row before the connection is closed.
    max_rate_drops: int = 1000
    #: Bytes queued to a connection beyond which routes to it fail as busy...
    max_outbox: int = 256 * 1024
    #: ...and beyond which it is closed.
    hard_outbox: int = 1024 * 1024
    max_watches: int = 1024
    channel: ChannelLimits = field(default_factory=ChannelLimits)


class ConnState(enum.Enum):
    HANDSHAKE = "handshake"
    REGISTERING = "registering"
    READY = "ready"
    CLOSING = "closing"


@dataclass
class ServerCounters:
    connections: int = 0
    refused_connections: int = 0
    registrations: int = 0
    refused_registrations: int = 0
    new_bindings: int = 0
    routed: int = 0
    route_offline: int = 0
    route_busy: int = 0
    rate_limited: int = 0
    decode_errors: int = 0
    channel_errors: int = 0
    protocol_errors: int = 0
    timeouts: int = 0
    turn_issued: int = 0


class _Conn:
    __slots__ = (
        "channel",
        "close_reason",
        "decoder",
        "id",
        "key",
        "last_rx",
        "name",
        "opened",
        "outbox",
        "peer",
        "rate_drops",
        "state",
        "tokens",
        "tokens_at",
        "watching",
    )

    def __init__(self, conn_id: int, channel: NoiseChannel, now: float, peer: str, burst: float):
        self.id = conn_id
        self.channel = channel
        self.decoder = FrameDecoder()
        self.state = ConnState.HANDSHAKE
        self.outbox = bytearray()
        self.name: str | None = None
        self.key: bytes | None = None
        self.opened = now
        self.last_rx = now
        self.peer = peer
        self.tokens = burst
        self.tokens_at = now
        self.rate_drops = 0
        self.watching: set[str] = set()
        self.close_reason = ""


class SignalingServerCore:
    """Sans-I/O signaling server: connection ids and bytes in, bytes per connection out."""

    def __init__(
        self,
        private_key: bytes,
        store: RegistrationStore,
        *,
        rng: Rng,
        wall_clock: Callable[[], float],
        turn: TurnServerSettings | None = None,
        limits: ServerLimits | None = None,
    ) -> None:
        self._private = private_key
        self.store = store
        self.rng = rng
        self.wall_clock = wall_clock
        self.turn = turn
        self.limits = limits or ServerLimits()
        self.counters = ServerCounters()
        self._conns: dict[int, _Conn] = {}
        self._online: dict[str, _Conn] = {}
        self._watchers: dict[str, set[int]] = {}
        self._dirty: set[int] = set()
        # Deadline order, so that the earliest deadline is the first entry (``now`` never goes
        # back): connections not yet registered by opening time, registered ones by the time
        # of their last frame (moved to the end on every frame). Closing ones are in neither.
        self._unregistered: OrderedDict[int, _Conn] = OrderedDict()
        self._registered: OrderedDict[int, _Conn] = OrderedDict()
        self.shutting_down = False

    # -- queries ---------------------------------------------------------------------------

    @property
    def connection_count(self) -> int:
        return len(self._conns)

    @property
    def online(self) -> frozenset[str]:
        return frozenset(self._online)

    def data_to_send(self, conn_id: int) -> bytes:
        conn = self._conns.get(conn_id)
        if conn is None:
            return b""
        data = bytes(conn.outbox)
        conn.outbox.clear()
        return data

    def should_close(self, conn_id: int) -> bool:
        """True when the shell should close this connection once its output is flushed."""
        conn = self._conns.get(conn_id)
        return conn is None or conn.state is ConnState.CLOSING

    def take_dirty(self) -> set[int]:
        """Connections with new output or a close request since the last call."""
        dirty, self._dirty = self._dirty, set()
        return dirty

    def next_wakeup(self) -> float | None:
        """When :meth:`handle_timeout` wants to run: the earliest handshake or idle deadline
        of a connection, or None. Exact, and cheap enough to ask after every input."""
        wake = None
        for conn in self._unregistered.values():
            wake = conn.opened + self.limits.handshake_timeout
            break
        for conn in self._registered.values():
            idle = conn.last_rx + self.limits.idle_timeout
            if wake is None or idle < wake:
                wake = idle
            break
        return wake

    # -- connection lifecycle --------------------------------------------------------------

    def connection_made(self, conn_id: int, now: float, peer: str = "") -> bool:
        """A TCP connection arrived; False means refuse it (close at once)."""
        pending = len(self._conns) - len(self._registered)
        if (
            self.shutting_down
            or len(self._conns) >= self.limits.max_connections
            or pending >= self.limits.max_pending
        ):
            self.counters.refused_connections += 1
            log.warning("connection refused: too many", peer=peer)
            return False
        channel = NoiseChannel.responder(self._private, self.rng, self.limits.channel)
        conn = _Conn(conn_id, channel, now, peer, self.limits.burst)
        self._conns[conn_id] = self._unregistered[conn_id] = conn
        self.counters.connections += 1
        return True

    def connection_lost(self, conn_id: int, now: float) -> None:
        conn = self._conns.pop(conn_id, None)
        if conn is None:
            return
        self._unregistered.pop(conn_id, None)
        self._registered.pop(conn_id, None)
        conn.channel.close()
        for name in conn.watching:
            watchers = self._watchers.get(name)
            if watchers is not None:
                watchers.discard(conn_id)
                if not watchers:
                    del self._watchers[name]
        if conn.name is not None and self._online.get(conn.name) is conn:
            del self._online[conn.name]
            log.info("node offline", name=conn.name, conn=conn_id, reason=conn.close_reason)
            self._notify(conn.name, False)
        self._dirty.discard(conn_id)

    def _close(self, conn: _Conn, reason: str, final: Message | None = None) -> None:
        if conn.state is ConnState.CLOSING:
            return
        if final is not None and conn.channel.established:
            self._queue(conn, final)
        conn.state = ConnState.CLOSING
        conn.close_reason = reason
        self._unregistered.pop(conn.id, None)
        self._registered.pop(conn.id, None)
        self._dirty.add(conn.id)
        # Presence changes now, not when the socket finally closes.
        if conn.name is not None and self._online.get(conn.name) is conn:
            del self._online[conn.name]
            log.info("node offline", name=conn.name, conn=conn.id, reason=reason)
            self._notify(conn.name, False)

    def shutdown(self, now: float) -> None:
        """Graceful shutdown: refuse new connections, tell every node, close all."""
        self.shutting_down = True
        for conn in list(self._conns.values()):
            self._close(conn, "shutdown", GoingAway("rendezvous shutting down"))

    def handle_timeout(self, now: float) -> None:
        """Close the connections whose deadline has come: ``handshake_timeout`` after opening
        for one not yet registered, ``idle_timeout`` after its last frame for a registered one.
        Exact: a connection is closed by the first call at or after its deadline. Only the
        connections closed are looked at (they are at the front of their deadline order)."""
        limits = self.limits
        for order, timeout, reason in (
            (self._unregistered, limits.handshake_timeout, "handshake timeout"),
            (self._registered, limits.idle_timeout, "idle timeout"),
        ):
            while order:
                conn = next(iter(order.values()))
                since = conn.last_rx if conn.state is ConnState.READY else conn.opened
                if now < since + timeout:
                    break
                self.counters.timeouts += 1
                self._close(conn, reason)

    # -- incoming bytes --------------------------------------------------------------------

    def data_received(self, conn_id: int, data: bytes, now: float) -> None:
        conn = self._conns.get(conn_id)
        if conn is None or conn.state is ConnState.CLOSING:
            return
        try:
            for frame in conn.decoder.feed(data):
                if conn.state is ConnState.CLOSING:
                    return
                if conn.state is ConnState.HANDSHAKE:
                    response = conn.channel.receive_handshake(frame)
                    assert response is not None
                    conn.key = conn.channel.remote_static
                    conn.outbox += response
                    self._dirty.add(conn.id)
                    conn.state = ConnState.REGISTERING
                    continue
                plaintext = conn.channel.decrypt(frame)
                conn.last_rx = now
                if conn.state is ConnState.READY:
                    self._registered.move_to_end(conn.id)
                self._on_message(conn, decode_message(plaintext), now)
        except SignalDecodeError as exc:
            self.counters.decode_errors += 1
            log.info("bad frame", conn=conn.id, peer=conn.peer, error=str(exc))
            self._close(conn, "bad frame")
        except ChannelError as exc:
            self.counters.channel_errors += 1
            log.info("channel error", conn=conn.id, peer=conn.peer, error=str(exc))
            self._close(conn, "channel error")

    def _queue(self, conn: _Conn, msg: Message) -> None:
        if conn.state is ConnState.CLOSING:
            return
        try:
            conn.outbox += conn.channel.encrypt(encode_message(msg))
        except ChannelError:
            self._close(conn, "session message limit")
            return
        self._dirty.add(conn.id)
        if len(conn.outbox) > self.limits.hard_outbox:
            log.warning("closing slow connection", conn=conn.id, name=conn.name)
            conn.outbox.clear()
            self._close(conn, "send queue overflow")

    def _take_token(self, conn: _Conn, now: float) -> bool:
        limits = self.limits
        conn.tokens = min(limits.burst, conn.tokens + (now - conn.tokens_at) * limits.rate)
        conn.tokens_at = now
        if conn.tokens >= 1.0:
            conn.tokens -= 1.0
            conn.rate_drops = 0
            return True
        self.counters.rate_limited += 1
        conn.rate_drops += 1
        if conn.rate_drops > limits.max_rate_drops:
            self._close(conn, "rate limit")
        return False

    def _protocol_error(self, conn: _Conn, what: str) -> None:
        self.counters.protocol_errors += 1
        log.info("protocol error", conn=conn.id, name=conn.name, error=what)
        self._close(conn, "protocol error", Error(ErrorCode.PROTOCOL, what))

    def _on_message(self, conn: _Conn, msg: Message, now: float) -> None:
        if conn.state is ConnState.REGISTERING:
            if isinstance(msg, Register):
                self._register(conn, msg.name)
            else:
                self._protocol_error(conn, "expected Register")
            return
        if isinstance(msg, Ping):
            self._queue(conn, Pong(msg.seq))
            return
        if isinstance(msg, Pong):
            return
        if not self._take_token(conn, now):
            if isinstance(msg, Route):
                self._queue(conn, RouteFailed(msg.ref, msg.to, RouteFailure.RATE_LIMITED))
            elif isinstance(msg, TurnRequest):
                self._queue(conn, Error(ErrorCode.RATE_LIMITED, "too many requests"))
            return
        if isinstance(msg, Route):
            self._route(conn, msg)
        elif isinstance(msg, Watch):
            self._watch(conn, msg.names)
        elif isinstance(msg, Unwatch):
            for name in msg.names:
                conn.watching.discard(name)
                watchers = self._watchers.get(name)
                if watchers is not None:
                    watchers.discard(conn.id)
                    if not watchers:
                        del self._watchers[name]
        elif isinstance(msg, TurnRequest):
            self._issue_turn(conn)
        else:
            self._protocol_error(conn, f"unexpected {type(msg).__name__}")

    def _register(self, conn: _Conn, name: str) -> None:
        assert conn.key is not None
        admission = self.store.admit(name, conn.key)
        if not admission.allowed:
            assert admission.reason is not None
            self.counters.refused_registrations += 1
            log.warning(
                "registration refused",
                name=name,
                conn=conn.id,
                peer=conn.peer,
                reason=admission.reason.name,
            )
            self._close(conn, "registration refused", Refused(admission.reason, admission.text))
            return
        if admission.new_binding:
            self.counters.new_bindings += 1
            log.info("new name binding (trust on first use)", name=name)
        old = self._online.get(name)
        conn.name = name
        conn.state = ConnState.READY
        del self._unregistered[conn.id]
        self._registered[conn.id] = conn
        self._online[name] = conn
        self.counters.registrations += 1
        self._queue(conn, Registered(name))
        if old is not None:
            # Same name, same key (the store binds them): the node reconnected.
            old.name = None
            self._close(old, "replaced", GoingAway("replaced by a newer connection"))
            log.info("node reconnected", name=name, conn=conn.id, old_conn=old.id)
        else:
            log.info("node online", name=name, conn=conn.id, peer=conn.peer)
            self._notify(name, True)

    def _notify(self, name: str, online: bool) -> None:
        for watcher_id in list(self._watchers.get(name, ())):
            watcher = self._conns.get(watcher_id)
            if watcher is not None and watcher.state is ConnState.READY:
                self._queue(watcher, Presence(name, online))

    def _watch(self, conn: _Conn, names: tuple[str, ...]) -> None:
        for name in names:
            if name not in conn.watching:
                if len(conn.watching) >= self.limits.max_watches:
                    break
                conn.watching.add(name)
                self._watchers.setdefault(name, set()).add(conn.id)
            self._queue(conn, Presence(name, name in self._online))

    def _route(self, conn: _Conn, msg: Route) -> None:
        assert conn.name is not None
        dest = self._online.get(msg.to)
        if dest is None or dest.state is not ConnState.READY:
            self.counters.route_offline += 1
            self._queue(conn, RouteFailed(msg.ref, msg.to, RouteFailure.PEER_OFFLINE))
            return
        if len(dest.outbox) > self.limits.max_outbox:
            self.counters.route_busy += 1
            self._queue(conn, RouteFailed(msg.ref, msg.to, RouteFailure.PEER_BUSY))
            return
        self.counters.routed += 1
        self._queue(dest, Deliver(conn.name, msg.blob))

    def _issue_turn(self, conn: _Conn) -> None:
        assert conn.name is not None
        turn = self.turn
        if turn is None or turn.auth_secret is None:
            self._queue(
                conn, Error(ErrorCode.NO_TURN, "this rendezvous issues no TURN credentials")
            )
            return
        cred = make_rest_credential(
            turn.auth_secret, conn.name, self.wall_clock(), turn.credential_lifetime
        )
        self.counters.turn_issued += 1
        self._queue(
            conn,
            TurnCredentials(cred.username, cred.password, turn.credential_lifetime, turn.realm),
        )


# -- the trio shell ------------------------------------------------------------------------------


class SignalingServer:
    """The trio shell around :class:`SignalingServerCore`: a TCP listener, one reader and one
    writer task per connection, one timer task. ``started`` by :func:`serve_signaling`.

    The timer task sleeps until the core's next wake-up; input that brings that time closer
    (a new connection) moves the sleep's deadline, so an idle rendezvous wakes only when a
    connection's deadline is due."""

    def __init__(
        self,
        core: SignalingServerCore,
        listen: tuple[str, int],
        *,
        send_timeout: float = 10.0,
        shutdown_grace: float = 2.0,
    ) -> None:
        self.core = core
        self.listen = listen
        self.send_timeout = send_timeout
        self.shutdown_grace = shutdown_grace
        self.address: tuple[str, int] | None = None
        self._wakeups: dict[int, Wakeup] = {}
        self._timer_scope: trio.CancelScope | None = None
        #: Times the timer task woke and ran the core's timeouts (tests count them).
        self.timer_runs = 0
        self._next_id = 0
        self._scope = trio.CancelScope()
        self._run_scope = trio.CancelScope()
        self._listeners: list[trio.SocketListener] = []
        self._all_closed = trio.Event()
        self._closed = trio.Event()

    def _kick(self) -> None:
        for conn_id in self.core.take_dirty():
            wakeup = self._wakeups.get(conn_id)
            if wakeup is not None:
                wakeup.set()
        scope = self._timer_scope
        if scope is not None:
            wake = self.core.next_wakeup()
            deadline = math.inf if wake is None else wake
            if deadline != scope.deadline:
                scope.deadline = deadline

    async def run(self, *, task_status: trio.TaskStatus[SignalingServer]) -> None:
        host, port = self.listen
        self._listeners = await trio.open_tcp_listeners(port, host=host)
        sockname = self._listeners[0].socket.getsockname()
        self.address = (str(sockname[0]), int(sockname[1]))
        log.info("signaling listening", address=format_address(self.address))
        try:
            async with trio.open_nursery() as outer:
                outer.start_soon(self._serve)
                task_status.started(self)
                try:
                    with self._run_scope:
                        await trio.sleep_forever()
                finally:
                    with trio.CancelScope(shield=True):
                        await self._graceful()
        finally:
            self.core.store.close()
            self._closed.set()

    async def _serve(self) -> None:
        # Shielded from the caller's cancellation so that _graceful can say goodbye first;
        # _graceful cancels it when done.
        with self._scope:
            self._scope.shield = True
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._timer_loop)
                for listener in self._listeners:
                    nursery.start_soon(self._accept_loop, listener, nursery)

    async def _graceful(self) -> None:
        self.core.shutdown(trio.current_time())
        self._kick()
        for listener in self._listeners:
            await listener.aclose()
        with trio.move_on_after(self.shutdown_grace):
            if self.core.connection_count:
                await self._all_closed.wait()
        self._scope.cancel()
        log.info("signaling stopped")

    async def aclose(self) -> None:
        """Shut down gracefully (GoingAway to every node) and wait until stopped."""
        self._run_scope.cancel()
        await self._closed.wait()

    async def _accept_loop(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        try:
            while True:
                stream = await listener.accept()
                nursery.start_soon(self._handle, stream)
        except (trio.ClosedResourceError, OSError):
            return

    async def _timer_loop(self) -> None:
        while True:
            wake = self.core.next_wakeup()
            with trio.move_on_at(math.inf if wake is None else wake) as scope:
                self._timer_scope = scope
                await trio.sleep_forever()
            self._timer_scope = None
            self.timer_runs += 1
            self.core.handle_timeout(trio.current_time())
            self._kick()

    async def _handle(self, stream: trio.SocketStream) -> None:
        self._next_id += 1
        conn_id = self._next_id
        try:
            peer = format_address(stream.socket.getpeername()[:2])
        except OSError:
            peer = "?"
        async with stream:
            if not self.core.connection_made(conn_id, trio.current_time(), peer):
                return
            self._kick()  # its handshake deadline may be the earliest now
            wakeup = self._wakeups[conn_id] = Wakeup()
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._writer, stream, conn_id, wakeup, nursery.cancel_scope)
                    await self._reader(stream, conn_id)
                    if not self.core.should_close(conn_id):
                        nursery.cancel_scope.cancel()  # the node hung up
                    # else the writer flushes the last words (Refused, GoingAway), then ends.
            finally:
                del self._wakeups[conn_id]
                self.core.connection_lost(conn_id, trio.current_time())
                self._kick()
                if not self.core.connection_count:
                    self._all_closed.set()
                    self._all_closed = trio.Event()

    async def _reader(self, stream: trio.SocketStream, conn_id: int) -> None:
        while not self.core.should_close(conn_id):
            try:
                data = await stream.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            if not data:
                return
            self.core.data_received(conn_id, data, trio.current_time())
            self._kick()

    async def _writer(
        self,
        stream: trio.SocketStream,
        conn_id: int,
        wakeup: Wakeup,
        scope: trio.CancelScope,
    ) -> None:
        try:
            while True:
                data = self.core.data_to_send(conn_id)
                if data:
                    with trio.move_on_after(self.send_timeout) as timeout:
                        await stream.send_all(data)
                    if timeout.cancelled_caught:
                        break
                    continue
                if self.core.should_close(conn_id):
                    break
                await wakeup.wait()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        scope.cancel()


def open_store(config: RendezvousConfig) -> SqliteStore:
    """The SQLite registration store a rendezvous config describes."""
    return SqliteStore(config.database, config.open_registration, config.nodes)


async def serve_signaling(
    config: RendezvousConfig,
    *,
    store: RegistrationStore | None = None,
    limits: ServerLimits | None = None,
    rng: Rng = os.urandom,
    wall_clock: Callable[[], float] | None = None,
    task_status: trio.TaskStatus[SignalingServer] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve signaling on ``config.listen`` until cancelled, then shut down gracefully (every
    node is told GoingAway and reconnects with backoff). ``task_status.started`` receives the
    running :class:`SignalingServer` (its ``address`` is the bound address, useful with port 0).

    ``store`` defaults to the SQLite database ``config.database``.
    """
    import time

    core = SignalingServerCore(
        config.private_key,
        store if store is not None else open_store(config),
        rng=rng,
        wall_clock=wall_clock or time.time,
        turn=config.turn,
        limits=limits,
    )
    server = SignalingServer(core, config.listen)
    await server.run(task_status=task_status)
