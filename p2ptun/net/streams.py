"""Reaching a STUN or TURN server: its address from its name, and a TCP or TLS stream to it.

:func:`resolve` turns a configured host (a name or an IP literal) into one ``(ip, port)``;
the gatherer resolves its STUN and TURN servers with it every round, ``p2ptun stun`` its
server. :func:`open_stream` connects a TURN allocation over TCP (``turn:...?transport=tcp``)
or TLS (``turns:``, RFC 8656 §3.1 / RFC 7065) for :class:`p2ptun.net.turn_shared.TurnRelay`.

TLS: ``ssl.create_default_context`` — the server certificate is verified against the system
CAs, or against ``ca_file`` when given — and the server name (SNI and hostname check) is the
configured host.
"""

from __future__ import annotations

import socket
import ssl
from typing import Literal

import trio

from p2ptun.addr import Address, format_address
from p2ptun.errors import RuntimeFailure

StreamTransport = Literal["tcp", "tls"]


async def resolve(host: str, port: int, kind: socket.SocketKind) -> Address:
    """The first address ``host`` resolves to (IPv4 preferred), as an ``(ip, port)`` tuple.

    Raises :class:`RuntimeFailure` if the name does not resolve.
    """
    try:
        infos = await trio.socket.getaddrinfo(host, port, type=kind)
    except socket.gaierror as exc:
        raise RuntimeFailure(f"cannot resolve {host!r}: {exc.strerror}") from None
    infos.sort(key=lambda info: 0 if info[0] == socket.AF_INET else 1)
    for family, _type, _proto, _name, sockaddr in infos:
        if family in (socket.AF_INET, socket.AF_INET6):
            return str(sockaddr[0]), int(sockaddr[1])
    raise RuntimeFailure(f"{host!r} has no IPv4 or IPv6 address")


async def open_stream(
    host: str,
    port: int,
    transport: StreamTransport,
    ca_file: str | None = None,
    local_host: str | None = None,
) -> tuple[Address, trio.abc.Stream]:
    """Resolve ``host`` and connect to the TURN server there: ``(server address, stream)``.

    TCP: a connected stream (trio sets TCP_NODELAY), from ``local_host`` if given. TLS: that
    stream wrapped in TLS verified against the system CAs or ``ca_file``, with ``host`` as the
    server name, the handshake done. Raises :class:`RuntimeFailure` with one line; nothing is
    left open then.
    """
    server = await resolve(host, port, socket.SOCK_STREAM)
    shown = format_address(server)
    try:
        tcp = await trio.open_tcp_stream(server[0], server[1], local_address=local_host)
    except OSError as exc:
        reason = exc.strerror or str(exc).rsplit(": ", 1)[-1]
        raise RuntimeFailure(f"cannot connect to TURN server {shown}: {reason}") from None
    if transport == "tcp":
        return server, tcp
    try:
        context = ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        await tcp.aclose()
        raise RuntimeFailure(f"cannot load CA file {ca_file!r}: {exc}") from None
    tls = trio.SSLStream(tcp, context, server_hostname=host)
    try:
        await tls.do_handshake()
    except (ssl.SSLError, trio.BrokenResourceError, OSError) as exc:
        cause = exc.__cause__ if isinstance(exc, trio.BrokenResourceError) else exc
        await tcp.aclose()
        raise RuntimeFailure(f"TLS handshake with TURN server {shown} failed: {cause}") from None
    return server, tls


__all__ = ["StreamTransport", "open_stream", "resolve"]
