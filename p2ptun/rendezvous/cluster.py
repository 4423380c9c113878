"""The rendezvous cluster's trio shell: instances sharing one Redis (``[cluster] redis``).

What lives in Redis (the instances hold nothing another instance needs but this):

- bindings (:mod:`p2ptun.rendezvous.redis_store`), revocation lists (``p2ptun:crl:<network>``,
  a hash of ``number`` and ``list``; only a newer number replaces one), the first use of each
  invite (``p2ptun:invites``, serial → key and name; the first record wins, and a machine
  admitted meanwhile with another key is closed). Like the bindings, the hub decides from a
  copy in memory (:class:`~p2ptun.rendezvous.networks.NetworkStore` on ``:memory:``) that this
  shell keeps in step;
- presence: ``p2ptun:node:<name>`` holds the :class:`~p2ptun.signal.cluster.NodeUp` of the
  node, set by the instance its connection is on, expiring after ``presence_ttl`` unless that
  instance refreshes it (every third of it; a script refreshes only a key that is still its
  own). An instance killed without a word loses its nodes' presence within the TTL; the nodes
  themselves fail over to another instance at once (:mod:`p2ptun.net.signaling`), whose
  NodeUp replaces the old one;
- ``p2ptun:alive``, a marker without expiry: missing means Redis lost its data (restarted
  without persistence), and every instance writes back what it knows.

Messages go through Redis **pub/sub**, not streams: ``p2ptun:events`` to all instances
(NodeUp, NodeDown, RevocationsChanged, new bindings) and ``p2ptun:to:<instance>`` for the
Forwards to one instance. Signaling is ephemeral — an offer that is lost is sent again when the
node sees its peer's presence again, and a forward to a node that has moved is worthless later
— so fire-and-forget delivery with nothing stored in Redis is the right fit; streams would add
storage, trimming and consumer-group bookkeeping for a durability nobody uses. Every message
is handled as it arrives (the hub's calls are synchronous), so the backlog here is only the
socket's; Redis bounds its side per subscriber (``client-output-buffer-limit pubsub``) and
drops a subscriber that lags, which reconnects and syncs again. Malformed messages are
dropped and counted (:attr:`ClusterCounters.malformed`).

Redis unreachable (at start or later): one warning line, the instance keeps serving the nodes
connected to it (pinned nodes and bindings it knows are admitted from memory), and retries
with backoff; once back it writes its state again and reads the others'.
"""

from __future__ import annotations

import os
import socket
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial

import trio

from p2ptun.config.schema import ClusterSettings
from p2ptun.log import get_logger
from p2ptun.net.ports import Host
from p2ptun.net.redis import Arg, RedisClient, RedisError, RedisSubscriber
from p2ptun.net.wakeup import Wakeup
from p2ptun.rendezvous.networks import NetworkStore
from p2ptun.rendezvous.redis_store import BIND_SCRIPT, BINDING_KEYS, BINDINGS, RedisStore
from p2ptun.signal.cluster import (
    MAGIC,
    ClusterMessage,
    Forward,
    NodeDown,
    NodeUp,
    RevocationsChanged,
    decode_cluster,
    encode_cluster,
)
from p2ptun.signal.errors import SignalDecodeError
from p2ptun.signal.hub import SignalingServerCore

log = get_logger("rendezvous.cluster")

EVENTS = b"p2ptun:events"
ALIVE = b"p2ptun:alive"
NODE_PREFIX = b"p2ptun:node:"
CRL_PREFIX = b"p2ptun:crl:"
#: A new binding on the events channel: this prefix, the 32-byte key, the name.
BINDING_EVENT = b"P2B1"
#: An invite's first use on the events channel: this prefix, the 16-byte serial, the 32-byte
#: key, the name. Kept in the hash ``p2ptun:invites`` (serial → key and name).
INVITE_EVENT = b"P2I1"
INVITES = b"p2ptun:invites"
#: KEYS: invites; ARGV: serial, key + name. The record held afterwards.
INVITE_SCRIPT = b"""
redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2])
return redis.call('HGET', KEYS[1], ARGV[1])
"""
#: Commands waiting for Redis at most; past it the oldest is dropped (a sync follows anyway).
MAX_OUTBOX = 20_000

