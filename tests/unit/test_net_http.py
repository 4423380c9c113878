"""The daemons' small HTTP responder (p2ptun/net/http.py): what it answers, and each bound
on what one client can hold — connections, request size, time — on the in-memory network
under virtual time, plus a fuzzed request head that never raises."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2plab.memnet import MemoryHost, MemoryNetwork
from p2ptun.net.http import HttpLimits, HttpRequest, HttpResponse, HttpServer

SERVER_IP = "192.0.2.1"
PORT = 8080


async def hello(request: HttpRequest) -> HttpResponse:
    if request.path == "/boom":
        raise RuntimeError("handler bug")
    who = request.query.get("who", "world")
    return HttpResponse(200, f"hello {who} from {request.path}".encode())


class Bench:
    def __init__(self, net: MemoryNetwork, server: HttpServer, client: MemoryHost) -> None:
        self.net = net
        self.server = server
        self.client = client

    async def raw(self, data: bytes, *, close: bool = False) -> bytes:
        conn = await self.client.connect_tcp(SERVER_IP, PORT)
        await conn.stream.send_all(data)
        if close:
            await conn.stream.send_eof()  # type: ignore[attr-defined]
        out = b""
        while True:
            chunk = await conn.stream.receive_some(65536)
            if not chunk:
                break
            out += chunk
        await conn.stream.aclose()
        return out


@pytest.fixture
async def bench(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> AsyncIterator[Bench]:
    net = MemoryNetwork()
    server_host = net.public_host("server", SERVER_IP)
    client = net.public_host("client", "192.0.2.2")
    await nursery.start(net.run)
    listener = await server_host.listen_tcp(SERVER_IP, PORT)
    server = HttpServer(
        listener,
        hello,
        HttpLimits(max_connections=4, max_per_source=3, max_request_bytes=1024, request_timeout=2),
    )
    await nursery.start(server.serve)
    yield Bench(net, server, client)


def status_of(reply: bytes) -> int:
    return int(reply.split(b" ", 2)[1])


async def test_get_answers_with_a_framed_response_and_closes(bench: Bench) -> None:
    reply = await bench.raw(b"GET /x?who=me HTTP/1.1\r\nHost: a\r\n\r\n")
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Content-Length: %d" % len(body) in head
    assert b"Connection: close" in head
    assert body == b"hello me from /x"
    head_only = await bench.raw(b"HEAD /x HTTP/1.1\r\nHost: a\r\n\r\n")
    assert head_only.endswith(b"\r\n\r\n") and status_of(head_only) == 200
    assert bench.server.counters.requests == 2


async def test_other_methods_bodies_garbage_and_handler_bugs_get_an_error(bench: Bench) -> None:
    assert status_of(await bench.raw(b"DELETE / HTTP/1.1\r\nHost: a\r\n\r\n")) == 405
    body = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc"
    assert status_of(await bench.raw(body)) == 413
    assert status_of(await bench.raw(b"\x16\x03\x01 not http\r\n\r\n")) == 400
    assert status_of(await bench.raw(b"GET /boom HTTP/1.1\r\nHost: a\r\n\r\n")) == 500
    c = bench.server.counters
    assert (c.too_large, c.malformed, c.handler_errors) == (1, 1, 1)
    # ...and it still serves.
    assert status_of(await bench.raw(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")) == 200


async def test_a_request_head_over_the_limit_is_refused_unbuffered(bench: Bench) -> None:
    huge = b"GET / HTTP/1.1\r\nHost: a\r\nX-Pad: " + b"a" * 4000 + b"\r\n\r\n"
    assert status_of(await bench.raw(huge)) == 431
    assert bench.server.counters.too_large == 1


async def test_a_slow_client_is_cut_off_at_the_request_timeout(bench: Bench) -> None:
    conn = await bench.client.connect_tcp(SERVER_IP, PORT)
    start = trio.current_time()
    await conn.stream.send_all(b"GET / HTTP/1.1\r\n")  # and never the rest
    assert await conn.stream.receive_some(100) == b""  # the server closed it
    assert 2 <= trio.current_time() - start < 2.5
    assert bench.server.counters.timeouts == 1
    assert bench.server.open_connections == 0


async def test_connections_beyond_the_limits_are_closed_unread(bench: Bench) -> None:
    # One source holds at most 3 (max_per_source) ...
    idle = [await bench.client.connect_tcp(SERVER_IP, PORT) for _ in range(3)]
    await trio.sleep(0.1)
    assert bench.server.open_connections == 3
    extra = await bench.client.connect_tcp(SERVER_IP, PORT)
    await extra.stream.send_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert await extra.stream.receive_some(100) == b""
    assert bench.server.counters.refused_busy == 1
    # ... another source is still served, and fills the last place of 4 (max_connections) ...
    other = bench.net.public_host("other", "192.0.2.3")
    fourth = await other.connect_tcp(SERVER_IP, PORT)
    await trio.sleep(0.1)
    assert bench.server.open_connections == 4
    third_source = bench.net.public_host("third", "192.0.2.4")
    late = await third_source.connect_tcp(SERVER_IP, PORT)
    await late.stream.send_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert await late.stream.receive_some(100) == b""
    assert bench.server.counters.refused_busy == 2
    # The idle ones time out; then a client is served again.
    await trio.sleep(3)
    assert bench.server.open_connections == 0
    assert status_of(await bench.raw(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")) == 200
    for conn in (*idle, fourth):
        await conn.stream.aclose()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600))
def test_any_request_bytes_get_an_answer_or_a_close(data: bytes) -> None:
    async def run() -> None:
        net = MemoryNetwork()
        server_host = net.public_host("server", SERVER_IP)
        client = net.public_host("client", "192.0.2.2")
        async with trio.open_nursery() as nursery:
            await nursery.start(net.run)
            listener = await server_host.listen_tcp(SERVER_IP, PORT)
            server = HttpServer(listener, hello, HttpLimits(request_timeout=1))
            await nursery.start(server.serve)
            reply = await Bench(net, server, client).raw(data, close=True)
            assert reply == b"" or reply.startswith(b"HTTP/1.1 ")
            assert server.counters.handler_errors == 0
            nursery.cancel_scope.cancel()

    trio.run(run, clock=trio.testing.MockClock(autojump_threshold=0))
