"""TURN credentials in coturn's REST-API form (draft-uberti-behave-turn-rest-00 §2.2).

An ephemeral credential is a username ``"<expiry>:<name>"`` (``expiry`` a Unix time in whole
seconds; a bare ``"<expiry>"`` is accepted too) and the password
``base64(HMAC-SHA1(shared secret, username))``. A rendezvous that knows the secret mints them
for its nodes; any TURN server with the same secret (coturn's ``use-auth-secret``, or ours)
accepts them until ``expiry``. They are then used as ordinary long-term credentials
(RFC 8489 §9.2): the key is ``MD5(username ":" realm ":" password)``.

Pure functions: the caller passes the current wall-clock time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import NamedTuple

#: The separator coturn uses between the expiry and the name (its ``-C`` default).
SEPARATOR = ":"


class RestCredential(NamedTuple):
    """One ephemeral credential: the username and password a client puts in its config."""

    username: str
    password: str
    expiry: int


def rest_password(secret: str | bytes, username: str) -> str:
    """The password of a REST-API ``username``: base64(HMAC-SHA1(secret, username))."""
    key = secret.encode("utf-8") if isinstance(secret, str) else secret
    mac = hmac.digest(key, username.encode("utf-8"), hashlib.sha1)
    return base64.b64encode(mac).decode("ascii")


def make_rest_credential(
    secret: str | bytes, name: str, now: float, lifetime: int
) -> RestCredential:
    """Mint a credential for ``name`` valid for ``lifetime`` seconds after ``now`` (Unix
    time)."""
    if SEPARATOR in name:
        raise ValueError(f"a REST-API user name cannot contain {SEPARATOR!r}")
    expiry = int(now) + int(lifetime)
    username = f"{expiry}{SEPARATOR}{name}" if name else str(expiry)
    return RestCredential(username, rest_password(secret, username), expiry)


def parse_rest_username(username: str) -> tuple[int, str] | None:
    """``(expiry, name)`` of a REST-API username, or None if it is not one (the part before
    the first ``:`` must be a decimal Unix time)."""
    head, _, name = username.partition(SEPARATOR)
    if not head.isascii() or not head.isdigit() or len(head) > 12:
        return None
    return int(head), name


def rest_credential_password(secret: str | bytes, username: str, now: float) -> str | None:
    """The password for ``username`` if it is a REST-API username that has not expired at
    ``now`` (Unix time), else None."""
    parsed = parse_rest_username(username)
    if parsed is None or parsed[0] < now:
        return None
    return rest_password(secret, username)
