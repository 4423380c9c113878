"""Errors of the membership layer: certificates, grants, invites and revocation lists."""

from __future__ import annotations

import enum

from p2ptun.errors import DecodeError, RemoteProtocolError


class MembershipDecodeError(DecodeError):
    """Bytes or text that are not a well-formed certificate, grant, invite token or revocation
    list. Every decoder of :mod:`p2ptun.membership` raises this and nothing else; its message
    is one line that says what is wrong."""


class Rejection(enum.Enum):
    """Why a well-formed certificate (or revocation list) is not accepted."""

    WRONG_AUTHORITY = "signed by another network authority"
    BAD_SIGNATURE = "signature does not verify"
    NOT_YET_VALID = "not valid yet"
    EXPIRED = "expired"
    REVOKED = "revoked"
    WRONG_NETWORK = "of another network"
    WRONG_NAME = "issued for another name"
    WRONG_KEY = "bound to another key"
    STALE = "older than the one in use"


class CertificateRejected(RemoteProtocolError):
    """A certificate, grant or revocation list that decodes but is not to be trusted:
    ``reason`` says why (a :class:`Rejection`), the message says it in one line."""

    def __init__(self, reason: Rejection, text: str) -> None:
        self.reason = reason
        super().__init__(text)
