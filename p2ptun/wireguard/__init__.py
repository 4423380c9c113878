"""The WireGuard protocol, sans-I/O: data-plane encryption for p2ptun (docs/ARCHITECTURE.md §2).

Implements the WireGuard whitepaper (J. A. Donenfeld, "WireGuard: Next Generation Kernel
Network Tunnel", revision e2da747): message types 1–4 (§5.4), the
``Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s`` handshake (§5.4.2–5.4.5), MAC1/MAC2 and cookie replies
(§5.3, §5.4.7), TAI64N timestamps, transport keys with 64-bit counters and a replay window
(§5.4.6), rekey and expiry timers (§6) and cryptokey routing (§2).

Entry points: :class:`Device` (our key, the peers, datagram demultiplexing) and :class:`Peer`
(handshake, keypairs, timers, outboxes). The I/O layer owns sockets, the TUN device and the
clock; see :mod:`p2ptun.wireguard.device`.
"""

from p2ptun.noise import NoiseError
from p2ptun.wireguard.device import Device
from p2ptun.wireguard.errors import WireGuardDecodeError
from p2ptun.wireguard.events import (
    Counters,
    Event,
    HandshakeCompleted,
    HandshakeFailed,
    PathQuiet,
    SessionExpired,
)
from p2ptun.wireguard.peer import Peer
from p2ptun.wireguard.routing import AllowedIPs
from p2ptun.wireguard.timers import TimerConfig

__all__ = [
    "AllowedIPs",
    "Counters",
    "Device",
    "Event",
    "HandshakeCompleted",
    "HandshakeFailed",
    "NoiseError",
    "PathQuiet",
    "Peer",
    "SessionExpired",
    "TimerConfig",
    "WireGuardDecodeError",
]
