"""The node's signaling client over TCP with trio: the thin shell around
:class:`~p2ptun.signal.client.SignalClientCore`.

The shell reads no config: the daemon translates the node config into the constructor's
arguments (:func:`p2ptun.node.daemon.signaling_client`). Usage::

    client = SignalingClient(host, name=..., private_key=..., rendezvous=(name, port),
                             rendezvous_key=..., peers={"bob": bob_public_key})
    async with trio.open_nursery() as nursery:
        await nursery.start(client.run)
        session = client.offer("bob", description_text)          # waits for bob's presence
        async for event in client.signals:                        # SignalReceived(peer, msg)
            ...
        creds = await client.turn_credentials()                   # rendezvous-issued TURN

:meth:`SignalingClient.run` connects, reconnects with backoff forever, and returns only after
:meth:`SignalingClient.stop`. Received signals go to :attr:`SignalingClient.signals`; other
events (presence, registration, disconnects, TURN) to :attr:`SignalingClient.events`. Both
channels are bounded; when a consumer falls behind, events are dropped and counted, never
buffered without bound.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Mapping, Sequence

import trio

from p2ptun.errors import P2ptunError
from p2ptun.log import get_logger
from p2ptun.net import keepalive
from p2ptun.net.ports import Host
from p2ptun.net.timer import CoreTimer
from p2ptun.net.wakeup import Wakeup
from p2ptun.signal.backoff import BackoffPolicy
from p2ptun.signal.channel import ChannelLimits
from p2ptun.signal.client import (
    ClientEvent,
    ClientState,
    ClientTimers,
    RegisteredEvent,
    SignalClientCore,
    SignalReceived,
    TurnCredentialsReceived,
    TurnUnavailable,
)
from p2ptun.signal.messages import TurnCredentials
from p2ptun.signal.seal import PeerMessage, ReplayRecord, SealPolicy

log = get_logger("signal.client")


class TurnCredentialsUnavailable(Exception):
    """The rendezvous issues no TURN credentials, or did not answer in time."""


def is_ip_literal(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class SignalingClient:
    """Connects a node to its rendezvous and keeps it connected."""

    def __init__(
        self,
        host: Host,
        *,
        name: str,
        private_key: bytes,
        rendezvous: tuple[str, int] | Sequence[tuple[str, int]],
        rendezvous_key: bytes,
        peers: Mapping[str, bytes],
        backoff: BackoffPolicy | None = None,
        timers: ClientTimers | None = None,
        seal_policy: SealPolicy | None = None,
        channel_limits: ChannelLimits | None = None,
        buffer: int = 1024,
        replay: ReplayRecord | None = None,
        certificate: bytes | None = None,
        revocations: bytes | None = None,
    ) -> None:
        """``host`` connects to the rendezvous and gives the core its clock and randomness
        (keys, jitter, the signaling timestamps' wall clock). ``certificate``: register as
        a member of a network with it; ``revocations``: the revocation list to hand on.
        ``rendezvous``: one ``(host, port)`` (a name is resolved by the host on each attempt,
        which tries its records in turn) or several (the instances of a cluster): then each
        attempt goes to the next one, a name resolved anew each time and each of its
        addresses taken in turn, so that a lost or unreachable instance is left for another
        after the core's jittered backoff."""
        self.host = host
        if len(rendezvous) == 2 and isinstance(rendezvous[1], int):
            self.addresses: list[tuple[str, int]] = [rendezvous]  # type: ignore[list-item]
        else:
            self.addresses = [(str(a[0]), int(a[1])) for a in rendezvous]  # type: ignore[index]
        self.rendezvous = self.addresses[0]
        self._attempt = 0
        self.core = SignalClientCore(
            name=name,
            private_key=private_key,
            rendezvous_key=rendezvous_key,
            peers=peers,
            rng=host.random_bytes,
            random=host.rng.random,
            wall_clock=host.wall_clock,
            now=0.0,
            backoff=backoff,
            timers=timers,
            seal_policy=seal_policy,
            channel_limits=channel_limits,
            replay=replay,
            certificate=certificate,
            revocations=revocations,
        )
        self._signals_send, self.signals = trio.open_memory_channel[SignalReceived](buffer)
        self._events_send, self.events = trio.open_memory_channel[ClientEvent](buffer)
        self.dropped_events = 0
        self._timer = Wakeup()
        """Wakes :meth:`run` between connections (a deadline moved, or stop)."""
        self._core_timer = CoreTimer(self.core.next_wakeup, self._on_timeout)
        """The core's timers while connected."""
        self._writer = Wakeup()
        self._changed = trio.Event()
        self._conn_scope: trio.CancelScope | None = None
        self._turn_unavailable = 0

    # -- state -----------------------------------------------------------------------------

    @property
    def state(self) -> ClientState:
        return self.core.state

    @property
    def ready(self) -> bool:
        return self.core.ready

    def is_online(self, peer: str) -> bool | None:
        return self.core.is_online(peer)

    # -- plumbing --------------------------------------------------------------------------

    def _after(self) -> None:
        """Run after every call into the core: deliver events, wake the writer and timer,
        drop the connection if the core abandoned it."""
        for event in self.core.events():
            try:
                if isinstance(event, SignalReceived):
                    self._signals_send.send_nowait(event)
                else:
                    self._events_send.send_nowait(event)
            except trio.WouldBlock:
                self.dropped_events += 1
            if isinstance(event, TurnUnavailable):
                self._turn_unavailable += 1
        self._writer.set()
        self._timer.set()
        self._core_timer.rearm()
        self._changed.set()
        self._changed = trio.Event()
        if not self.core.connected and self._conn_scope is not None:
            self._conn_scope.cancel()

    def flush(self) -> None:
        """After calling the core directly (:meth:`SignalClientCore.add_peer`,
        :meth:`~SignalClientCore.publish_revocations`, ...): deliver its events, send what
        it queued."""
        self._after()

    async def _wait_changed(self) -> None:
        await self._changed.wait()

    async def run(
        self, *, task_status: trio.TaskStatus[SignalingClient] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Keep connected until :meth:`stop`."""
        self.core.connect_at = trio.current_time()
        task_status.started(self)
        try:
            while self.core.state is not ClientState.STOPPED:
                if self.core.poll_connect(trio.current_time()):
                    await self._connection()
                    continue
                deadline = self.core.next_wakeup()
                with trio.move_on_at(deadline if deadline is not None else math.inf):
                    await self._timer.wait()
                    continue
                self.core.handle_timeout(trio.current_time())
                self._after()
        finally:
            self.core.stop()
            self._after()

    def reconnect_now(self, reason: str) -> None:
        """Drop the connection and connect again at once: our address changed (a NAT
        renumbered or forgot us), so the connection is dead although TCP has not noticed."""
        if self.core.connected:
            log.info("reconnecting to the rendezvous", reason=reason)
            self.core.connection_lost(trio.current_time(), reason, retry_now=True)
            self._after()

    def stop(self) -> None:
        """Stop: close the connection and make :meth:`run` return."""
        self.core.stop()
        self._after()

    async def _next_address(self) -> tuple[str, int]:
        """The address of this attempt (see ``__init__``)."""
        if len(self.addresses) == 1:
            # One address, as before clusters: the host resolves a name on each attempt and
            # tries its records in turn (happy eyeballs, SystemHost).
            return self.addresses[0]
        candidates: list[tuple[str, int]] = []
        for name, port in self.addresses:
            if is_ip_literal(name):
                candidates.append((name, port))
                continue
            found: list[tuple[str, int]] = []
            try:
                with trio.move_on_after(5):
                    found = [(a[0], a[1]) for a in await self.host.resolve(name, port)]
            except (OSError, P2ptunError):
                pass
            # Nothing found: the name itself, so that connect_tcp says why it fails.
            candidates.extend(found or [(name, port)])
        return candidates[self._attempt % len(candidates)]

    async def _connection(self) -> None:
        name, port = self.rendezvous = await self._next_address()
        self._attempt += 1
        deadline = self.core.next_wakeup() or math.inf
        stream: trio.abc.Stream | None = None
        with trio.move_on_at(deadline):
            try:
                conn = await self.host.connect_tcp(name, port, keepalive=keepalive.SIGNALING)
                stream = conn.stream
            except OSError as exc:
                self.core.connection_failed(trio.current_time(), exc.strerror or str(exc))
                self._after()
                return
        if stream is None:
            self.core.handle_timeout(trio.current_time())
            self._after()
            return
        async with stream:
            self.core.connection_made(trio.current_time())
            try:
                async with trio.open_nursery() as nursery:
                    self._conn_scope = nursery.cancel_scope
                    self._after()
                    nursery.start_soon(self._read, stream)
                    nursery.start_soon(self._write, stream)
                    nursery.start_soon(self._core_timer.run)
            finally:
                self._conn_scope = None
                if self.core.connected:
                    self.core.connection_lost(trio.current_time(), "connection closed")
                    self._after()

    async def _read(self, stream: trio.abc.Stream) -> None:
        while True:
            try:
                data = await stream.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                self.core.connection_lost(trio.current_time(), f"read failed: {exc}")
                self._after()
                return
            if not data:
                self.core.connection_lost(trio.current_time(), "rendezvous closed the connection")
                self._after()
                return
            self.core.data_received(bytes(data), trio.current_time())
            self._after()

    async def _write(self, stream: trio.abc.Stream) -> None:
        while True:
            data = self.core.data_to_send()
            if data:
                try:
                    await stream.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    self.core.connection_lost(trio.current_time(), f"write failed: {exc}")
                    self._after()
                    return
                continue
            await self._writer.wait()

    def _on_timeout(self, now: float) -> None:
        self.core.handle_timeout(now)
        self._after()

    # -- the daemon's API ------------------------------------------------------------------

    def send_to(self, peer: str, message: PeerMessage) -> bool:
        """Seal ``message`` to ``peer`` and route it through the rendezvous (see
        :meth:`SignalClientCore.send`: offers wait for presence; others need registration and
        return False without it)."""
        sent = self.core.send(peer, message, trio.current_time())
        self._after()
        return sent

    def offer(self, peer: str, description: str, *, restart: bool = False) -> int:
        """Offer (or restart) a session to ``peer``: this node is ICE-controlling. Returns
        the session id."""
        session = self.core.offer(peer, description, restart=restart, now=trio.current_time())
        self._after()
        return session

    async def wait_ready(self) -> None:
        """Wait until registered with the rendezvous."""
        while not self.core.ready:
            await self._wait_changed()

    async def wait_online(self, peer: str) -> None:
        """Wait until the rendezvous says ``peer`` is online."""
        while not (self.core.ready and self.core.is_online(peer)):
            await self._wait_changed()

    async def turn_credentials(self, timeout: float = 10.0) -> TurnCredentials:
        """Fresh TURN credentials from the rendezvous (coturn REST-API form); raises
        TurnCredentialsUnavailable when it has none or does not answer within ``timeout``."""
        with trio.move_on_after(timeout):
            await self.wait_ready()
            before = self.core.turn
            refusals = self._turn_unavailable
            self.core.request_turn()
            self._after()
            while self.core.turn is before:
                if self._turn_unavailable != refusals:
                    raise TurnCredentialsUnavailable("the rendezvous issues no TURN credentials")
                await self._wait_changed()
            received = self.core.turn
            assert isinstance(received, TurnCredentialsReceived)
            return received.credentials
        raise TurnCredentialsUnavailable("no TURN credentials from the rendezvous in time")


__all__ = [
    "RegisteredEvent",
    "SignalReceived",
    "SignalingClient",
    "TurnCredentialsUnavailable",
]
