"""A small HTTP/1.1 responder on the daemon's own trio loop: the metrics endpoint and the
rendezvous' map page.

It serves GET (and HEAD) only, one request per connection (``Connection: close``), parsed by
h11 (sans-I/O HTTP/1.1, RFC 9112). There is no thread per request: every connection is a task
of the caller's nursery. What one client can hold is bounded (:class:`HttpLimits`):

- at most ``max_connections`` at once, ``max_per_source`` of them from one source (an IPv4
  address, an IPv6 /64); a connection beyond that is closed at once, unread;
- a request head of at most ``max_request_bytes`` (431 beyond: h11 stops buffering there);
- ``request_timeout`` seconds from accept to the last byte of the answer (a slow client is
  cut off and counted).

A request with a body is refused (413): nothing here takes input beyond the request line,
the headers and the query string.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, fields
from urllib.parse import parse_qs, urlsplit

import h11
import trio

from p2ptun.addr import Address, source_key
from p2ptun.log import get_logger
from p2ptun.net.ports import Connection, Listener

log = get_logger("net.http")


@dataclass(frozen=True)
class HttpLimits:
    max_connections: int = 16
    max_per_source: int = 4
    max_request_bytes: int = 8192
    request_timeout: float = 5.0


@dataclass(frozen=True)
class HttpRequest:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    """Header names lower-case; a repeated header keeps its last value."""
    remote: Address


@dataclass
class HttpResponse:
    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: list[tuple[str, str]] = field(default_factory=list)


Handler = Callable[[HttpRequest], Awaitable[HttpResponse]]


@dataclass
class HttpCounters:
    connections: int = 0
    requests: int = 0
    refused_busy: int = 0
    """Connections closed unread: ``max_connections`` were open, or ``max_per_source`` from
    the same source."""
    too_large: int = 0
    """Request heads over ``max_request_bytes`` (431) or with a body (413)."""
    malformed: int = 0
    """Requests h11 could not parse (400)."""
    timeouts: int = 0
    """Connections cut off at ``request_timeout``."""
    handler_errors: int = 0
    """Handlers that raised (500)."""

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def plain(status: int, text: str, headers: list[tuple[str, str]] | None = None) -> HttpResponse:
    return HttpResponse(status, (text + "\n").encode(), headers=headers or [])


class HttpServer:
    """Serve ``handler`` on ``listener`` until cancelled (module docstring)."""

    def __init__(
        self, listener: Listener, handler: Handler, limits: HttpLimits | None = None
    ) -> None:
        self.listener = listener
        self.handler = handler
        self.limits = limits if limits is not None else HttpLimits()
        self.counters = HttpCounters()
        self.open_connections = 0
        self._per_source: dict[str, int] = {}

    @property
    def address(self) -> Address:
        return self.listener.local_address

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                task_status.started()
                while True:
                    conn = await self.listener.accept()
                    self.counters.connections += 1
                    source = source_key(conn.remote[0])
                    held = self._per_source.get(source, 0)
                    if (
                        self.open_connections >= self.limits.max_connections
                        or held >= self.limits.max_per_source
                    ):
                        self.counters.refused_busy += 1
                        with contextlib.suppress(OSError, trio.BrokenResourceError):
                            await trio.aclose_forcefully(conn.stream)
                        continue
                    self.open_connections += 1
                    self._per_source[source] = held + 1
                    nursery.start_soon(self._connection, conn, source)
        finally:
            with trio.CancelScope(shield=True):
                await self.listener.aclose()

    async def _connection(self, conn: Connection, source: str) -> None:
        try:
            with trio.move_on_after(self.limits.request_timeout) as scope:
                await self._exchange(conn)
            if scope.cancelled_caught:
                self.counters.timeouts += 1
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            self.open_connections -= 1
            left = self._per_source.pop(source) - 1
            if left:
                self._per_source[source] = left
            await trio.aclose_forcefully(conn.stream)

    async def _exchange(self, conn: Connection) -> None:
        h = h11.Connection(h11.SERVER, max_incomplete_event_size=self.limits.max_request_bytes)
        response: HttpResponse
        head_only = False
        try:
            event = await _next_request(h, conn.stream, self.limits.max_request_bytes)
            if event is None:
                return
            self.counters.requests += 1
            request = _request(event, conn.remote)
        except h11.RemoteProtocolError as exc:
            if exc.error_status_hint == 431:
                self.counters.too_large += 1
            else:
                self.counters.malformed += 1
            response = plain(exc.error_status_hint, "bad request")
        except ValueError:  # a query string with too many fields
            self.counters.malformed += 1
            response = plain(400, "bad request")
        else:
            head_only = request.method == "HEAD"
            if _has_body(event):
                self.counters.too_large += 1
                response = plain(413, "requests here carry no body")
            elif request.method not in ("GET", "HEAD"):
                response = plain(405, "only GET", [("Allow", "GET, HEAD")])
            else:
                try:
                    response = await self.handler(request)
                except Exception as exc:  # one bad request must not take the daemon down
                    self.counters.handler_errors += 1
                    log.error("http handler failed", path=request.path, error=repr(exc))
                    response = plain(500, "internal error, see the daemon's log")
        await conn.stream.send_all(_serialize(response, head_only))


def _serialize(response: HttpResponse, head_only: bool) -> bytes:
    """The response, framed by Content-Length, the connection closed after it."""
    reason = _REASONS.get(response.status, "")
    lines = [f"HTTP/1.1 {response.status} {reason}"]
    headers = [
        ("Content-Type", response.content_type),
        ("Content-Length", str(len(response.body))),
        ("Connection", "close"),
        ("Cache-Control", "no-store"),
        *response.headers,
    ]
    lines += [f"{name}: {value}" for name, value in headers]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if head_only else head + response.body


_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Content Too Large",
    414: "URI Too Long",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
}


async def _next_request(
    h: h11.Connection, stream: trio.abc.Stream, limit: int
) -> h11.Request | None:
    """Read until h11 has a whole request head of at most ``limit`` bytes (431 beyond, also
    when it came in one read); None if the client closed first."""
    received = 0
    while True:
        event = h.next_event()
        if isinstance(event, h11.Request):
            # h11 bounds only a head still incomplete; one that came whole in a read is
            # measured here (what followed it is still in h11's buffer).
            if received - len(h.trailing_data[0]) > limit:
                raise h11.RemoteProtocolError("request head too large", 431)
            return event
        if event is h11.NEED_DATA:
            data = await stream.receive_some(4096)
            received += len(data)
            h.receive_data(bytes(data))  # b"" is the end of the stream
            if not data:
                event = h.next_event()  # raises if a request was cut off
                return event if isinstance(event, h11.Request) else None
            continue
        return None


def _has_body(event: h11.Request) -> bool:
    for name, value in event.headers:
        if name == b"transfer-encoding":
            return True
        if name == b"content-length" and value.strip() != b"0":
            return True
    return False


def _request(event: h11.Request, remote: Address) -> HttpRequest:
    target = event.target.decode("ascii", "replace")
    split = urlsplit(target)
    query = {k: v[-1] for k, v in parse_qs(split.query, max_num_fields=32).items()}
    headers = {
        name.decode("ascii", "replace").lower(): value.decode("latin-1")
        for name, value in event.headers
    }
    return HttpRequest(event.method.decode("ascii", "replace"), split.path, query, headers, remote)


__all__ = [
    "Handler",
    "HttpCounters",
    "HttpLimits",
    "HttpRequest",
    "HttpResponse",
    "HttpServer",
    "plain",
]
