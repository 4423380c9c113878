"""Invite tokens: one line that takes a new machine into the network (``p2ptun invite`` /
``p2ptun join``).

A token carries an enrollment grant (:mod:`p2ptun.membership.grant`), the private half of its
one-time enrollment key, and what the new node's config needs: the rendezvous' address and
public key and the network's DNS domain. The authority's public key is in the grant. Whoever
holds the token can join once, as the name the grant names, until ``redeem_by``; treat it like
a password and send it over a channel you trust.

Wire form (version 1), then ``p2ptun-invite:`` and unpadded URL-safe base64::

    u8 version = 1, u8 kind = 4, grant (u16 length + encoding), enrollment_seed[32],
    str8 rendezvous ("host:port"), rendezvous_key[32], str8 domain ("" for none)
"""

from __future__ import annotations

from dataclasses import dataclass, field

from p2ptun.membership.cert import Certificate, enroll_certificate
from p2ptun.membership.codec import DNS_LABEL_RE, Reader, Writer, decode_token, encode_token
from p2ptun.membership.details import KEY_LEN, KIND_INVITE, VERSION, ed25519_public, read_header
from p2ptun.membership.errors import MembershipDecodeError
from p2ptun.membership.grant import MAX_GRANT, Grant, decode_grant

PREFIX = "p2ptun-invite:"
MAX_INVITE = 2048


def check_domain(domain: str) -> str:
    """``domain`` if it is empty or a DNS name of lower-case labels, else ValueError."""
    if domain and not (
        len(domain) <= 200 and all(DNS_LABEL_RE.fullmatch(label) for label in domain.split("."))
    ):
        raise ValueError(
            f"{domain!r} is not a DNS domain (labels of a-z, 0-9 and '-', joined by '.')"
        )
    return domain


@dataclass(frozen=True)
class Invite:
    grant: Grant
    enrollment_seed: bytes = field(repr=False)
    rendezvous: str
    rendezvous_key: bytes
    domain: str = ""

    def __post_init__(self) -> None:
        if len(self.enrollment_seed) != KEY_LEN or len(self.rendezvous_key) != KEY_LEN:
            raise ValueError("keys are 32 bytes")
        if ed25519_public(self.enrollment_seed) != self.grant.enrollment_key:
            raise ValueError("the enrollment key does not belong to the grant")
        if not self.rendezvous or len(self.rendezvous.encode()) > 255:
            raise ValueError("the rendezvous address is missing or too long")
        check_domain(self.domain)

    @property
    def name(self) -> str:
        return self.grant.details.name

    def encode(self) -> bytes:
        w = Writer().u8(VERSION).u8(KIND_INVITE).bytes16(self.grant.encode())
        w.raw(self.enrollment_seed).str8(self.rendezvous).raw(self.rendezvous_key)
        w.str8(self.domain)
        return w.getvalue()

    def to_text(self) -> str:
        return encode_token(PREFIX, self.encode())

    def enroll(self, public_key: bytes) -> Certificate:
        """The joining node's certificate for its new WireGuard ``public_key``."""
        return enroll_certificate(self.grant, self.enrollment_seed, public_key)


def decode_invite(data: bytes) -> Invite:
    """Parse a token's bytes; raises only MembershipDecodeError."""
    if len(data) > MAX_INVITE:
        raise MembershipDecodeError(f"not a valid invite: longer than {MAX_INVITE} bytes")
    r = Reader(data, "invite")
    read_header(r, KIND_INVITE)
    grant = decode_grant(r.bytes16(MAX_GRANT))
    seed = r.raw(KEY_LEN)
    rendezvous = r.str8()
    rendezvous_key = r.raw(KEY_LEN)
    domain = r.str8()
    r.finish()
    try:
        return Invite(grant, seed, rendezvous, rendezvous_key, domain)
    except ValueError as exc:
        raise r.error(str(exc)) from None


def read_invite_text(text: str) -> Invite:
    """An invite from its one-line text form; raises only MembershipDecodeError."""
    return decode_invite(decode_token(text, PREFIX, "invite", limit=4 * MAX_INVITE))
