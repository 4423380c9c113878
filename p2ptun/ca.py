"""The network authority's files: ``p2ptun ca init|sign|revoke|show`` and ``p2ptun invite``.

The authority is a directory (``--ca DIR``) on the administrator's machine:

- ``ca.key`` (mode 0600): the authority's Ed25519 private key, base64 of its 32-byte seed;
- ``ca.pub``: its public key, base64 — the value of ``[network] ca`` in node configs and of
  ``[[network]] ca`` in the rendezvous config;
- ``network.toml``: the network's ``name``, its DNS ``domain``, and the ``rendezvous``
  address and ``rendezvous_key`` that invites carry;
- ``issued.log``: one line per certificate or invite issued (serial, name, expiry, kind), so
  that ``revoke NAME`` can find every serial of a name;
- ``revoked.crl``: the signed revocation list, rewritten (with a higher number) by each
  ``revoke``.

The cryptography is :mod:`p2ptun.membership`; this module does the files, the clock and the
randomness. Every mistake is a :class:`~p2ptun.errors.UsageError`: one line, exit 2.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from p2ptun.addr import parse_host_port
from p2ptun.errors import UsageError
from p2ptun.keys import decode_key, encode_key
from p2ptun.membership import (
    Certificate,
    CertificateRejected,
    Details,
    Invite,
    MembershipDecodeError,
    RevocationList,
    check_domain,
    ed25519_public,
    read_certificate_text,
    read_invite_text,
    read_revocations_text,
    sign_certificate,
    sign_grant,
    sign_revocations,
)
from p2ptun.membership.codec import IPInterface, IPNetwork, check_name

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

RandomBytes = Callable[[int], bytes]
DEFAULT_VALID = 365 * 86400
DEFAULT_INVITE_EXPIRY = 86400
DEFAULT_RENDEZVOUS_PORT = 7070

_DURATION_RE = re.compile(r"(\d{1,9})([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str, option: str) -> int:
    """``90s``, ``30m``, ``24h``, ``365d``, ``2w`` -> seconds; UsageError otherwise."""
    match = _DURATION_RE.fullmatch(text.strip())
    if match is None or int(match.group(1)) == 0:
        raise UsageError(
            f"{option} {text!r}: expected a duration such as 90s, 30m, 24h, 365d or 2w"
        )
    return int(match.group(1)) * _UNITS[match.group(2)]


def parse_addresses(text: str, option: str = "--ip") -> tuple[IPInterface, ...]:
    """``10.77.0.2/24[,fd00::2/64]`` -> interfaces (a bare address gets /32 or /128)."""
    found: list[IPInterface] = []
    for part in text.split(","):
        part = part.strip()
        try:
            found.append(ipaddress.ip_interface(part))
        except ValueError:
            raise UsageError(
                f"{option} {part!r}: expected an overlay address with its prefix, "
                "such as 10.77.0.2/24"
            ) from None
    if len(set(found)) != len(found) or not 1 <= len(found) <= 8:
        raise UsageError(f"{option} {text!r}: give 1-8 different addresses")
    return tuple(found)


def parse_routes(text: str | None) -> tuple[IPNetwork, ...]:
    if not text:
        return ()
    found: list[IPNetwork] = []
    for part in text.split(","):
        try:
            found.append(ipaddress.ip_network(part.strip()))
        except ValueError:
            raise UsageError(
                f"--routes {part.strip()!r}: expected a network such as 192.168.1.0/24 "
                "(no host bits)"
            ) from None
    if len(set(found)) != len(found) or len(found) > 16:
        raise UsageError(f"--routes {text!r}: give at most 16 different networks")
    return tuple(found)


def parse_groups(text: str | None) -> tuple[str, ...]:
    if not text:
        return ()
    groups = {g.strip() for g in text.split(",") if g.strip()}
    for group in groups:
        try:
            check_name(group, "group name")
        except ValueError as exc:
            raise UsageError(f"--groups: {exc}") from None
    if len(groups) > 16:
        raise UsageError("--groups: at most 16 groups")
    return tuple(sorted(groups))


def parse_public_key(text: str) -> bytes:
    try:
        return decode_key(text)
    except ValueError as exc:
        raise UsageError(
            f"--pubkey: {exc} (the node's public key: 'p2ptun pubkey < NODE.key')"
        ) from None


def _read(path: str, what: str, limit: int = 1 << 16) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read(limit)
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file ({what})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: cannot read {what}: {exc}") from None


def _write(path: str, text: str, mode: int = 0o644) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _toml_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass
class Authority:
    """A loaded authority directory (module docstring)."""

    path: str
    seed: bytes
    network: str
    domain: str
    rendezvous: str | None
    rendezvous_key: bytes | None

    @property
    def public_key(self) -> bytes:
        return ed25519_public(self.seed)

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    # -- issuing ------------------------------------------------------------------------------

    def _details(
        self,
        name: str,
        addresses: tuple[IPInterface, ...],
        groups: tuple[str, ...],
        routes: tuple[IPNetwork, ...],
        valid: int,
        now: int,
        random_bytes: RandomBytes,
    ) -> Details:
        try:
            check_name(name, "node name")
        except ValueError as exc:
            raise UsageError(f"--name: {exc}") from None
        return Details(
            network=self.network,
            name=name,
            serial=random_bytes(16),
            addresses=addresses,
            routes=routes,
            groups=groups,
            not_before=now,
            not_after=now + valid,
            authority=self.public_key,
        )

    def _record(self, details: Details, kind: str) -> None:
        line = f"{details.serial.hex()} {details.name} {details.not_after} {kind}\n"
        with open(self.file("issued.log"), "a", encoding="utf-8") as f:
            f.write(line)

    def sign(
        self,
        name: str,
        addresses: tuple[IPInterface, ...],
        public_key: bytes,
        *,
        groups: tuple[str, ...] = (),
        routes: tuple[IPNetwork, ...] = (),
        valid: int = DEFAULT_VALID,
        now: int,
        random_bytes: RandomBytes,
    ) -> Certificate:
        details = self._details(name, addresses, groups, routes, valid, now, random_bytes)
        cert = sign_certificate(details, public_key, self.seed)
        self._record(details, "certificate")
        return cert

    def invite(
        self,
        name: str,
        addresses: tuple[IPInterface, ...],
        *,
        groups: tuple[str, ...] = (),
        routes: tuple[IPNetwork, ...] = (),
        expires: int = DEFAULT_INVITE_EXPIRY,
        valid: int = DEFAULT_VALID,
        rendezvous: str | None = None,
        rendezvous_key: bytes | None = None,
        now: int,
        random_bytes: RandomBytes,
    ) -> Invite:
        rendezvous = rendezvous or self.rendezvous
        rendezvous_key = rendezvous_key or self.rendezvous_key
        if rendezvous is None or rendezvous_key is None:
            raise UsageError(
                f"p2ptun invite: no rendezvous known for network {self.network!r}: give "
                "--rendezvous HOST:PORT and --rendezvous-key KEY (or set rendezvous and "
                f"rendezvous_key in {self.file('network.toml')})"
            )
        details = self._details(name, addresses, groups, routes, valid, now, random_bytes)
        enrollment_seed = random_bytes(32)
        grant = sign_grant(details, now + expires, ed25519_public(enrollment_seed), self.seed)
        invite = Invite(grant, enrollment_seed, rendezvous, rendezvous_key, self.domain)
        self._record(details, "invite")
        return invite

    # -- revoking -----------------------------------------------------------------------------

    def issued(self) -> list[tuple[bytes, str, int, str]]:
        """Every ``issued.log`` entry: (serial, name, not_after, kind)."""
        try:
            text = _read(self.file("issued.log"), "the issued log")
        except UsageError:
            return []
        entries = []
        for line in text.splitlines():
            parts = line.split()
            if len(parts) == 4 and re.fullmatch(r"[0-9a-f]{32}", parts[0]):
                entries.append((bytes.fromhex(parts[0]), parts[1], int(parts[2]), parts[3]))
        return entries

    def revocations(self) -> RevocationList | None:
        path = self.file("revoked.crl")
        if not os.path.exists(path):
            return None
        try:
            crl = read_revocations_text(_read(path, "the revocation list", 1 << 21))
            crl.verify(self.public_key, self.network)
        except (MembershipDecodeError, CertificateRejected) as exc:
            raise UsageError(f"{path}: {exc}") from None
        return crl

    def revoke(self, target: str, *, now: int) -> tuple[RevocationList, list[tuple[bytes, str]]]:
        """Revoke a certificate (``target`` is its file) or every unexpired serial issued to
        a name; write the new list. Returns it and what it added (serial, name)."""
        entries: dict[bytes, int] = {}
        revoked: list[tuple[bytes, str]] = []
        if os.path.isfile(target):
            try:
                cert = read_certificate_text(_read(target, "a certificate"))
            except MembershipDecodeError as exc:
                raise UsageError(f"{target}: {exc}") from None
            if cert.authority != self.public_key:
                raise UsageError(f"{target}: this certificate is not of this authority")
            entries[cert.serial] = cert.details.not_after
            revoked.append((cert.serial, cert.name))
        else:
            try:
                check_name(target, "node name")
            except ValueError:
                raise UsageError(
                    f"p2ptun ca revoke: {target!r} is neither a certificate file nor a node name"
                ) from None
            for serial, name, not_after, _kind in self.issued():
                if name == target and not_after > now:
                    entries[serial] = not_after
                    revoked.append((serial, name))
            if not revoked:
                raise UsageError(
                    f"p2ptun ca revoke: nothing unexpired was issued to {target!r} "
                    f"(see {self.file('issued.log')})"
                )
        old = self.revocations()
        merged = {} if old is None else {s: t for s, t in old.entries.items() if t > now}
        merged.update(entries)
        if len(merged) > 2000:
            raise UsageError("p2ptun ca revoke: the list holds 2000 entries, the most it may")
        number = (old.number + 1) if old is not None else 1
        crl = sign_revocations(self.network, number, now, merged, self.seed)
        _write(self.file("revoked.crl"), crl.to_text())
        return crl, revoked


def init(
    out: str,
    network: str,
    domain: str = "",
    *,
    rendezvous: str | None = None,
    rendezvous_key: str | None = None,
    random_bytes: RandomBytes = os.urandom,
) -> Authority:
    """``p2ptun ca init``: a new authority in ``out`` (created 0700)."""
    try:
        check_name(network, "network name")
        check_domain(domain)
    except ValueError as exc:
        raise UsageError(f"p2ptun ca init: {exc}") from None
    rv_key = None
    if rendezvous is not None:
        try:
            parse_host_port(rendezvous, DEFAULT_RENDEZVOUS_PORT)
        except ValueError as exc:
            raise UsageError(f"--rendezvous {rendezvous!r}: {exc}") from None
    if rendezvous_key is not None:
        try:
            rv_key = decode_key(rendezvous_key)
        except ValueError as exc:
            raise UsageError(f"--rendezvous-key: {exc}") from None
    key_path = os.path.join(out, "ca.key")
    if os.path.exists(key_path):
        raise UsageError(f"{key_path} exists: refusing to replace a network authority")
    try:
        os.makedirs(out, mode=0o700, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--out {out}: cannot create the directory: {exc.strerror}") from None
    seed = random_bytes(32)
    auth = Authority(out, seed, network, domain, rendezvous, rv_key)
    _write(key_path, base64.b64encode(seed).decode() + "\n", 0o600)
    _write(auth.file("ca.pub"), base64.b64encode(auth.public_key).decode() + "\n")
    _write_network(auth)
    return auth


def _write_network(auth: Authority) -> None:
    lines = [
        "# The network of this authority (read by 'p2ptun invite').",
        f"name = {_toml_string(auth.network)}",
        f"domain = {_toml_string(auth.domain)}",
    ]
    if auth.rendezvous is not None:
        lines.append(f"rendezvous = {_toml_string(auth.rendezvous)}")
    if auth.rendezvous_key is not None:
        lines.append(f"rendezvous_key = {_toml_string(encode_key(auth.rendezvous_key))}")
    _write(auth.file("network.toml"), "\n".join(lines) + "\n")


def load(path: str) -> Authority:
    """The authority in directory ``path`` (``--ca DIR``)."""
    key_path = os.path.join(path, "ca.key")
    if not os.path.isdir(path):
        raise UsageError(f"--ca {path}: not a directory (make one with 'p2ptun ca init')")
    text = _read(key_path, "the authority's private key")
    try:
        seed = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        seed = b""
    if len(seed) != 32:
        raise UsageError(f"{key_path}: not an authority key (base64 of 32 bytes)")
    net_path = os.path.join(path, "network.toml")
    try:
        data = tomllib.loads(_read(net_path, "the network's settings"))
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{net_path}: {exc}") from None
    network = data.get("name")
    domain = data.get("domain", "")
    rendezvous = data.get("rendezvous")
    rv_key_text = data.get("rendezvous_key")
    try:
        check_name(network if isinstance(network, str) else "", "network name")
        check_domain(domain if isinstance(domain, str) else "?")
        rv_key = decode_key(rv_key_text) if isinstance(rv_key_text, str) else None
    except ValueError as exc:
        raise UsageError(f"{net_path}: {exc}") from None
    if rendezvous is not None and not isinstance(rendezvous, str):
        raise UsageError(f"{net_path}: rendezvous: expected a string host:port")
    assert isinstance(network, str) and isinstance(domain, str)
    return Authority(path, seed, network, domain, rendezvous, rv_key)


def now() -> int:
    return int(time.time())


# -- showing -----------------------------------------------------------------------------------


def _when(t: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))


def _join(items: Sequence[object]) -> str:
    return ", ".join(str(i) for i in items) or "-"


def describe_certificate(cert: Certificate, at: int) -> str:
    d = cert.details
    state = "valid"
    if at >= d.not_after:
        state = "EXPIRED"
    elif at < d.not_before:
        state = "not valid yet"
    form = "signed by the authority"
    if cert.grant is not None:
        form = f"enrolled with an invite (redeem by {_when(cert.grant.redeem_by)})"
    rows = [
        f"certificate of {d.name!r} in network {d.network!r} ({state})",
        f"  public key:   {encode_key(cert.public_key)}",
        f"  addresses:    {_join(d.addresses)}",
        f"  routes:       {_join(d.routes)}",
        f"  groups:       {_join(d.groups)}",
        f"  valid:        {_when(d.not_before)} to {_when(d.not_after)}",
        f"  form:         {form}",
        f"  serial:       {d.serial.hex()}",
        f"  fingerprint:  {cert.fingerprint.hex()}",
        f"  authority:    {base64.b64encode(d.authority).decode()}",
    ]
    return "\n".join(rows)


def describe_revocations(crl: RevocationList) -> str:
    rows = [
        f"revocation list {crl.number} of network {crl.network!r}, issued {_when(crl.issued_at)}",
        f"  authority:    {base64.b64encode(crl.authority).decode()}",
        f"  revoked:      {len(crl.entries)} serial(s)",
    ]
    rows += [f"    {s.hex()} (until {_when(t)})" for s, t in sorted(crl.entries.items())]
    return "\n".join(rows)


def describe_invite(invite: Invite) -> str:
    d = invite.grant.details
    rows = [
        f"invite for {d.name!r} in network {d.network!r}",
        f"  addresses:    {_join(d.addresses)}",
        f"  groups:       {_join(d.groups)}",
        f"  redeem by:    {_when(invite.grant.redeem_by)}",
        f"  rendezvous:   {invite.rendezvous}",
        f"  domain:       {invite.domain or '-'}",
        f"  serial:       {d.serial.hex()}",
    ]
    return "\n".join(rows)


def show(path: str) -> str:
    """``p2ptun ca show FILE``: a certificate (or revocation list, or invite token) readable."""
    text = _read(path, "a certificate", 1 << 21) if path != "-" else ""
    stripped = text.strip()
    try:
        if "P2PTUN REVOCATION LIST" in text:
            return describe_revocations(read_revocations_text(text))
        if stripped.startswith("p2ptun-invite:"):
            return describe_invite(read_invite_text(stripped))
        return describe_certificate(read_certificate_text(text), now())
    except MembershipDecodeError as exc:
        raise UsageError(f"{path}: {exc}") from None
