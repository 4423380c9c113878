"""``p2ptun join TOKEN``: a new machine enters a network with one command.

From the invite token (:mod:`p2ptun.membership.invite`) it makes, in order:

1. a fresh WireGuard private key, and this node's certificate: the invite's grant bound to
   the new public key with the invite's one-time enrollment key
   (:meth:`~p2ptun.membership.Invite.enroll`);
2. the invite's redemption: it registers once with the rendezvous the token names, as the
   member the certificate makes it. The rendezvous admits the first key under an invite and no
   other, so a token that was already used (or has expired) is refused here, with the
   rendezvous' reason, before anything is written;
3. the files, next to ``--config`` (default ``/etc/p2ptun/p2p0.toml``): the key (``.key``, mode
   0600), the certificate (``.cert``) and a node config with ``[network]`` (the authority's
   public key, the certificate, the domain), the rendezvous, and STUN and TURN on the
   rendezvous host (3478, credentials the rendezvous issues). The interface is named after the
   config file (``p2p0.toml`` -> ``p2p0``), so that ``systemctl enable --now p2ptun@p2p0`` runs
   it.

A token that does not parse or has expired, or an existing config, is a usage error (one line,
exit 2, nothing written); an unreachable rendezvous is a runtime failure (exit 1).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import trio

from p2ptun.addr import format_address, parse_host_port
from p2ptun.config import DEFAULT_RENDEZVOUS_PORT, DEFAULT_STUN_PORT, load_node
from p2ptun.config.schema import IFNAME_RE, IFNAMSIZ
from p2ptun.errors import RuntimeFailure, UsageError
from p2ptun.keys import encode_key, generate_private_key, public_key
from p2ptun.membership import CertificateRejected, Invite, MembershipDecodeError, read_invite_text
from p2ptun.net.ports import Host
from p2ptun.net.signaling import SignalingClient
from p2ptun.signal.client import Disconnected, RegisteredEvent, RegistrationRefused

DEFAULT_CONFIG = "/etc/p2ptun/p2p0.toml"
REDEEM_TIMEOUT = 30.0


@dataclass(frozen=True)
class Joined:
    config: str
    interface: str
    invite: Invite


def parse_token(text: str, wall: float) -> Invite:
    try:
        invite = read_invite_text(text)
        invite.grant.check_redeemable(wall)
    except (MembershipDecodeError, CertificateRejected) as exc:
        raise UsageError(f"p2ptun join: {exc}") from None
    return invite


def interface_for(config_path: str, given: str | None) -> str:
    if given is not None:
        name = given
    else:
        stem = os.path.splitext(os.path.basename(config_path))[0]
        name = stem if IFNAME_RE.match(stem) and len(stem) < IFNAMSIZ else "p2p0"
    if not IFNAME_RE.match(name) or len(name) >= IFNAMSIZ:
        raise UsageError(f"--interface {name!r}: at most 15 letters, digits, '_', '-', '.'")
    return name


async def redeem(
    host: Host,
    invite: Invite,
    private_key: bytes,
    certificate: bytes,
    timeout: float = REDEEM_TIMEOUT,
) -> None:
    """Register once with the invite's rendezvous as the new member (module docstring)."""
    try:
        address = parse_host_port(invite.rendezvous, DEFAULT_RENDEZVOUS_PORT)
    except ValueError as exc:
        raise UsageError(f"p2ptun join: the invite's rendezvous: {exc}") from None
    client = SignalingClient(
        host,
        name=invite.name,
        private_key=private_key,
        rendezvous=address,
        rendezvous_key=invite.rendezvous_key,
        peers={},
        certificate=certificate,
    )
    last = "no answer"
    refused: str | None = None
    registered = False
    async with trio.open_nursery() as nursery:
        await nursery.start(client.run)
        with trio.move_on_after(timeout):
            async for event in client.events:
                if isinstance(event, RegisteredEvent):
                    registered = True
                    break
                if isinstance(event, RegistrationRefused):
                    refused = event.text
                    break
                if isinstance(event, Disconnected):
                    last = event.reason
        client.stop()
        nursery.cancel_scope.cancel()
    if refused is not None:
        raise UsageError(f"p2ptun join: the rendezvous refused the invite: {refused}")
    if not registered:
        raise RuntimeFailure(
            f"p2ptun join: cannot reach the rendezvous {format_address(address)} ({last}); "
            "nothing was written, try again"
        )


