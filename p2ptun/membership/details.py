"""What the network authority vouches for, and the pieces every signed object shares.

:class:`Details` is the part of a certificate (and of an enrollment grant) the authority
signs: the network's name, the node's name, a serial, its overlay addresses, routes and
groups, a validity period and the authority's own Ed25519 public key. The encoding is
described in :mod:`p2ptun.membership.cert`. Ed25519 comes from ``cryptography``; keys are
handled as raw 32-byte seeds and public keys, so that the caller injects the randomness.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from p2ptun.membership.codec import IPInterface, IPNetwork, Reader, Writer, check_name
from p2ptun.membership.errors import CertificateRejected, Rejection

VERSION = 1
KIND_CERTIFICATE = 1
KIND_REVOCATIONS = 2
KIND_GRANT = 3
KIND_INVITE = 4
FORM_SIGNED = 1
FORM_ENROLLED = 2

CERT_DOMAIN = b"p2ptun certificate v1\x00"
BIND_DOMAIN = b"p2ptun enrollment binding v1\x00"
GRANT_DOMAIN = b"p2ptun enrollment grant v1\x00"
REVOCATIONS_DOMAIN = b"p2ptun revocation list v1\x00"

KEY_LEN = 32
SIGNATURE_LEN = 64
SERIAL_LEN = 16
MAX_ADDRESSES = 8
MAX_ROUTES = 16
MAX_GROUPS = 16
CLOCK_SKEW = 300
"""Seconds a certificate is accepted before its ``not_before`` (unsynchronised clocks)."""

_KIND_NAMES = {
    KIND_CERTIFICATE: "certificate",
    KIND_REVOCATIONS: "revocation list",
    KIND_GRANT: "enrollment grant",
    KIND_INVITE: "invite",
}


def ed25519_public(private_seed: bytes) -> bytes:
    """The Ed25519 public key of a 32-byte private seed."""
    key = Ed25519PrivateKey.from_private_bytes(private_seed)
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def ed25519_sign(private_seed: bytes, message: bytes) -> bytes:
    return Ed25519PrivateKey.from_private_bytes(private_seed).sign(message)


def ed25519_verify(public: bytes, signature: bytes, message: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


def read_header(r: Reader, kind: int) -> None:
    """Version and kind, with a clear word when the bytes are another kind of object."""
    version = r.u8()
    if version != VERSION:
        raise r.error(f"version {version} (this p2ptun reads version {VERSION})")
    found = r.u8()
    if found != kind:
        name = _KIND_NAMES.get(found)
        if name is None:
            raise r.error(f"unknown kind {found}")
        raise r.error(f"this is a {name}")


@dataclass(frozen=True)
class Details:
    """What the authority vouches for (shared by signed certificates and grants)."""

    network: str
    name: str
    serial: bytes
    addresses: tuple[IPInterface, ...]
    routes: tuple[IPNetwork, ...]
    groups: tuple[str, ...]
    not_before: int
    not_after: int
    authority: bytes

    def __post_init__(self) -> None:
        check_name(self.network, "network name")
        check_name(self.name, "node name")
        if len(self.serial) != SERIAL_LEN or len(self.authority) != KEY_LEN:
            raise ValueError("serial must be 16 bytes and authority 32")
        if not 1 <= len(self.addresses) <= MAX_ADDRESSES:
            raise ValueError(f"1-{MAX_ADDRESSES} overlay addresses")
        if len(set(self.addresses)) != len(self.addresses):
            raise ValueError("an overlay address is listed twice")
        if len(self.routes) > MAX_ROUTES or len(set(self.routes)) != len(self.routes):
            raise ValueError(f"at most {MAX_ROUTES} routes, each once")
        if len(self.groups) > MAX_GROUPS:
            raise ValueError(f"at most {MAX_GROUPS} groups")
        for group in self.groups:
            check_name(group, "group name")
        if list(self.groups) != sorted(set(self.groups)):
            raise ValueError("groups must be sorted and unique")
        if not 0 <= self.not_before < self.not_after < 1 << 63:
            raise ValueError("the validity period is empty")

    def write(self, w: Writer) -> None:
        w.str8(self.network).str8(self.name).raw(self.serial)
        w.u8(len(self.addresses))
        for address in self.addresses:
            w.ip(address)
        w.u8(len(self.routes))
        for route in self.routes:
            w.ip(route)
        w.u8(len(self.groups))
        for group in self.groups:
            w.str8(group)
        w.u64(self.not_before).u64(self.not_after).raw(self.authority)

    @classmethod
    def read(cls, r: Reader) -> Details:
        network = r.name("network name")
        name = r.name("node name")
        serial = r.raw(SERIAL_LEN)
        n = r.u8()
        if not 1 <= n <= MAX_ADDRESSES:
            raise r.error(f"{n} overlay addresses (1-{MAX_ADDRESSES})")
        addresses = tuple(r.interface() for _ in range(n))
        n = r.u8()
        if n > MAX_ROUTES:
            raise r.error(f"{n} routes (at most {MAX_ROUTES})")
        routes = tuple(r.network() for _ in range(n))
        n = r.u8()
        if n > MAX_GROUPS:
            raise r.error(f"{n} groups (at most {MAX_GROUPS})")
        groups = tuple(r.name("group name") for _ in range(n))
        not_before, not_after = r.u64(), r.u64()
        authority = r.raw(KEY_LEN)
        try:
            return cls(network, name, serial, addresses, routes, groups, not_before, not_after,
                       authority)  # fmt: skip
        except ValueError as exc:
            raise r.error(str(exc)) from None

    def check_time(self, now: float, what: str) -> None:
        if now + CLOCK_SKEW < self.not_before:
            raise CertificateRejected(
                Rejection.NOT_YET_VALID, f"{what} of {self.name!r} is not valid yet"
            )
        if now >= self.not_after:
            raise CertificateRejected(Rejection.EXPIRED, f"{what} of {self.name!r} has expired")
