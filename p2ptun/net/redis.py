"""A small Redis client for trio: the rendezvous cluster's link to its shared Redis.

Requests are encoded by ``hiredis.pack_command`` and replies parsed by ``hiredis.Reader`` (the
C parser of the Redis project's own client library), over a stream from the
:class:`~p2ptun.net.ports.Host` (TCP, optionally TLS). redis-py's async client is asyncio-only,
and a parser written here would be one more decoder to get right; the hiredis Reader is
incremental (bytes in, whole replies out), so it sits under a trio stream with no blocking
call on the event loop.

Bounded: a reply larger than ``max_reply`` bytes (counted from the bytes received since the last
whole reply) ends the connection with :class:`RedisError`, so that a broken or hostile server
cannot make this process buffer without end.

:class:`RedisClient` is one request/response connection (pipelined batches through
:meth:`RedisClient.pipeline`); :class:`RedisSubscriber` is one connection in pub/sub mode
(RESP2: ``message`` arrays).
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence

import hiredis
import trio

from p2ptun.config.schema import RedisUrl
from p2ptun.net.ports import Host

Arg = str | bytes | int | float
Reply = object

#: Largest reply accepted (bytes): the biggest the cluster reads is the bindings hash.
MAX_REPLY = 16 * 1024 * 1024


class RedisError(Exception):
    """The connection failed, the server answered an error, or a reply broke a bound."""


class RedisWire:
    """One stream with a hiredis Reader: commands out, bounded replies in."""

    def __init__(self, stream: trio.abc.Stream, max_reply: int) -> None:
        self.stream = stream
        self.reader = hiredis.Reader(notEnoughData=_NOT_YET)
        self.max_reply = max_reply
        self._pending = 0

    async def send(self, commands: Sequence[Sequence[Arg]]) -> None:
        data = b"".join(hiredis.pack_command(tuple(c)) for c in commands)  # type: ignore[arg-type]
        try:
            await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise RedisError(f"connection lost: {exc}") from None

    async def receive(self) -> Reply:
        while True:
            try:
                reply = self.reader.gets()
            except hiredis.ProtocolError as exc:
                raise RedisError(f"protocol error: {exc}") from None
            if reply is not _NOT_YET:
                self._pending = 0
                return reply
            try:
                data = await self.stream.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                raise RedisError(f"connection lost: {exc}") from None
            if not data:
                raise RedisError("connection closed by the server")
            self._pending += len(data)
            if self._pending > self.max_reply:
                raise RedisError(f"a reply larger than {self.max_reply} bytes")
            self.reader.feed(bytes(data))


_NOT_YET = object()


async def _open_wire(
    host: Host, url: RedisUrl, timeout: float, max_reply: int, name: str, ca_file: str | None
) -> RedisWire:
    """Connect (TLS for rediss://), authenticate, select the database, name the client;
    RedisError with the reason when any of it fails or takes longer than ``timeout``."""
    with trio.move_on_after(timeout):
        try:
            conn = await host.connect_tcp(url.host, url.port, keepalive=(30, 10, 3))
        except OSError as exc:
            raise RedisError(exc.strerror or str(exc)) from None
        stream: trio.abc.Stream = conn.stream
        try:
            if url.tls:
                context = ssl.create_default_context(cafile=ca_file)
                tls = trio.SSLStream(stream, context, server_hostname=url.host)
                stream = tls
                try:
                    await tls.do_handshake()
                except (trio.BrokenResourceError, ssl.SSLError) as exc:
                    cause = exc.__cause__ if isinstance(exc, trio.BrokenResourceError) else exc
                    raise RedisError(f"TLS: {cause or exc}") from None
            wire = RedisWire(stream, max_reply)
            hello: list[list[Arg]] = []
            if url.password is not None:
                user: list[Arg] = [url.username] if url.username else []
                hello.append(["AUTH", *user, url.password])
            if url.db:
                hello.append(["SELECT", url.db])
            hello.append(["CLIENT", "SETNAME", name])
            await wire.send(hello)
            for _ in hello:
                reply = await wire.receive()
                if isinstance(reply, hiredis.ReplyError):
                    raise RedisError(str(reply))
            return wire
        except BaseException:
            await trio.aclose_forcefully(conn.stream)
            raise
    raise RedisError(f"no answer within {timeout:g} s")


class RedisClient:
    """A request/response connection. Commands are serialised (one batch in flight)."""

    def __init__(self, wire: RedisWire) -> None:
        self._wire = wire
        self._lock = trio.Lock()
        self.closed = False

    @classmethod
    async def connect(
        cls,
        host: Host,
        url: RedisUrl,
        *,
        timeout: float = 5.0,
        max_reply: int = MAX_REPLY,
        name: str = "p2ptun",
        ca_file: str | None = None,
    ) -> RedisClient:
        """Connect, authenticate and select the database of ``url``; ``ca_file``: the CA
        certificates for a TLS server (default: the system's)."""
        return cls(await _open_wire(host, url, timeout, max_reply, name, ca_file))

    async def command(self, *args: Arg) -> Reply:
        """One command's reply; RedisError for an error reply or a lost connection."""
        (reply,) = await self.pipeline([args])
        if isinstance(reply, hiredis.ReplyError):
            raise RedisError(str(reply))
        return reply

    async def pipeline(self, commands: Sequence[Sequence[Arg]]) -> list[Reply]:
        """Send ``commands`` at once and read their replies (error replies are returned as
        ``hiredis.ReplyError`` values, not raised)."""
        if not commands:
            return []
        async with self._lock:
            if self.closed:
                raise RedisError("connection closed")
            try:
                await self._wire.send(commands)
                return [await self._wire.receive() for _ in commands]
            except BaseException:
                # A reply half read leaves the stream out of step: this connection is done.
                await self.aclose()
                raise

    async def aclose(self) -> None:
        self.closed = True
        with trio.CancelScope(shield=True):
            await self._wire.stream.aclose()


class RedisSubscriber:
    """A connection in pub/sub mode: :meth:`subscribe` once, then :meth:`next_message`."""

    def __init__(self, wire: RedisWire) -> None:
        self._wire = wire

    @classmethod
    async def connect(
        cls,
        host: Host,
        url: RedisUrl,
        *,
        timeout: float = 5.0,
        max_reply: int = 1024 * 1024,
        name: str = "p2ptun-sub",
        ca_file: str | None = None,
    ) -> RedisSubscriber:
        return cls(await _open_wire(host, url, timeout, max_reply, name, ca_file))

    async def subscribe(self, *channels: bytes) -> None:
        await self._wire.send([("SUBSCRIBE", *channels)])
        for _ in channels:
            reply = await self._wire.receive()
            if not (isinstance(reply, list) and reply and reply[0] == b"subscribe"):
                raise RedisError(f"unexpected answer to SUBSCRIBE: {reply!r:.80}")

    async def next_message(self) -> tuple[bytes, bytes]:
        """The next ``(channel, payload)`` published to a subscribed channel."""
        while True:
            reply = await self._wire.receive()
            if (
                isinstance(reply, list)
                and len(reply) == 3
                and reply[0] == b"message"
                and isinstance(reply[1], bytes)
                and isinstance(reply[2], bytes)
            ):
                return reply[1], reply[2]

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            await self._wire.stream.aclose()
