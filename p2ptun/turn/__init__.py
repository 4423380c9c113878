"""turn package."""

# TURN client (sans-I/O core; the node's trio shell is p2ptun.net.turn_relay.TurnRelay).
from p2ptun.turn.client import (
    AllocationFailed,
    AllocationLost,
    AllocationRefreshed,
    AllocationState,
    AllocationSucceeded,
    ChannelBindFailed,
    ChannelBound,
    Deallocated,
    PeerData,
    PermissionCreated,
    PermissionFailed,
    TurnClient,
    TurnEvent,
)

__all__ = [
    "AllocationFailed",
    "AllocationLost",
    "AllocationRefreshed",
    "AllocationState",
    "AllocationSucceeded",
    "ChannelBindFailed",
    "ChannelBound",
    "Deallocated",
    "PeerData",
    "PermissionCreated",
    "PermissionFailed",
    "TurnClient",
    "TurnEvent",
]
