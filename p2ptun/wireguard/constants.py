"""WireGuard's own constants on top of generic Noise (whitepaper §5.4).

The generic primitives and the handshake state machine are in :mod:`p2ptun.noise`, shared with
the signaling channel; what makes the handshake WireGuard's is here: the protocol name hashed
into the initial chaining key, the prologue, and the labels keying MAC1 and cookie encryption.
"""

from __future__ import annotations

CONSTRUCTION = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"
"""The Noise protocol name WireGuard hashes into its initial chaining key (whitepaper §5.4)."""
IDENTIFIER = b"WireGuard v1 zx2c4 Jason@zx2c4.com"
"""WireGuard's Noise prologue (whitepaper §5.4)."""
LABEL_MAC1 = b"mac1----"
"""Label hashed with the responder's public key to key MAC1 (whitepaper §5.4.4)."""
LABEL_COOKIE = b"cookie--"
"""Label hashed with the responder's public key to key cookie encryption (§5.4.7)."""
MAC_LEN = 16
"""Length of ``MAC(key, input)``, a keyed BLAKE2s digest: MAC1, MAC2 and cookies (§5.4)."""
