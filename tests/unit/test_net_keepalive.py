"""Kernel TCP keepalive on signaling connections (no process wake-ups while healthy)."""

from __future__ import annotations

import socket

import trio

from p2ptun.net import keepalive


async def test_enable_sets_the_kernel_keepalive_options() -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        assert stream.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 0
        keepalive.enable(stream)
        assert stream.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert stream.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == keepalive.IDLE
        assert stream.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == keepalive.INTERVAL
        assert stream.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == keepalive.COUNT
    # A dead path is noticed well before the application's 35 s silence limit.
    assert keepalive.IDLE + keepalive.INTERVAL * keepalive.COUNT < 35
    for listener in listeners:
        await listener.aclose()
