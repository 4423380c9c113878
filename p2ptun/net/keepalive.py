"""TCP keepalive for the signaling connections, done by the kernel.

The application Ping (:class:`~p2ptun.signal.client.ClientTimers`) runs every 25 s, so that an
idle node rarely wakes. Kernel keepalive probes cost no process wake-ups while the connection
is healthy, yet notice a broken path sooner: a probe through a NAT that lost its binding comes
back as a reset (the far end has no such connection), a probe into a dead path times out after
``IDLE + INTERVAL × COUNT`` seconds, and either wakes the reader with an error. That matters
when a NAT flush breaks the ICE path and the rendezvous connection together: the restart offer
must not go to a connection that only the next Ping would find dead.
"""

from __future__ import annotations

import contextlib
import socket

import trio

#: Seconds of silence before the first probe, between probes, and probes unanswered.
IDLE = 5
INTERVAL = 5
COUNT = 3
#: ``(idle, interval, count)`` as :meth:`p2ptun.net.ports.Host.connect_tcp` takes them.
SIGNALING = (IDLE, INTERVAL, COUNT)


def enable(stream: trio.SocketStream, settings: tuple[int, int, int] = SIGNALING) -> None:
    """Turn on keepalive with ``settings`` (where the platform has the options)."""
    idle, interval, count = settings
    with contextlib.suppress(OSError, AttributeError):
        stream.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
        stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, interval)
        stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, count)
