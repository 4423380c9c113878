"""WireGuard keys: Curve25519, 32 bytes, written as 44 characters of standard base64.

``p2ptun genkey`` and ``p2ptun pubkey`` produce exactly what ``wg genkey`` and ``wg pubkey``
produce, so keys move freely between the two tools.
"""

from __future__ import annotations

import base64
import binascii
import os

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

KEY_LEN = 32
KEY_B64_LEN = 44


def clamp(secret: bytes) -> bytes:
    """Curve25519 clamping (RFC 7748 §5), as ``wg genkey`` applies it before printing."""
    b = bytearray(secret)
    b[0] &= 248
    b[31] = (b[31] & 127) | 64
    return bytes(b)


def generate_private_key() -> bytes:
    return clamp(os.urandom(KEY_LEN))


def public_key(private: bytes) -> bytes:
    """The X25519 public key for ``private`` (clamping is part of X25519 itself)."""
    key = X25519PrivateKey.from_private_bytes(private)
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def encode_key(key: bytes) -> str:
    return base64.b64encode(key).decode("ascii")


def decode_key(text: str) -> bytes:
    """Decode a base64 key; raises ValueError unless it is exactly 32 bytes in canonical form."""
    text = text.strip()
    if len(text) != KEY_B64_LEN or not text.endswith("="):
        raise ValueError("not a key: expected 44 characters of base64 encoding 32 bytes")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not a key: invalid base64") from None
    if len(raw) != KEY_LEN or encode_key(raw) != text:
        raise ValueError("not a key: expected 44 characters of base64 encoding 32 bytes")
    return raw
