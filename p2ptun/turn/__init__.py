"""turn package."""

# TURN client (sans-I/O core; the trio shell is p2ptun.turn.transport).
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
