"""Node certificates: what the network authority vouches for, bound to a WireGuard key.

A certificate binds a node's WireGuard public key (X25519) to its name, overlay addresses,
routes, groups, the network's name and a validity period. It comes in two forms:

- **signed** (``p2ptun ca sign``): the authority's Ed25519 signature over the details and the
  key;
- **enrolled** (``p2ptun join``): an enrollment grant the authority signed
  (:mod:`p2ptun.membership.grant`: the same details, a one-time Ed25519 enrollment key, a
  deadline for redeeming it) and the node's own key, signed with the grant's enrollment key.
  The authority's key stays offline; whoever holds the invite can bind exactly one key under
  the name and addresses the authority chose.

Either way :func:`verify_certificate` checks it against the authority's public key, the time
and a revocation list, and it presents the same :class:`Details`. Identifiers: the
``serial`` (16 random bytes, shared by a grant and the certificate enrolled from it) is what
a revocation list names; the ``fingerprint`` (SHA-256 of the encoding) tells two
certificates apart.

Wire form (version 1), canonical (one value has exactly one encoding, checked on decode)::

    u8 version = 1, u8 kind = 1 (certificate), u8 form (1 signed, 2 enrolled)
    signed:   details, key[32], signature[64] (authority, over CERT_DOMAIN + all before it)
    enrolled: grant (u16 length + its encoding), key[32],
              signature[64] (enrollment key, over BIND_DOMAIN + grant encoding + key)

    details = str8 network, str8 name, serial[16],
              u8 n, n × address (u8 4|6, 4|16 bytes, u8 prefix)   overlay addresses, 1-8
              u8 n, n × address                                    routes (no host bits), 0-16
              u8 n, n × str8 group                                 sorted, unique, 0-16
              u64 not_before, u64 not_after (Unix seconds), authority[32] (Ed25519)

Sans-I/O: no clock (``now`` is given), no randomness (the serial is given).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from p2ptun.membership.codec import Reader, Writer, armor, dearmor
from p2ptun.membership.details import (
    BIND_DOMAIN,
    CERT_DOMAIN,
    FORM_ENROLLED,
    FORM_SIGNED,
    KEY_LEN,
    KIND_CERTIFICATE,
    SIGNATURE_LEN,
    VERSION,
    Details,
    ed25519_public,
    ed25519_sign,
    ed25519_verify,
    read_header,
)
from p2ptun.membership.errors import CertificateRejected, MembershipDecodeError, Rejection
from p2ptun.membership.grant import Grant, decode_grant

MAX_CERTIFICATE = 2048
"""Largest certificate encoding (the largest valid one is about 1.3 KB)."""
LABEL = "P2PTUN CERTIFICATE"


@dataclass(frozen=True)
class Certificate:
    """A node's certificate (module docstring). ``grant`` is None for the signed form."""

    details: Details
    public_key: bytes
    signature: bytes = field(repr=False)
    grant: Grant | None = None

    @property
    def name(self) -> str:
        return self.details.name

    @property
    def network(self) -> str:
        return self.details.network

    @property
    def serial(self) -> bytes:
        return self.details.serial

    @property
    def authority(self) -> bytes:
        return self.details.authority

    @property
    def enrolled(self) -> bool:
        return self.grant is not None

    def signed_part(self) -> bytes:
        """What the signature covers (after the domain string)."""
        w = Writer().u8(VERSION).u8(KIND_CERTIFICATE)
        if self.grant is None:
            w.u8(FORM_SIGNED)
            self.details.write(w)
        else:
            w.u8(FORM_ENROLLED).bytes16(self.grant.encode())
        w.raw(self.public_key)
        return w.getvalue()

    def encode(self) -> bytes:
        return self.signed_part() + self.signature

    @property
    def fingerprint(self) -> bytes:
        return hashlib.sha256(self.encode()).digest()

    def to_text(self) -> str:
        return armor(LABEL, self.encode())


