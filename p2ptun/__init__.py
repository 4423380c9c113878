"""p2ptun: link machines behind NATs into one private LAN.

Each node runs a TUN interface, finds its peers through a rendezvous server, selects a UDP path
with ICE (STUN and TURN) and carries WireGuard-encrypted IP packets over it.
"""

__version__ = "0.1.0"
