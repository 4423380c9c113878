"""The rendezvous' signaling server: the trio shell that serves the sans-I/O hub
(:class:`p2ptun.signal.hub.SignalingServerCore`) on TCP.

One TCP listener, one reader and one writer task per connection, one timer task that sleeps
until the core's next deadline. The shell builds the core's inputs from the rendezvous config:
the registration store (:mod:`p2ptun.rendezvous.store`) and the TURN credential issuer
(:func:`rest_turn_issuer`, coturn's REST-API form from ``[turn] auth_secret``).

Entry point for the rendezvous main: :func:`serve_signaling`.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable

import trio

from p2ptun.addr import format_address
from p2ptun.config import RendezvousConfig, TurnServerSettings
from p2ptun.log import get_logger
from p2ptun.net.wakeup import Wakeup
from p2ptun.noise import Rng
from p2ptun.rendezvous.store import RegistrationStore, SqliteStore
from p2ptun.signal.hub import ServerLimits, SignalingServerCore, TurnIssuer
from p2ptun.signal.messages import TurnCredentials
from p2ptun.turn.credentials import make_rest_credential

log = get_logger("rendezvous.signaling")


def rest_turn_issuer(turn: TurnServerSettings | None) -> TurnIssuer | None:
    """What the hub hands a registered node asking for TURN: a credential in coturn's REST-API
    form (username ``expiry:name``, password base64(HMAC-SHA1(auth_secret, username))), valid
    ``credential_lifetime`` seconds, for ``realm``. None when ``[turn]`` has no
    ``auth_secret``: the hub then answers that it issues none."""
    if turn is None or turn.auth_secret is None:
        return None
    secret, lifetime, realm = turn.auth_secret, turn.credential_lifetime, turn.realm

    def issue(name: str, now: float) -> TurnCredentials:
        cred = make_rest_credential(secret, name, now, lifetime)
        return TurnCredentials(cred.username, cred.password, lifetime, realm)

    return issue


class SignalingServer:
    """The trio shell around :class:`~p2ptun.signal.hub.SignalingServerCore`: a TCP listener,
    one reader and one writer task per connection, one timer task. ``started`` by
    :func:`serve_signaling`.

    The timer task sleeps until the core's next wake-up; input that brings that time closer
    (a new connection) moves the sleep's deadline, so an idle rendezvous wakes only when a
    connection's deadline is due. ``store``, the one the core admits registrations with, is
    closed when the server stops."""

    def __init__(
        self,
        core: SignalingServerCore,
        listen: tuple[str, int],
        *,
        store: RegistrationStore | None = None,
        send_timeout: float = 10.0,
        shutdown_grace: float = 2.0,
    ) -> None:
        self.core = core
        self.store = store
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
            if self.store is not None:
                self.store.close()
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
    if store is None:
        store = open_store(config)
    core = SignalingServerCore(
        config.private_key,
        store,
        rng=rng,
        wall_clock=wall_clock or time.time,
        turn=rest_turn_issuer(config.turn),
        limits=limits,
        turn_for_self_registered=config.open_registration_turn,
    )
    server = SignalingServer(core, config.listen, store=store)
    await server.run(task_status=task_status)
