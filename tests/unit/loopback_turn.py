"""Our embedded STUN/TURN service on loopback, for the tests of the net/ shells (TURN relays,
gathering, the ICE transport). Not a test module: ``from loopback_turn import ...``."""

from __future__ import annotations

import ipaddress
import socket

import trio

from p2ptun.config import StunServerSettings, TurnServerSettings
from p2ptun.net.system import SystemHost
from p2ptun.rendezvous.stun_turn import StunTurnService

HOST = "127.0.0.1"
USERS = {"alice": "pw", "bob": "pw"}


def free_port() -> int:
    """A port free for both UDP and TCP on :data:`HOST` (a moment ago)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind((HOST, 0))
            port = int(u.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                try:
                    t.bind((HOST, port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free port")


async def serve_turn(
    nursery: trio.Nursery,
    port: int | None = None,
    *,
    relay_ports: tuple[int, int] = (44000, 44999),
    allow_loopback: bool = True,
    tls: tuple[int, str, str] | None = None,
) -> tuple[int, trio.CancelScope]:
    """STUN and TURN (users :data:`USERS`, realm ``lab``) on UDP and TCP ``HOST:port`` (a
    free port by default), and TLS on ``tls = (port, cert file, key file)``. Loopback peers
    are refused (403) unless ``allow_loopback``. Returns the port and the scope to cancel to
    stop it (its connections close)."""
    port = free_port() if port is None else port
    settings = TurnServerSettings(
        realm="lab",
        relay_address=HOST,
        relay_ports=relay_ports,
        users=dict(USERS),
        allow_peers=(ipaddress.ip_network("127.0.0.0/8"),) if allow_loopback else (),
        tls_listen=() if tls is None else ((HOST, tls[0]),),
        tls_cert=None if tls is None else tls[1],
        tls_key=None if tls is None else tls[2],
    )
    svc = await StunTurnService.bind(SystemHost(), StunServerSettings(((HOST, port),)), settings)
    scope = trio.CancelScope()

    async def run() -> None:
        with scope:
            await svc.serve()

    nursery.start_soon(run)
    return port, scope