def _write(path: str, text: str, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)


def node_config_text(invite: Invite, interface: str, key_file: str, cert_file: str) -> str:
    """The node config ``p2ptun join`` writes (no ``[[peer]]``: the network's members are
    learned from the rendezvous)."""
    details = invite.grant.details
    host, port = parse_host_port(invite.rendezvous, DEFAULT_RENDEZVOUS_PORT)
    shown = format_address((host, port))
    stun_host = format_address((host, DEFAULT_STUN_PORT))
    addresses = ", ".join(f'"{a}"' for a in details.addresses)
    lines = [
        f"# p2ptun node {details.name!r} of network {details.network!r}, written by 'p2ptun join'.",
        f"# Run it with: systemctl enable --now p2ptun@{interface}",
        f'name = "{details.name}"',
        f'private_key_file = "{key_file}"',
        "",
        "[interface]",
        f'name = "{interface}"',
        f"address = [{addresses}]",
        "",
        "[rendezvous]",
        f'address = "{shown}"',
        f'public_key = "{encode_key(invite.rendezvous_key)}"',
        "",
        "[ice]",
        f'stun = ["{stun_host}"]',
        "# TURN on the rendezvous host, with credentials the rendezvous issues",
        f'turn = [{{ url = "turn:{stun_host}?transport=udp" }}, '
        f'{{ url = "turn:{stun_host}?transport=tcp" }}]',
        "",
        "[network]",
        f'ca = "{encode_key(details.authority)}"',
        f'cert_file = "{cert_file}"',
    ]
    if invite.domain:
        lines.append(f'domain = "{invite.domain}"')
    return "\n".join(lines) + "\n"


def join(token: str, config_path: str, interface: str | None, host: Host, wall: float) -> Joined:
    """``p2ptun join``: see the module docstring."""
    invite = parse_token(token, wall)
    ifname = interface_for(config_path, interface)
    base = os.path.splitext(config_path)[0]
    key_path, cert_path = f"{base}.key", f"{base}.cert"
    for path in (config_path, key_path, cert_path):
        if os.path.exists(path):
            raise UsageError(f"p2ptun join: {path} exists; remove it or choose --config FILE")
    directory = os.path.dirname(os.path.abspath(config_path))
    try:
        os.makedirs(directory, mode=0o755, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"p2ptun join: cannot create {directory}: {exc.strerror}") from None
    private = generate_private_key()
    certificate = invite.enroll(public_key(private))
    trio.run(redeem, host, invite, private, certificate.encode())
    try:
        _write(key_path, encode_key(private) + "\n", 0o600)
        _write(cert_path, certificate.to_text(), 0o644)
        text = node_config_text(
            invite, ifname, os.path.basename(key_path), os.path.basename(cert_path)
        )
        _write(config_path, text, 0o600)
    except OSError as exc:
        raise RuntimeFailure(f"p2ptun join: cannot write {exc.filename}: {exc.strerror}") from None
    load_node(config_path)  # what was written loads (and the certificate verifies)
    return Joined(config_path, ifname, invite)


def main(token: str, config_path: str, interface: str | None) -> int:
    import time

    from p2ptun.net.system import SystemHost

    joined = join(token, config_path, interface, SystemHost(), time.time())
    details = joined.invite.grant.details
    addresses = ", ".join(str(a) for a in details.addresses)
    domain = f" ({details.name}.{joined.invite.domain})" if joined.invite.domain else ""
    sys.stdout.write(
        f"joined network {details.network!r} as {details.name!r}{domain}, {addresses}\n"
        f"wrote {joined.config} and its key and certificate; start it with:\n"
        f"  systemctl enable --now p2ptun@{joined.interface}\n"
    )
    return 0