def sign_certificate(details: Details, public_key: bytes, authority_seed: bytes) -> Certificate:
    """The authority's certificate for ``public_key`` (``p2ptun ca sign``)."""
    if len(public_key) != KEY_LEN:
        raise ValueError("a WireGuard public key is 32 bytes")
    if ed25519_public(authority_seed) != details.authority:
        raise ValueError("the details name another authority")
    unsigned = Certificate(details, public_key, b"")
    signature = ed25519_sign(authority_seed, CERT_DOMAIN + unsigned.signed_part())
    return Certificate(details, public_key, signature)


def enroll_certificate(grant: Grant, enrollment_seed: bytes, public_key: bytes) -> Certificate:
    """The certificate a joining node makes itself (``p2ptun join``): ``grant`` and its own
    WireGuard ``public_key``, bound with the grant's enrollment key."""
    if len(public_key) != KEY_LEN:
        raise ValueError("a WireGuard public key is 32 bytes")
    if ed25519_public(enrollment_seed) != grant.enrollment_key:
        raise ValueError("the enrollment key does not belong to this grant")
    signature = ed25519_sign(enrollment_seed, BIND_DOMAIN + grant.encode() + public_key)
    return Certificate(grant.details, public_key, signature, grant)


def decode_certificate(data: bytes) -> Certificate:
    """Parse a certificate's encoding; raises only MembershipDecodeError. Checks the form,
    not the signatures (:func:`verify_certificate`)."""
    if len(data) > MAX_CERTIFICATE:
        raise MembershipDecodeError(f"not a valid certificate: longer than {MAX_CERTIFICATE} bytes")
    r = Reader(data, "certificate")
    read_header(r, KIND_CERTIFICATE)
    form = r.u8()
    grant = None
    if form == FORM_SIGNED:
        details = Details.read(r)
    elif form == FORM_ENROLLED:
        grant = decode_grant(r.bytes16(MAX_CERTIFICATE))
        details = grant.details
    else:
        raise r.error(f"unknown form {form}")
    key = r.raw(KEY_LEN)
    signature = r.raw(SIGNATURE_LEN)
    r.finish()
    cert = Certificate(details, key, signature, grant)
    if cert.encode() != data:  # pragma: no cover - every field above is read canonically
        raise r.error("not in canonical form")
    return cert


def read_certificate_text(text: str) -> Certificate:
    """A certificate from its text form (``bob.cert``); raises only MembershipDecodeError."""
    return decode_certificate(dearmor(text, LABEL, "certificate"))


def verify_certificate(
    cert: Certificate,
    authority: bytes,
    now: float,
    *,
    network: str | None = None,
    revoked: frozenset[bytes] | set[bytes] = frozenset(),
) -> None:
    """Check ``cert`` against the authority's Ed25519 public key, the time ``now`` (Unix
    seconds), the network's name and the revoked serials; raises :class:`CertificateRejected`
    (one line) when it must not be trusted."""
    details = cert.details
    who = repr(details.name)
    if details.authority != authority:
        raise CertificateRejected(
            Rejection.WRONG_AUTHORITY,
            f"the certificate of {who} is signed by another network authority",
        )
    if network is not None and details.network != network:
        raise CertificateRejected(
            Rejection.WRONG_NETWORK,
            f"the certificate of {who} is for network {details.network!r}, not {network!r}",
        )
    grant = cert.grant
    if grant is None:
        good = ed25519_verify(authority, cert.signature, CERT_DOMAIN + cert.signed_part())
    else:
        grant.verify(authority)
        message = BIND_DOMAIN + grant.encode() + cert.public_key
        good = ed25519_verify(grant.enrollment_key, cert.signature, message)
    if not good:
        raise CertificateRejected(
            Rejection.BAD_SIGNATURE, f"the certificate of {who} has a forged or damaged signature"
        )
    details.check_time(now, "the certificate")
    if details.serial in revoked:
        raise CertificateRejected(Rejection.REVOKED, f"the certificate of {who} is revoked")
