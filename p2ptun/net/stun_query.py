"""Ask a STUN server for this host's mapped address: the trio shell behind ``p2ptun stun``.

One Binding transaction (RFC 8489 §6.2) run by the sans-I/O
:class:`p2ptun.stun.ClientTransaction`: over UDP with its retransmission schedule (RTO 500 ms,
doubling, Rc = 7, §6.2.1), over TCP sent once on a fresh connection (§6.2.2) and the response
cut from the byte stream by its length field. The whole query is bounded by ``timeout``.
"""

from __future__ import annotations

import math
import os
import socket

import trio

from p2ptun.addr import Address, format_address
from p2ptun.errors import DecodeError, RuntimeFailure
from p2ptun.net.streams import resolve
from p2ptun.net.system import SystemHost
from p2ptun.net.udp import family_of
from p2ptun.stun import (
    ClientTransaction,
    Message,
    Method,
    StunDecodeError,
    TransactionOutcome,
    is_stun,
    message_length,
    random_transaction_id,
)

DEFAULT_STUN_PORT = 3478
"""RFC 8489 §18.1: the default port for STUN over UDP and TCP."""

_MAX_RESPONSE = 0xFFFF + 20


def _binding_request() -> Message:
    return Message.request(Method.BINDING, random_transaction_id(os.urandom))


def _mapped(outcome: TransactionOutcome[None], server: Address) -> Address:
    shown = format_address(server)
    if outcome.error is not None:
        code, reason = outcome.error
        raise RuntimeFailure(f"STUN server {shown} answered with error {code} {reason}".rstrip())
    response = outcome.response
    mapped = None if response is None else response.xor_mapped_address or response.mapped_address
    if mapped is None:
        raise RuntimeFailure(f"STUN server {shown} sent a response without a mapped address")
    return mapped


async def _query_udp(server: Address, timeout: float) -> Address:
    family = family_of(server[0])
    sock = trio.socket.socket(family, socket.SOCK_DGRAM)
    with sock:
        await sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", 0))
        tx: ClientTransaction[None] = ClientTransaction(_binding_request(), trio.current_time())
        while True:
            now = trio.current_time()
            step = tx.handle_timeout(now)
            if isinstance(step, bytes):
                try:
                    await sock.sendto(step, server)
                except OSError as exc:
                    raise RuntimeFailure(
                        f"cannot send to {format_address(server)}: {exc.strerror}"
                    ) from None
            elif step is not None:
                raise RuntimeFailure(f"no response from STUN server {format_address(server)}")
            wakeup = tx.next_wakeup()
            deadline = math.inf if wakeup is None else wakeup
            with trio.move_on_at(deadline):
                while True:
                    try:
                        data, source = await sock.recvfrom(_MAX_RESPONSE)
                    except OSError:
                        continue  # an ICMP error for an earlier datagram: keep waiting
                    if (source[0], source[1]) != server or not is_stun(data):
                        continue
                    try:
                        msg = Message.decode(data)
                    except StunDecodeError:
                        continue
                    outcome = tx.handle_response(msg, trio.current_time())
                    if outcome is not None:
                        return _mapped(outcome, server)


async def _query_tcp(server: Address) -> Address:
    shown = format_address(server)
    try:
        stream = await trio.open_tcp_stream(server[0], server[1])
    except OSError as exc:
        reason = exc.strerror or str(exc).rsplit(": ", 1)[-1]
        raise RuntimeFailure(f"cannot connect to STUN server {shown}: {reason}") from None
    async with stream:
        tx: ClientTransaction[None] = ClientTransaction(
            _binding_request(), trio.current_time(), reliable=True
        )
        first = tx.handle_timeout(trio.current_time())
        assert isinstance(first, bytes)
        try:
            await stream.send_all(first)
        except (OSError, trio.BrokenResourceError) as exc:
            raise RuntimeFailure(f"STUN server {shown} closed the connection: {exc}") from None
        buf = bytearray()
        while True:
            try:
                chunk = await stream.receive_some(65536)
            except (OSError, trio.BrokenResourceError) as exc:
                raise RuntimeFailure(f"STUN server {shown} broke the connection: {exc}") from None
            if not chunk:
                raise RuntimeFailure(f"STUN server {shown} closed the connection without answering")
            buf += chunk
            while (size := message_length(buf)) is not None and len(buf) >= size:
                frame = bytes(buf[:size])
                del buf[:size]
                try:
                    msg = Message.decode(frame)
                except DecodeError:
                    raise RuntimeFailure(f"STUN server {shown} sent a malformed message") from None
                outcome = tx.handle_response(msg, trio.current_time())
                if outcome is not None:
                    return _mapped(outcome, server)
            if len(buf) > _MAX_RESPONSE:
                raise RuntimeFailure(f"STUN server {shown} sent an oversized message")


async def query_mapped_address(
    host: str, port: int = DEFAULT_STUN_PORT, *, tcp: bool = False, timeout: float = 5.0
) -> Address:
    """Send a STUN Binding request to ``host:port`` and return the XOR-MAPPED-ADDRESS (or
    MAPPED-ADDRESS) of the success response (RFC 8489 §7, §14.1-§14.2).

    Raises :class:`RuntimeFailure` with a one-line message on timeout, an error response,
    a connection failure or a name that does not resolve.
    """
    with trio.move_on_after(timeout) as scope:
        server = await resolve(SystemHost(), host, port)
        if tcp:
            return await _query_tcp(server)
        return await _query_udp(server, timeout)
    assert scope.cancelled_caught
    proto = "TCP" if tcp else "UDP"
    raise RuntimeFailure(
        f"no response from STUN server {host}:{port} over {proto} within {timeout:g} s"
    )
