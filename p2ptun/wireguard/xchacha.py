"""XChaCha20Poly1305 for cookie replies (whitepaper §5.4.7), built from HChaCha20.

``cryptography`` has ChaCha20Poly1305 but not its extended-nonce variant, so the 24-byte-nonce
AEAD is composed as draft-irtf-cfrg-xchacha-03 §2.3 describes: derive a subkey with HChaCha20
(§2.2) from the key and the first 16 nonce bytes, then run ChaCha20Poly1305 with that subkey and
the nonce ``0x00000000 || nonce[16:24]``. HChaCha20 is a few dozen lines of pure Python; it runs
only for cookie replies, never on the data path.
"""

from __future__ import annotations

import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from p2ptun.noise import NoiseError

XNONCE_LEN = 24
_MASK = 0xFFFFFFFF
_SIGMA = struct.unpack("<4I", b"expand 32-byte k")
_KEY_WORDS = struct.Struct("<8I")
_NONCE_WORDS = struct.Struct("<4I")
_OUT_WORDS = struct.Struct("<8I")


def _rotl(x: int, n: int) -> int:
    return ((x << n) | (x >> (32 - n))) & _MASK


def _quarter_round(s: list[int], a: int, b: int, c: int, d: int) -> None:
    """RFC 8439 §2.1 quarter round on state words ``a, b, c, d``."""
    s[a] = (s[a] + s[b]) & _MASK
    s[d] = _rotl(s[d] ^ s[a], 16)
    s[c] = (s[c] + s[d]) & _MASK
    s[b] = _rotl(s[b] ^ s[c], 12)
    s[a] = (s[a] + s[b]) & _MASK
    s[d] = _rotl(s[d] ^ s[a], 8)
    s[c] = (s[c] + s[d]) & _MASK
    s[b] = _rotl(s[b] ^ s[c], 7)


def hchacha20(key: bytes, nonce16: bytes) -> bytes:
    """HChaCha20 (draft-irtf-cfrg-xchacha §2.2): 32-byte key, 16-byte nonce → 32-byte subkey.

    The ChaCha20 state is set up with the constants, the key and the 16 nonce bytes in place of
    counter and nonce; after 20 rounds (no final addition) words 0–3 and 12–15 are the output.
    """
    if len(key) != 32 or len(nonce16) != 16:
        raise ValueError("HChaCha20 needs a 32-byte key and a 16-byte nonce")
    s = [*_SIGMA, *_KEY_WORDS.unpack(key), *_NONCE_WORDS.unpack(nonce16)]
    for _ in range(10):
        _quarter_round(s, 0, 4, 8, 12)
        _quarter_round(s, 1, 5, 9, 13)
        _quarter_round(s, 2, 6, 10, 14)
        _quarter_round(s, 3, 7, 11, 15)
        _quarter_round(s, 0, 5, 10, 15)
        _quarter_round(s, 1, 6, 11, 12)
        _quarter_round(s, 2, 7, 8, 13)
        _quarter_round(s, 3, 4, 9, 14)
    return _OUT_WORDS.pack(s[0], s[1], s[2], s[3], s[12], s[13], s[14], s[15])


def _split(key: bytes, nonce24: bytes) -> tuple[ChaCha20Poly1305, bytes]:
    if len(nonce24) != XNONCE_LEN:
        raise ValueError("XChaCha20Poly1305 needs a 24-byte nonce")
    subkey = hchacha20(key, nonce24[:16])
    return ChaCha20Poly1305(subkey), b"\0\0\0\0" + nonce24[16:]


def xaead_encrypt(key: bytes, nonce24: bytes, plaintext: bytes, ad: bytes) -> bytes:
    """``XAEAD(key, nonce, plain text, auth text)`` (whitepaper §5.4): XChaCha20Poly1305."""
    aead, n12 = _split(key, nonce24)
    return aead.encrypt(n12, plaintext, ad)


def xaead_decrypt(key: bytes, nonce24: bytes, ciphertext: bytes, ad: bytes) -> bytes:
    """Inverse of :func:`xaead_encrypt`; raises :class:`NoiseError` on a bad tag."""
    aead, n12 = _split(key, nonce24)
    try:
        return aead.decrypt(n12, ciphertext, ad)
    except InvalidTag:
        raise NoiseError("XAEAD authentication failed") from None
