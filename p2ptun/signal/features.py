"""Data-plane features two p2ptun peers agree on, carried in their ICE descriptions.

A node lists what it can do for its peer's packets in one extra attribute line of every
offer, restart and answer it sends::

    a=x-p2ptun-features:partial-csum

RFC 8839 descriptions are extensible the SDP way: a parser ignores attributes it does not
know (:meth:`p2ptun.ice.sdp.IceDescription.parse` does), so an older p2ptun peer reads the
rest of the description as before and simply never lists a feature; a peer that lists none
gets none. The line travels inside the sealed peer message, so only the peer can set it.

Features (each is what the *sender of the line* offers to do):

``partial-csum``
    "I complete TCP checksums you leave partial": the node writes its TUN device with virtio
    headers, so a TCP segment whose checksum field holds the pseudo-header sum is written
    with ``VIRTIO_NET_HDR_F_NEEDS_CSUM`` (see :mod:`p2ptun.net.offload`). Its peer may then
    skip summing each segment's payload. WireGuard's AEAD authenticates every byte of the
    inner packet, so the inner checksum protects nothing the tunnel does not; towards any
    other WireGuard implementation (no signaling) checksums stay complete.

``on-demand``
    "I connect to you only when there is traffic, and close our tunnel after it has been idle":
    a node closes an idle tunnel only when its peer lists this too. A peer that keeps its
    tunnels up would otherwise reconnect at once after every close.

Pure text in, text out: no I/O, bounded by the description's own limits.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

ATTRIBUTE = "x-p2ptun-features"
PARTIAL_CHECKSUMS = "partial-csum"
ON_DEMAND = "on-demand"
KNOWN = frozenset({PARTIAL_CHECKSUMS, ON_DEMAND})
MAX_FEATURES = 16
"""Most feature tags read from one description (the rest are ignored)."""

_TAG = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")
_PREFIX = f"a={ATTRIBUTE}:"


def with_features(description: str, features: Iterable[str]) -> str:
    """``description`` (attribute lines ending in a newline) with the features line added;
    unchanged when ``features`` is empty."""
    tags = sorted(set(features))
    for tag in tags:
        if not _TAG.fullmatch(tag):
            raise ValueError(f"feature tag {tag!r} is not 1-32 of a-z, 0-9 and '-'")
    if not tags:
        return description
    if description and not description.endswith("\n"):
        description += "\n"
    return f"{description}{_PREFIX}{' '.join(tags)}\n"


def features_of(description: str) -> frozenset[str]:
    """The features a peer's description lists (known ones only; malformed tags and a
    malformed line are ignored, as unknown attributes are)."""
    found: set[str] = set()
    for line in description.split("\n"):
        line = line.rstrip("\r")
        if line.startswith("a="):
            line = line[2:]
        name, sep, value = line.partition(":")
        if name != ATTRIBUTE or not sep:
            continue
        for tag in value.split(" ")[:MAX_FEATURES]:
            if tag in KNOWN:
                found.add(tag)
    return frozenset(found)
