"""The rendezvous' signaling server: the trio shell that serves the sans-I/O hub
(:class:`p2ptun.signal.hub.SignalingServerCore`) on TCP.

One TCP listener, one reader and one writer task per connection, one timer task that sleeps
until the core's next deadline. The shell builds the core's inputs from the rendezvous config:
the registration store (:mod:`p2ptun.rendezvous.store`), the served networks
(:mod:`p2ptun.rendezvous.networks`, from ``[[network]]``) and the TURN credential issuer
(:func:`rest_turn_issuer`, coturn's REST-API form from ``[turn] auth_secret``).

Entry point for the rendezvous main: :func:`serve_signaling`.
"""

from __future__ import annotations

import trio

from p2ptun.addr import format_address
from p2ptun.config import NetworkEntry, RendezvousConfig, TurnServerSettings
from p2ptun.log import get_logger
from p2ptun.net.ports import Connection, Host, Listener
from p2ptun.net.timer import CoreTimer
from p2ptun.net.wakeup import Wakeup
from p2ptun.rendezvous.cluster import ClusterLink, default_instance_id
from p2ptun.rendezvous.networks import NetworkStore
from p2ptun.rendezvous.redis_store import RedisStore
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
        host: Host,
        core: SignalingServerCore,
        listen: tuple[str, int],
        *,
        store: RegistrationStore | None = None,
        networks: NetworkStore | None = None,
        send_timeout: float = 10.0,
        shutdown_grace: float = 2.0,
    ) -> None:
        self.host = host
        self.core = core
        self.store = store
        self.networks = networks
        self.listen = listen
        self.send_timeout = send_timeout
        self.shutdown_grace = shutdown_grace
        self.address: tuple[str, int] | None = None
        self._wakeups: dict[int, Wakeup] = {}
        self._timer = CoreTimer(core.next_wakeup, self._on_timeout)
        self._next_id = 0
        self._scope = trio.CancelScope()
        self._run_scope = trio.CancelScope()
        self._listeners: list[Listener] = []
        self._all_closed = trio.Event()
        self._closed = trio.Event()
        #: The link to the other instances of a cluster (``[cluster]``), run beside the server.
        self.cluster: ClusterLink | None = None

    def _kick(self) -> None:
        for conn_id in self.core.take_dirty():
            wakeup = self._wakeups.get(conn_id)
            if wakeup is not None:
                wakeup.set()
        if self.cluster is not None:
            self.cluster.send(self.core.take_cluster_messages())
        self._timer.rearm()

    async def run(self, *, task_status: trio.TaskStatus[SignalingServer]) -> None:
        ip, port = self.listen
        listener = await self.host.listen_tcp(ip, port)
        self._listeners = [listener]
        self.address = listener.local_address
        log.info("signaling listening", address=format_address(self.address))
        try:
            async with trio.open_nursery() as outer:
                if self.cluster is not None:
                    outer.start_soon(self.cluster.run)
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
            if self.networks is not None:
                self.networks.close()
            self._closed.set()

    async def _serve(self) -> None:
        # Shielded from the caller's cancellation so that _graceful can say goodbye first;
        # _graceful cancels it when done.
        with self._scope:
            self._scope.shield = True
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._timer.run)
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

    async def _accept_loop(self, listener: Listener, nursery: trio.Nursery) -> None:
        try:
            while True:
                conn = await listener.accept()
                nursery.start_soon(self._handle, conn)
        except (trio.ClosedResourceError, OSError):
            return

    def reload_networks(self, entries: tuple[NetworkEntry, ...]) -> None:
        """The operator's revocation list files were read again (SIGHUP): hand on the newer
        ones and close the members they revoke."""
        if self.networks is None:
            return
        now = trio.current_time()
        for network in self.networks.reload(entries):
            self.core.revocations_changed(network, now)
        self._kick()

    @property
    def timer_runs(self) -> int:
        """Times the timer woke and ran the core's timeouts (tests count them)."""
        return self._timer.runs

    def _on_timeout(self, now: float) -> None:
        self.core.handle_timeout(now)
        self._kick()

    async def _handle(self, conn: Connection) -> None:
        self._next_id += 1
        conn_id = self._next_id
        peer = format_address(conn.remote)
        stream = conn.stream
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

    async def _reader(self, stream: trio.abc.Stream, conn_id: int) -> None:
        while not self.core.should_close(conn_id):
            try:
                data = await stream.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            if not data:
                return
            self.core.data_received(conn_id, bytes(data), trio.current_time())
            self._kick()

    async def _writer(
        self,
        stream: trio.abc.Stream,
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


def open_store(config: RendezvousConfig, host: Host) -> SqliteStore:
    """The SQLite registration store a rendezvous config describes."""
    return SqliteStore(
        config.database, config.open_registration, config.nodes, wall_clock=host.wall_clock
    )


async def serve_signaling(
    config: RendezvousConfig,
    *,
    host: Host,
    store: RegistrationStore | None = None,
    limits: ServerLimits | None = None,
    task_status: trio.TaskStatus[SignalingServer] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve signaling on ``config.listen`` of ``host`` until cancelled, then shut down
    gracefully (every node is told GoingAway and reconnects with backoff).
    ``task_status.started`` receives the running :class:`SignalingServer` (its ``address`` is
    the bound address, useful with port 0). The core's clock and randomness are the host's.

    ``store`` defaults to the SQLite database ``config.database``.
    """
    cluster = config.cluster
    if store is None:
        store = (
            open_store(config, host)
            if cluster is None
            else RedisStore(config.open_registration, config.nodes)
        )
    networks = None
    if config.networks:
        networks = NetworkStore(
            config.networks,
            # In a cluster the lists and invites are shared through Redis; this copy is memory.
            config.database if cluster is None else ":memory:",
            pinned={n.name: n.public_key for n in config.nodes},
        )
    instance = None
    if cluster is not None:
        instance = cluster.instance or default_instance_id()
    core = SignalingServerCore(
        config.private_key,
        store,
        rng=host.random_bytes,
        wall_clock=host.wall_clock,
        turn=rest_turn_issuer(config.turn),
        limits=limits,
        turn_for_self_registered=config.open_registration_turn,
        memberships=networks,
        instance=instance,
    )
    server = SignalingServer(host, core, config.listen, store=store, networks=networks)
    if cluster is not None:
        if not isinstance(store, RedisStore):
            raise TypeError("a cluster's store is a RedisStore")
        link = server.cluster = ClusterLink(host, cluster, core, store, networks, server._kick)
        if networks is not None:
            networks.on_taken = lambda network, blob, number: link.revocations_taken(
                network, blob, number
            )
            networks.on_invite = link.invite_used
    await server.run(task_status=task_status)
