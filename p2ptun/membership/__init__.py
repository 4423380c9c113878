"""Network membership: certificates, enrollment grants, invites and revocation lists.

A sans-I/O layer over Ed25519 (``cryptography``): bytes, keys and the time in; certificates,
verdicts and bytes out. It reads no file, no clock and no randomness of its own: the CA's files
and the command line live above it (:mod:`p2ptun.ca`, :mod:`p2ptun.cli`), the node's and the
rendezvous' use of it in their composition roots.

- :mod:`~p2ptun.membership.details`: what the authority vouches for (name, addresses, routes,
  groups, network, validity, serial) and the shared Ed25519 helpers;
- :mod:`~p2ptun.membership.cert`: node certificates, signed by the authority or enrolled with
  a grant, and their verification;
- :mod:`~p2ptun.membership.grant` and :mod:`~p2ptun.membership.invite`: enrollment grants and
  the one-line invite tokens that carry them;
- :mod:`~p2ptun.membership.revocation`: signed revocation lists;
- :mod:`~p2ptun.membership.roster`: a node's view of its network's members;
- :mod:`~p2ptun.membership.codec`: the bounded binary encoding and the text forms.

Every decoder raises only :class:`~p2ptun.membership.errors.MembershipDecodeError` (a
:class:`~p2ptun.errors.DecodeError`); a certificate that decodes but must not be trusted is a
:class:`~p2ptun.membership.errors.CertificateRejected`. Both messages are one line. The
construction and its threat model: SECURITY.md.
"""

from __future__ import annotations

from p2ptun.membership.cert import (
    Certificate,
    decode_certificate,
    enroll_certificate,
    read_certificate_text,
    sign_certificate,
    verify_certificate,
)
from p2ptun.membership.details import Details, ed25519_public
from p2ptun.membership.errors import CertificateRejected, MembershipDecodeError, Rejection
from p2ptun.membership.grant import Grant, decode_grant, sign_grant
from p2ptun.membership.invite import Invite, check_domain, decode_invite, read_invite_text
from p2ptun.membership.revocation import (
    RevocationList,
    decode_revocations,
    read_revocations_text,
    sign_revocations,
)
from p2ptun.membership.roster import Member, Roster

__all__ = [
    "Certificate",
    "CertificateRejected",
    "Details",
    "Grant",
    "Invite",
    "Member",
    "MembershipDecodeError",
    "Rejection",
    "RevocationList",
    "Roster",
    "check_domain",
    "decode_certificate",
    "decode_grant",
    "decode_invite",
    "decode_revocations",
    "ed25519_public",
    "enroll_certificate",
    "read_certificate_text",
    "read_invite_text",
    "read_revocations_text",
    "sign_certificate",
    "sign_grant",
    "sign_revocations",
    "verify_certificate",
]
