"""Enrollment grants: the authority's signed permission to bind one key to a name.

``p2ptun invite`` makes a grant: the :class:`~p2ptun.membership.details.Details` the new
node's certificate will carry (name, addresses, groups, routes, validity), a fresh one-time
Ed25519 *enrollment key*, and ``redeem_by``, the deadline for using it; the authority signs it
all. The invite token (:mod:`p2ptun.membership.invite`) carries the grant with the enrollment
key's private half. ``p2ptun join`` generates the node's WireGuard key and signs the binding
with the enrollment key (:func:`p2ptun.membership.cert.enroll_certificate`): that grant plus
binding is the node's certificate, without the authority's key ever leaving its machine.

The rendezvous enforces that a grant is redeemed once (the first key it sees under a serial is
the only one it admits) and before ``redeem_by``; nodes pin the first key they see per serial.
The construction and its threat model: SECURITY.md.

Wire form (version 1)::

    u8 version = 1, u8 kind = 3, details, u64 redeem_by, enrollment_key[32],
    signature[64] (authority, over GRANT_DOMAIN + all before it)
"""

from __future__ import annotations

from dataclasses import dataclass, field

from p2ptun.membership.codec import Reader, Writer
from p2ptun.membership.details import (
    GRANT_DOMAIN,
    KEY_LEN,
    KIND_GRANT,
    SIGNATURE_LEN,
    VERSION,
    Details,
    ed25519_public,
    ed25519_sign,
    ed25519_verify,
    read_header,
)
from p2ptun.membership.errors import CertificateRejected, MembershipDecodeError, Rejection

MAX_GRANT = 1536


@dataclass(frozen=True)
class Grant:
    details: Details
    redeem_by: int
    enrollment_key: bytes
    signature: bytes = field(repr=False)

    def signed_part(self) -> bytes:
        w = Writer().u8(VERSION).u8(KIND_GRANT)
        self.details.write(w)
        w.u64(self.redeem_by).raw(self.enrollment_key)
        return w.getvalue()

    def encode(self) -> bytes:
        return self.signed_part() + self.signature

    def verify(self, authority: bytes) -> None:
        """Raise :class:`CertificateRejected` unless ``authority`` signed this grant."""
        who = repr(self.details.name)
        if self.details.authority != authority:
            raise CertificateRejected(
                Rejection.WRONG_AUTHORITY,
                f"the enrollment grant of {who} is signed by another network authority",
            )
        if not ed25519_verify(authority, self.signature, GRANT_DOMAIN + self.signed_part()):
            raise CertificateRejected(
                Rejection.BAD_SIGNATURE,
                f"the enrollment grant of {who} has a forged or damaged signature",
            )

    def check_redeemable(self, now: float) -> None:
        """Raise :class:`CertificateRejected` when the grant's deadline has passed."""
        if now >= self.redeem_by:
            raise CertificateRejected(
                Rejection.EXPIRED,
                f"the invite for {self.details.name!r} has expired; ask for a new one",
            )


def sign_grant(
    details: Details, redeem_by: int, enrollment_key: bytes, authority_seed: bytes
) -> Grant:
    if len(enrollment_key) != KEY_LEN:
        raise ValueError("an enrollment key is 32 bytes")
    if ed25519_public(authority_seed) != details.authority:
        raise ValueError("the details name another authority")
    if not 0 <= redeem_by < 1 << 63:
        raise ValueError("redeem_by out of range")
    unsigned = Grant(details, redeem_by, enrollment_key, b"")
    signature = ed25519_sign(authority_seed, GRANT_DOMAIN + unsigned.signed_part())
    return Grant(details, redeem_by, enrollment_key, signature)


def decode_grant(data: bytes) -> Grant:
    """Parse a grant; raises only MembershipDecodeError (signatures: :meth:`Grant.verify`)."""
    if len(data) > MAX_GRANT:
        raise MembershipDecodeError(f"not a valid enrollment grant: longer than {MAX_GRANT} bytes")
    r = Reader(data, "enrollment grant")
    read_header(r, KIND_GRANT)
    details = Details.read(r)
    redeem_by = r.u64()
    if redeem_by >= 1 << 63:
        raise r.error("deadline out of range")
    enrollment_key = r.raw(KEY_LEN)
    signature = r.raw(SIGNATURE_LEN)
    r.finish()
    return Grant(details, redeem_by, enrollment_key, signature)
