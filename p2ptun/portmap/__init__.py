"""Port mapping on the default gateway, sans-I/O: PCP (RFC 6887) and NAT-PMP (RFC 6886).

- :mod:`p2ptun.portmap.pcp`: the PCP MAP request and response (RFC 6887 §7, §11);
- :mod:`p2ptun.portmap.natpmp`: NAT-PMP's external-address and mapping messages (RFC 6886 §3);
- :mod:`p2ptun.portmap.client`: one mapping's life — probe, request, lease, renewal, deletion —
  as a state machine that takes datagrams and ``now`` and returns datagrams, events and its next
  wake-up (docs/ARCHITECTURE.md §5.2). The trio shell is :mod:`p2ptun.net.portmap`.
"""

from p2ptun.portmap import natpmp, pcp
from p2ptun.portmap.client import (
    MappingAcquired,
    MappingEvent,
    MappingFailed,
    MappingLost,
    MappingReleased,
    MapState,
    PortMapClient,
)

__all__ = [
    "MapState",
    "MappingAcquired",
    "MappingEvent",
    "MappingFailed",
    "MappingLost",
    "MappingReleased",
    "PortMapClient",
    "natpmp",
    "pcp",
]