#: KEYS: node key; ARGV: value, ttl ms, instance prefix. Refresh a key only if still ours.
REFRESH_SCRIPT = b"""
local v = redis.call('GET', KEYS[1])
if v == false or v == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1
end
return 0
"""
#: KEYS: node key; ARGV: the NodeDown's instance prefix (as in NodeUp). Delete if ours.
DELETE_SCRIPT = b"""
local v = redis.call('GET', KEYS[1])
if v and string.sub(v, 1, string.len(ARGV[1])) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""
#: KEYS: crl hash; ARGV: number, list. Store if newer; returns the list held afterwards.
CRL_SCRIPT = b"""
local n = tonumber(redis.call('HGET', KEYS[1], 'number') or '-1')
if tonumber(ARGV[1]) > n then
  redis.call('HSET', KEYS[1], 'number', ARGV[1], 'list', ARGV[2])
end
return redis.call('HGET', KEYS[1], 'list')
"""


def default_instance_id() -> str:
    return f"{socket.gethostname()[:32]}-{os.getpid()}-{os.urandom(3).hex()}"


def to_channel(instance: str) -> bytes:
    return b"p2ptun:to:" + instance.encode()


def node_key(name: str) -> bytes:
    return NODE_PREFIX + name.encode()


def _instance_prefix(instance: str) -> bytes:
    """How every message by ``instance`` begins (DELETE_SCRIPT compares it): the magic, the
    NodeUp type, the instance id (:func:`~p2ptun.signal.cluster.encode_cluster`)."""
    raw = instance.encode()
    return MAGIC + bytes([1, len(raw)]) + raw


@dataclass
class ClusterCounters:
    published: int = 0
    received: int = 0
    #: Cluster messages that did not decode, or were out of place (dropped).
    malformed: int = 0
    #: Messages dropped because Redis was away and the outbox full.
    outbox_dropped: int = 0
    syncs: int = 0
    outages: int = 0


class ClusterLink:
    """One instance's link to the cluster: Redis I/O around the hub core (module docstring).

    ``kick`` is the signaling shell's: call it after feeding the core (it flushes nodes' output
    and takes the core's cluster messages back into :meth:`send`)."""

    def __init__(
        self,
        host: Host,
        settings: ClusterSettings,
        core: SignalingServerCore,
        store: RedisStore,
        networks: NetworkStore | None,
        kick: Callable[[], None],
        *,
        retry_max: float = 5.0,
        max_outbox: int = MAX_OUTBOX,
    ) -> None:
        assert core.instance is not None
        self.host = host
        self.settings = settings
        self.instance = core.instance
        self.core = core
        self.store = store
        self.networks = networks
        self.kick = kick
        self.retry_max = retry_max
        self.max_outbox = max_outbox
        self.counters = ClusterCounters()
        self.connected = False
        self._outbox: deque[tuple[Arg, ...]] = deque()
        self._wakeup = Wakeup()
        self._client: RedisClient | None = None
        self._prefix = _instance_prefix(self.instance)
        store.on_new = self._wakeup.set
        #: Set whenever a sync with Redis finished (tests wait on it).
        self.synced = trio.Event()

    # -- out ---------------------------------------------------------------------------------

    def send(self, messages: Sequence[ClusterMessage]) -> None:
        """Queue the core's cluster messages for Redis (dropped oldest first past the bound)."""
        ttl_ms = int(self.settings.presence_ttl * 1000)
        for msg in messages:
            data = encode_cluster(msg)
            if isinstance(msg, NodeUp):
                self._queue(("SET", node_key(msg.name), data, "PX", ttl_ms))
                self._queue(("PUBLISH", EVENTS, data))
            elif isinstance(msg, NodeDown):
                self._queue(("EVAL", DELETE_SCRIPT, 1, node_key(msg.name), self._prefix))
                self._queue(("PUBLISH", EVENTS, data))
            elif isinstance(msg, Forward):
                self._queue(("PUBLISH", to_channel(msg.instance), data))
            else:
                self._queue(("PUBLISH", EVENTS, data))
        if messages:
            self._wakeup.set()

    def revocations_taken(self, network: str, blob: bytes, number: int) -> None:
        """This instance holds a newer revocation list (file or member): store and tell."""
        self._queue(("EVAL", CRL_SCRIPT, 1, CRL_PREFIX + network.encode(), number, blob))
        self.send([RevocationsChanged(self.instance, network, blob)])

    def invite_used(self, serial: bytes, key: bytes, name: str) -> None:
        """An invite's first use here: record it in Redis (the first record wins) and tell."""
        self._queue(("EVAL", INVITE_SCRIPT, 1, INVITES, serial, key + name.encode()))
        self._queue(("PUBLISH", EVENTS, INVITE_EVENT + serial + key + name.encode()))
        self._wakeup.set()

    def _learn_invite(self, serial: bytes, record: bytes) -> None:
        """Redis (or another instance) holds ``serial → record`` (key + name)."""
        key, name = record[:32], record[32:]
        if self.networks is None or len(serial) != 16 or len(key) != 32 or not 0 < len(name) <= 63:
            self.counters.malformed += 1
            return
        text = name.decode(errors="replace")
        self.networks.learn_invite(serial, key, text)
        # A machine admitted here with this invite and another key used it second.
        self.core.binding_lost(text, key, trio.current_time())

    def _queue(self, command: tuple[Arg, ...]) -> None:
        if len(self._outbox) >= self.max_outbox:
            self._outbox.popleft()
            self.counters.outbox_dropped += 1
        self._outbox.append(command)

    # -- the loop ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Stay linked to Redis until cancelled, reconnecting with backoff."""
        delay = 0.5
        where = self.settings.redis.where
        while True:
            try:
                await self._session()
            except (RedisError, OSError) as exc:
                if self.connected or self.counters.outages == 0:
                    log.warning(
                        f"cluster: Redis at {where} is unreachable ({exc}); serving the nodes "
                        "connected here and retrying"
                    )
                    self.counters.outages += 1
                    delay = 0.5
            finally:
                if self._client is not None:
                    await self._client.aclose()
                    self._client = None
            if self.connected:
                self.connected = False
            await trio.sleep(delay * (0.75 + 0.5 * self.host.rng.random()))
            delay = min(delay * 2, self.retry_max)

    async def _session(self) -> None:
        url = self.settings.redis
        ca = self.settings.tls_ca
        client = self._client = await RedisClient.connect(
            self.host, url, name=f"p2ptun-{self.instance}", ca_file=ca
        )
        try:
            sub = await RedisSubscriber.connect(
                self.host, url, name=f"p2ptun-sub-{self.instance}", ca_file=ca
            )
        except BaseException:
            await client.aclose()
            self._client = None
            raise
        try:
            await sub.subscribe(EVENTS, to_channel(self.instance))
            self._outbox.clear()  # the sync below writes everything again
            await self._sync(client)
            if self.counters.outages:
                log.info(f"cluster: Redis at {url.where} is back", instance=self.instance)
            else:
                log.info(f"cluster: linked to Redis at {url.where}", instance=self.instance)
            self.connected = True
            failure: list[RedisError | OSError] = []
            async with trio.open_nursery() as nursery:
                for task in (partial(self._receive, sub), self._pump, self._refresh):
                    nursery.start_soon(self._guarded, task, client, failure, nursery.cancel_scope)
            if failure:
                raise failure[0]
        finally:
            await sub.aclose()

    @staticmethod
    async def _guarded(
        task: Callable[[RedisClient], Awaitable[None]],
        client: RedisClient,
        failure: list[RedisError | OSError],
        scope: trio.CancelScope,
    ) -> None:
        """Run one of a session's tasks; the first to lose Redis ends them all (and the
        session raises its error, not an exception group)."""
        try:
            await task(client)
        except (RedisError, OSError) as exc:
            failure.append(exc)
            scope.cancel()

    async def _pump(self, client: RedisClient) -> None:
        while True:
            await self._wakeup.wait()
            for name, key in self.store.take_new():
                self._queue(("EVAL", BIND_SCRIPT, 2, BINDINGS, BINDING_KEYS, name, key))
                self._queue(("PUBLISH", EVENTS, BINDING_EVENT + key + name.encode()))
            batch = list(self._outbox)
            self._outbox.clear()
            if not batch:
                continue
            replies = await client.pipeline(batch)
            self.counters.published += sum(1 for c in batch if c[0] == "PUBLISH")
            for command, reply in zip(batch, replies, strict=True):
                if command[1] == INVITE_SCRIPT and isinstance(reply, bytes):
                    serial = command[4]
                    assert isinstance(serial, bytes)
                    if reply != command[5]:
                        self._learn_invite(serial, reply)
                        self.kick()
                if command[1] == BIND_SCRIPT and reply == 0:
                    await self._fix_binding(client, str(command[5]), bytes(command[6]))  # type: ignore[arg-type]

    async def _fix_binding(self, client: RedisClient, name: str, key: bytes) -> None:
        """Another instance bound ``name`` or ``key`` first: take Redis' word."""
        bound = await client.command("HGET", BINDINGS, name)
        now = trio.current_time()
        if isinstance(bound, bytes):
            self.store.learn(name, bound)
            self.core.binding_lost(name, bound, now)
        other = await client.command("HGET", BINDING_KEYS, key)
        if isinstance(other, bytes):
            other_name = other.decode(errors="replace")
            self.store.learn(other_name, key)
            if other_name != name:
                # This key is another name's: the node here under ``name`` is refused.
                self.core.binding_lost(name, b"", now)
        self.kick()
        log.warning("cluster: a binding made here lost to another instance's", name=name)

    async def _refresh(self, client: RedisClient) -> None:
        period = self.settings.presence_ttl / 3
        while True:
            await trio.sleep(period)
            if await client.command("EXISTS", ALIVE) == 0:
                log.warning("cluster: Redis lost its data; writing this instance's back")
                await self._sync(client)
                continue
            await self._refresh_once(client)

    async def _refresh_once(self, client: RedisClient) -> None:
        ttl_ms = int(self.settings.presence_ttl * 1000)
        commands: list[tuple[Arg, ...]] = []
        for node in self.core.online:
            up = self.core.announcement(node)
            if up is not None:
                value = encode_cluster(up)
                commands.append(("EVAL", REFRESH_SCRIPT, 1, node_key(node), value, ttl_ms))
        await client.pipeline(commands)
        # Remote nodes whose key expired (their instance is gone) or moved.
        remote = sorted(self.core.remote_nodes)
        if remote:
            values = await client.command("MGET", *[node_key(n) for n in remote])
            assert isinstance(values, list)
            now = trio.current_time()
            for name, value in zip(remote, values, strict=False):
                held = self.core.remote_nodes.get(name)
                if held is None:
                    continue
                if value is None:
                    self.core.remote_down(NodeDown(held.instance, name), now)
                elif isinstance(value, bytes):
                    self._take(value)
            self.kick()

    async def _sync(self, client: RedisClient) -> None:
        """Write what this instance knows and read what the others do (after a connect or
        Redis' data loss)."""
        ttl_ms = int(self.settings.presence_ttl * 1000)
        commands: list[tuple[Arg, ...]] = [("SET", ALIVE, b"1")]
        for name, key in list(self.store.by_name.items()):
            commands.append(("EVAL", BIND_SCRIPT, 2, BINDINGS, BINDING_KEYS, name, key))
        self.store.take_new()
        for node in self.core.online:
            up = self.core.announcement(node)
            if up is not None:
                commands.append(("SET", node_key(node), encode_cluster(up), "PX", ttl_ms))
                commands.append(("PUBLISH", EVENTS, encode_cluster(up)))
        await client.pipeline(commands)
        bindings = await client.command("HGETALL", BINDINGS)
        if isinstance(bindings, list):
            for name, key in zip(bindings[::2], bindings[1::2], strict=False):
                if isinstance(name, bytes) and isinstance(key, bytes):
                    text = name.decode(errors="replace")
                    self.store.learn(text, key)
                    self.core.binding_lost(text, key, trio.current_time())
        await self._sync_invites(client)
        await self._sync_revocations(client)
        await self._sync_presence(client)
        self.counters.syncs += 1
        self.synced.set()
        self.synced = trio.Event()
        self.kick()

    async def _sync_invites(self, client: RedisClient) -> None:
        networks = self.networks
        if networks is None:
            return
        await client.pipeline(
            [
                ("HSETNX", INVITES, serial, key + name.encode())
                for serial, key, name in networks.invites_used()
            ]
        )
        records = await client.command("HGETALL", INVITES)
        if isinstance(records, list):
            for serial, record in zip(records[::2], records[1::2], strict=False):
                if isinstance(serial, bytes) and isinstance(record, bytes):
                    self._learn_invite(serial, record)

    async def _sync_revocations(self, client: RedisClient) -> None:
        networks = self.networks
        if networks is None:
            return
        now = trio.current_time()
        for network_id, number, blob in networks.held_revocations():
            crl_key = CRL_PREFIX + network_id.encode()
            if blob is not None:
                held = await client.command("EVAL", CRL_SCRIPT, 1, crl_key, number, blob)
            else:
                held = await client.command("HGET", crl_key, "list")
            if (
                isinstance(held, bytes)
                and held != blob
                and networks.publish_revocations(network_id, held, self.host.wall_clock())
            ):
                self.core.revocations_changed(network_id, now)

    async def _sync_presence(self, client: RedisClient) -> None:
        cursor: Arg = 0
        seen: set[str] = set()
        while True:
            reply = await client.command("SCAN", cursor, "MATCH", NODE_PREFIX + b"*", "COUNT", 1000)
            assert isinstance(reply, list) and len(reply) == 2
            cursor = reply[0]
            keys = [k for k in reply[1] if isinstance(k, bytes)]
            if keys:
                values = await client.command("MGET", *keys)
                assert isinstance(values, list)
                for value in values:
                    if isinstance(value, bytes):
                        name = self._take(value)
                        if name is not None:
                            seen.add(name)
            if cursor in (b"0", 0):
                break
        now = trio.current_time()
        for name, held in list(self.core.remote_nodes.items()):
            if name not in seen:
                self.core.remote_down(NodeDown(held.instance, name), now)

    # -- in ----------------------------------------------------------------------------------

    async def _receive(self, sub: RedisSubscriber, _client: RedisClient) -> None:
        while True:
            _channel, payload = await sub.next_message()
            self.counters.received += 1
            if payload.startswith(INVITE_EVENT):
                self._learn_invite(payload[4:20], payload[20:])
                self.kick()
                continue
            if payload.startswith(BINDING_EVENT):
                key, name = payload[4:36], payload[36:]
                if len(key) == 32 and 0 < len(name) <= 63:
                    text = name.decode(errors="replace")
                    self.store.learn(text, key)
                    self.core.binding_lost(text, key, trio.current_time())
                    self.kick()
                else:
                    self.counters.malformed += 1
                continue
            self._take(payload)
            self.kick()

    def _take(self, payload: bytes) -> str | None:
        """Hand one cluster message to the core; the name of a NodeUp's node."""
        try:
            msg = decode_cluster(payload)
        except SignalDecodeError:
            self.counters.malformed += 1
            return None
        now = trio.current_time()
        if msg.instance == self.instance and not isinstance(msg, Forward):
            return None
        if isinstance(msg, NodeUp):
            self.core.remote_up(msg, now)
            return msg.name
        if isinstance(msg, NodeDown):
            self.core.remote_down(msg, now)
        elif isinstance(msg, Forward):
            self.core.remote_deliver(msg, now)
        elif self.networks is not None and self.networks.publish_revocations(
            msg.network, msg.blob, self.host.wall_clock()
        ):
            self.core.revocations_changed(msg.network, now)
        return None


__all__ = ["ClusterLink", "default_instance_id"]
