"""Keys for MESSAGE-INTEGRITY(-SHA256): short-term and long-term credentials (RFC 8489 §9).

The key is independent of which integrity attribute carries the HMAC: HMAC-SHA1
(MESSAGE-INTEGRITY) and HMAC-SHA256 (MESSAGE-INTEGRITY-SHA256) both use the same key bytes.
"""

from __future__ import annotations

import hashlib
import unicodedata

from p2ptun.stun.constants import PasswordAlgorithm

# RFC 8265 §4.2.2 (OpaqueString): non-ASCII space characters (Unicode general category Zs)
# are mapped to U+0020.
_SPACE_MAP = {cp: " " for cp in (0x00A0, 0x1680, *range(0x2000, 0x200B), 0x202F, 0x205F, 0x3000)}


def opaque_string(text: str) -> str:
    """Prepare a password or realm with the OpaqueString profile (RFC 8265 §4.2.2): map
    non-ASCII spaces to U+0020, then normalize to NFC. (Enforcement of disallowed code points
    is left to whoever configures the password.)"""
    if text.isascii():
        return text
    return unicodedata.normalize("NFC", text.translate(_SPACE_MAP))


def prepare_username(username: str) -> str:
    """Username preparation (RFC 8489 §14.3 asks for the UsernameCasePreserved profile of
    RFC 8265 §3.4): NFC normalization, the part of it that changes bytes on the wire."""
    if username.isascii():
        return username
    return unicodedata.normalize("NFC", username)


def short_term_key(password: str) -> bytes:
    """Short-term credential key (RFC 8489 §9.1.1): OpaqueString(password) in UTF-8. ICE uses
    this with the peer's ice-pwd (RFC 8445 §7.2.2)."""
    return opaque_string(password).encode("utf-8")


def long_term_key(
    username: str,
    realm: str,
    password: str,
    algorithm: int = PasswordAlgorithm.MD5,
) -> bytes:
    """Long-term credential key (RFC 8489 §9.2.2):
    ``H(username ":" OpaqueString(realm) ":" OpaqueString(password))`` with H = MD5 (16 bytes)
    or SHA-256 (32 bytes) as PASSWORD-ALGORITHM selects."""
    text = f"{prepare_username(username)}:{opaque_string(realm)}:{opaque_string(password)}"
    data = text.encode("utf-8")
    if algorithm == PasswordAlgorithm.MD5:
        return hashlib.md5(data, usedforsecurity=False).digest()
    if algorithm == PasswordAlgorithm.SHA256:
        return hashlib.sha256(data).digest()
    raise ValueError(f"unsupported password algorithm {algorithm}")


def userhash(username: str, realm: str) -> bytes:
    """USERHASH value (RFC 8489 §14.4): SHA-256(username ":" OpaqueString(realm))."""
    text = f"{prepare_username(username)}:{opaque_string(realm)}"
    return hashlib.sha256(text.encode("utf-8")).digest()
