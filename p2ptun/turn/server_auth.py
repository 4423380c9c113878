"""Long-term credential checks for the TURN server (RFC 8489 §9.2, RFC 8656 §5).

- :class:`NonceIssuer` makes stateless nonces: ``"obMatJos2"`` + the security-feature bits
  (RFC 8489 §9.2) + the issue time + an HMAC of both and the client's 5-tuple. Checking one
  needs no memory, so a flood of unauthenticated requests creates no state; a nonce older than
  its lifetime, or presented from another 5-tuple, is stale (438, RFC 8489 §9.2.4).
- :class:`CredentialStore` finds the password of a user: static users from the config, or
  ephemeral REST-API users (``expiry:name``, :mod:`p2ptun.turn.credentials`) when an
  ``auth_secret`` is configured. Keys are cached per (user, algorithm) in a bounded LRU.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections import OrderedDict
from collections.abc import Mapping

from p2ptun.stun import PasswordAlgorithm, long_term_key, userhash
from p2ptun.turn.credentials import rest_credential_password

#: RFC 8489 §9.2: the nonce cookie that announces security features.
NONCE_COOKIE = "obMatJos2"
#: Security feature bit 0 (the most significant of the 24): "Password algorithms".
FEATURE_PASSWORD_ALGORITHMS = 1 << 23
DEFAULT_NONCE_LIFETIME = 600.0
_MAC_CHARS = 22


def _features_text(bits: int) -> str:
    """The 24 feature bits as 4 base64 characters (RFC 8489 §9.2)."""
    return base64.b64encode(bits.to_bytes(3, "big")).decode("ascii")


class NonceIssuer:
    """Stateless, expiring nonces bound to a client 5-tuple (RFC 8489 §9.2.1 "nonce")."""

    def __init__(
        self,
        secret: bytes,
        lifetime: float = DEFAULT_NONCE_LIFETIME,
        features: int = FEATURE_PASSWORD_ALGORITHMS,
    ) -> None:
        if len(secret) < 16:
            raise ValueError("the nonce secret needs at least 16 bytes")
        self._secret = secret
        self.lifetime = lifetime
        self.prefix = NONCE_COOKIE + _features_text(features)

    def _mac(self, issued: int, bound_to: str) -> str:
        msg = f"{issued}|{bound_to}".encode()
        digest = hmac.digest(self._secret, msg, hashlib.sha256)
        return base64.urlsafe_b64encode(digest).decode("ascii")[:_MAC_CHARS]

    def issue(self, now: float, bound_to: str) -> str:
        """A fresh nonce for the client identified by ``bound_to`` (its 5-tuple as text)."""
        issued = int(now // 1)
        return f"{self.prefix}{issued:x}.{self._mac(issued, bound_to)}"

    def valid(self, nonce: str, now: float, bound_to: str) -> bool:
        """True if ``nonce`` came from :meth:`issue` for ``bound_to`` and has not expired."""
        if not nonce.startswith(self.prefix) or len(nonce) > 64:
            return False
        stamp, dot, mac = nonce[len(self.prefix) :].partition(".")
        if not dot or not 1 <= len(stamp) <= 16:
            return False
        try:
            issued = int(stamp, 16)
        except ValueError:
            return False
        if not hmac.compare_digest(mac.encode(), self._mac(issued, bound_to).encode()):
            return False
        return issued <= now < issued + self.lifetime


class CredentialStore:
    """Long-term credential keys (RFC 8489 §9.2.2) for static and REST-API users."""

    def __init__(
        self,
        realm: str,
        users: Mapping[str, str],
        auth_secret: str | None = None,
        cache_size: int = 1024,
    ) -> None:
        self.realm = realm
        self._users = dict(users)
        self._secret = auth_secret
        self._by_hash = {userhash(u, realm): u for u in self._users}
        self._cache: OrderedDict[tuple[str, int], bytes] = OrderedDict()
        self._cache_size = cache_size

    def username_for_hash(self, value: bytes) -> str | None:
        """The static user whose USERHASH (RFC 8489 §14.4) is ``value``."""
        return self._by_hash.get(value)

    def password(self, username: str, wall_time: float) -> str | None:
        """The password of ``username`` at Unix time ``wall_time``, or None (unknown user or
        an expired REST-API credential)."""
        static = self._users.get(username)
        if static is not None:
            return static
        if self._secret is not None:
            return rest_credential_password(self._secret, username, wall_time)
        return None

    def key(
        self, username: str, wall_time: float, algorithm: int = PasswordAlgorithm.MD5
    ) -> bytes | None:
        """The long-term key of ``username`` with ``algorithm``, or None if the user is
        unknown or expired. Keys are cached (bounded); expiry is checked every time."""
        password = self.password(username, wall_time)
        if password is None:
            return None
        entry = (username, int(algorithm))
        cached = self._cache.get(entry)
        if cached is not None:
            self._cache.move_to_end(entry)
            return cached
        key = long_term_key(username, self.realm, password, algorithm)
        self._cache[entry] = key
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return key
