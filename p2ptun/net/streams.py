"""Reaching a STUN or TURN server: its address from its name, and a TCP or TLS stream to it.

:func:`resolve` turns a configured host (a name or an IP literal) into one ``(ip, port)``;
the gatherer resolves its STUN and TURN servers with it every round, ``p2ptun stun`` its
server. :func:`open_stream` connects a TURN allocation over TCP (``turn:...?transport=tcp``)
or TLS (``turns:``, RFC 8656 §3.1 / RFC 7065) for :class:`p2ptun.net.turn_relay.TurnRelay`.
Both go through the :class:`~p2ptun.net.ports.Host` they are given.

TLS: ``ssl.create_default_context`` — the server certificate is verified against the system
CAs, or against ``ca_file`` when given — and the server name (SNI and hostname check) is the
configured host.
"""

from __future__ import annotations

import ssl
from typing import Literal

import trio

from p2ptun.addr import Address, format_address
from p2ptun.errors import RuntimeFailure
from p2ptun.net.ports import Connection, Host

StreamTransport = Literal["tcp", "tls"]


async def resolve(host: Host, name: str, port: int) -> Address:
    """The first address ``name`` resolves to (IPv4 preferred), as an ``(ip, port)`` tuple.

    Raises :class:`RuntimeFailure` if the name does not resolve.
    """
    found = await host.resolve(name, port)
    if not found:
        raise RuntimeFailure(f"{name!r} has no IPv4 or IPv6 address")
    return found[0]


async def open_stream(
    host: Host,
    name: str,
    port: int,
    transport: StreamTransport,
    ca_file: str | None = None,
    local_ip: str | None = None,
) -> Connection:
    """Resolve ``name`` and connect to the TURN server there.

    TCP: a connected stream, from ``local_ip`` if given. TLS: that stream wrapped in TLS
    verified against the system CAs or ``ca_file``, with ``name`` as the server name, the
    handshake done. Raises :class:`RuntimeFailure` with one line; nothing is left open then.
    """
    server = await resolve(host, name, port)
    shown = format_address(server)
    try:
        conn = await host.connect_tcp(server[0], server[1], local_ip=local_ip)
    except OSError as exc:
        reason = exc.strerror or str(exc).rsplit(": ", 1)[-1]
        raise RuntimeFailure(f"cannot connect to TURN server {shown}: {reason}") from None
    if transport == "tcp":
        return conn
    try:
        context = ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        await conn.stream.aclose()
        raise RuntimeFailure(f"cannot load CA file {ca_file!r}: {exc}") from None
    tls = trio.SSLStream(conn.stream, context, server_hostname=name)
    try:
        await tls.do_handshake()
    except (ssl.SSLError, trio.BrokenResourceError, OSError) as exc:
        cause = exc.__cause__ if isinstance(exc, trio.BrokenResourceError) else exc
        await conn.stream.aclose()
        raise RuntimeFailure(f"TLS handshake with TURN server {shown} failed: {cause}") from None
    return Connection(tls, conn.local, conn.remote)


__all__ = ["StreamTransport", "open_stream", "resolve"]
