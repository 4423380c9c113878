"""The bounded binary encoding shared by certificates, grants, invites and revocation lists,
and their text forms.

Integers are big-endian. A string is UTF-8 behind a one-byte length; a byte string behind a
two-byte length; an IP address is its version (4 or 6), its 4 or 16 bytes and a prefix length.
:class:`Reader` (on :mod:`p2ptun.wire`) raises only
:class:`~p2ptun.membership.errors.MembershipDecodeError`.

Text forms: a certificate or revocation list is armored like PEM (``-----BEGIN P2PTUN
CERTIFICATE-----``, base64 lines, ``-----END ...``); an invite is one line, a prefix and
unpadded URL-safe base64, so that it survives a chat window or a terminal.
"""

from __future__ import annotations

import base64
import binascii
import re

from p2ptun import wire
from p2ptun.membership.errors import MembershipDecodeError
from p2ptun.wire import IPInterface, IPNetwork, check_name
from p2ptun.wire import WireWriter as Writer

__all__ = [
    "DNS_LABEL_RE",
    "NAME_RE",
    "IPInterface",
    "IPNetwork",
    "Reader",
    "Writer",
    "armor",
    "check_name",
    "dearmor",
    "decode_token",
    "encode_token",
]

NAME_RE = wire.NAME_RE
"""Node, network and group names: the node names of the config (1-63 characters)."""
DNS_LABEL_RE = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")

MAX_ARMORED = 64 * 1024
"""Longest text form read (certificates are a few hundred bytes, revocation lists at most
tens of kilobytes)."""


class Reader(wire.WireReader):
    """Reads fields of ``what`` (named in errors); every shortfall or bad value raises
    MembershipDecodeError."""

    __slots__ = ("what",)

    def __init__(self, data: bytes, what: str) -> None:
        super().__init__(data)
        self.what = what

    def error(self, problem: str) -> MembershipDecodeError:
        return MembershipDecodeError(f"not a valid {self.what}: {problem}")


# -- text forms ----------------------------------------------------------------------------------


def armor(label: str, data: bytes) -> str:
    """PEM-like text: BEGIN line, base64 in lines of 64, END line (ends with a newline)."""
    b64 = base64.b64encode(data).decode("ascii")
    lines = [b64[i : i + 64] for i in range(0, len(b64), 64)]
    return "\n".join([f"-----BEGIN {label}-----", *lines, f"-----END {label}-----"]) + "\n"


_ARMOR_RE = re.compile(r"-----BEGIN ([A-Z0-9 ]{1,40})-----(.*?)-----END \1-----", re.S)


def dearmor(text: str, label: str, what: str) -> bytes:
    """The bytes inside the first armored block of ``text``, which must carry ``label``."""
    if len(text) > MAX_ARMORED:
        raise MembershipDecodeError(f"not a valid {what}: longer than {MAX_ARMORED} characters")
    match = _ARMOR_RE.search(text)
    if match is None:
        raise MembershipDecodeError(
            f"not a valid {what}: no '-----BEGIN {label}-----' ... '-----END {label}-----' block"
        )
    if match.group(1) != label:
        raise MembershipDecodeError(
            f"not a valid {what}: this is a {match.group(1).lower()}, not a {label.lower()}"
        )
    body = "".join(match.group(2).split())
    try:
        return base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        raise MembershipDecodeError(f"not a valid {what}: the base64 inside is damaged") from None


def encode_token(prefix: str, data: bytes) -> str:
    """One line: ``prefix`` and unpadded URL-safe base64."""
    return prefix + base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def decode_token(text: str, prefix: str, what: str, limit: int = 4096) -> bytes:
    text = text.strip()
    if not text.startswith(prefix):
        raise MembershipDecodeError(f"not a valid {what}: it does not start with {prefix!r}")
    body = text[len(prefix) :]
    if len(body) > limit or not re.fullmatch(r"[A-Za-z0-9_-]*", body):
        raise MembershipDecodeError(f"not a valid {what}: damaged (cut or changed when copied?)")
    try:
        return base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    except (binascii.Error, ValueError):
        raise MembershipDecodeError(
            f"not a valid {what}: damaged (cut or changed when copied?)"
        ) from None
