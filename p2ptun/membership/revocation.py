"""Revocation lists: the serials the authority has withdrawn, signed.

``p2ptun ca revoke`` adds the serial of a certificate (or every unexpired one issued under a
name) and signs the list again with a higher ``number``. The list travels through the
rendezvous, which keeps the newest one per network and hands it to every member; every node
verifies the signature itself and applies only a list newer than the one it holds, so that a
rendezvous can withhold a list but never forge or roll one back. An entry carries the expiry
of what it revokes, so that the authority can drop it once that has passed and the list stays
small.

Wire form (version 1)::

    u8 version = 1, u8 kind = 2, str8 network, authority[32], u64 number, u64 issued_at,
    u16 n, n × (serial[16], u64 not_after)   sorted by serial, unique, n <= MAX_REVOKED
    signature[64] (authority, over REVOCATIONS_DOMAIN + all before it)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from p2ptun.membership.codec import Reader, Writer, armor, check_name, dearmor
from p2ptun.membership.details import (
    KEY_LEN,
    KIND_REVOCATIONS,
    REVOCATIONS_DOMAIN,
    SERIAL_LEN,
    SIGNATURE_LEN,
    VERSION,
    ed25519_public,
    ed25519_sign,
    ed25519_verify,
    read_header,
)
from p2ptun.membership.errors import CertificateRejected, MembershipDecodeError, Rejection

MAX_REVOKED = 2000
"""Entries at most: the list fits in one signaling message (24 bytes each)."""
MAX_REVOCATIONS = 64 + MAX_REVOKED * (SERIAL_LEN + 8) + 128 + SIGNATURE_LEN
LABEL = "P2PTUN REVOCATION LIST"


@dataclass(frozen=True)
class RevocationList:
    network: str
    authority: bytes
    number: int
    issued_at: int
    #: Revoked serial -> the expiry (Unix seconds) of what it revoked.
    entries: Mapping[bytes, int]
    signature: bytes = field(repr=False, default=b"")

    def __post_init__(self) -> None:
        check_name(self.network, "network name")
        if len(self.authority) != KEY_LEN:
            raise ValueError("authority is 32 bytes")
        if len(self.entries) > MAX_REVOKED:
            raise ValueError(f"more than {MAX_REVOKED} revoked serials")
        if any(len(s) != SERIAL_LEN for s in self.entries):
            raise ValueError("serials are 16 bytes")
        if not 0 <= self.number < 1 << 63 or not 0 <= self.issued_at < 1 << 63:
            raise ValueError("number or time out of range")

    @property
    def serials(self) -> frozenset[bytes]:
        return frozenset(self.entries)

    def signed_part(self) -> bytes:
        w = Writer().u8(VERSION).u8(KIND_REVOCATIONS).str8(self.network).raw(self.authority)
        w.u64(self.number).u64(self.issued_at).u16(len(self.entries))
        for serial in sorted(self.entries):
            w.raw(serial).u64(self.entries[serial])
        return w.getvalue()

    def encode(self) -> bytes:
        return self.signed_part() + self.signature

    def to_text(self) -> str:
        return armor(LABEL, self.encode())

    def verify(self, authority: bytes, network: str | None = None) -> None:
        """Raise :class:`CertificateRejected` unless ``authority`` signed this list (for
        ``network``)."""
        if self.authority != authority:
            raise CertificateRejected(
                Rejection.WRONG_AUTHORITY,
                "the revocation list is signed by another network authority",
            )
        if network is not None and self.network != network:
            raise CertificateRejected(
                Rejection.WRONG_NETWORK, f"the revocation list is for network {self.network!r}"
            )
        if not ed25519_verify(authority, self.signature, REVOCATIONS_DOMAIN + self.signed_part()):
            raise CertificateRejected(
                Rejection.BAD_SIGNATURE, "the revocation list has a forged or damaged signature"
            )


def sign_revocations(
    network: str,
    number: int,
    issued_at: int,
    entries: Mapping[bytes, int],
    authority_seed: bytes,
) -> RevocationList:
    unsigned = RevocationList(
        network, ed25519_public(authority_seed), number, issued_at, dict(entries)
    )
    signature = ed25519_sign(authority_seed, REVOCATIONS_DOMAIN + unsigned.signed_part())
    return RevocationList(network, unsigned.authority, number, issued_at, dict(entries), signature)


def decode_revocations(data: bytes) -> RevocationList:
    """Parse a revocation list; raises only MembershipDecodeError (signature:
    :meth:`RevocationList.verify`)."""
    if len(data) > MAX_REVOCATIONS:
        raise MembershipDecodeError("not a valid revocation list: too long")
    r = Reader(data, "revocation list")
    read_header(r, KIND_REVOCATIONS)
    network = r.name("network name")
    authority = r.raw(KEY_LEN)
    number, issued_at = r.u64(), r.u64()
    if number >= 1 << 63 or issued_at >= 1 << 63:
        raise r.error("number or time out of range")
    n = r.u16()
    if n > MAX_REVOKED:
        raise r.error(f"{n} entries (at most {MAX_REVOKED})")
    entries: dict[bytes, int] = {}
    previous = b""
    for _ in range(n):
        serial = r.raw(SERIAL_LEN)
        if serial <= previous:
            raise r.error("entries are not sorted and unique")
        previous = serial
        entries[serial] = r.u64()
    signature = r.raw(SIGNATURE_LEN)
    r.finish()
    return RevocationList(network, authority, number, issued_at, entries, signature)


def read_revocations_text(text: str) -> RevocationList:
    return decode_revocations(dearmor(text, LABEL, "revocation list"))
