"""The rendezvous' refusal counters by reason: which counter of which part means what (shared
by the metrics endpoint and the map page)."""

from __future__ import annotations

#: The hub's refusals (``ServerCounters`` field -> reason label).
SIGNALING_REFUSALS = {
    "refused_connections": "connection_limit",
    "evicted": "pending_evicted",
    "refused_registrations": "registration",
    "route_offline": "peer_offline",
    "route_not_listed": "peer_not_listed",
    "route_busy": "peer_busy",
    "rate_limited": "rate_limited",
    "watches_refused": "watch_limit",
    "turn_refused": "turn_not_allowed",
    "proofs_refused": "handshake_proof",
}
#: The TURN server's refusals (``TurnServerCounters`` field -> reason label).
TURN_REFUSALS = {
    "integrity_failures": "turn_bad_integrity",
    "wrong_credentials": "turn_wrong_credentials",
    "stale_nonces": "turn_stale_nonce",
    "quota_rejections": "turn_quota",
    "capacity_rejections": "turn_capacity",
    "forbidden_peers": "turn_forbidden_peer",
    "allocation_mismatch": "turn_allocation_mismatch",
    "bad_requests": "turn_bad_request",
    "unauthenticated_rate_limited": "turn_rate_limited",
}
#: The STUN/TURN shell's refusals (``ShellCounters`` field -> reason label).
SHELL_REFUSALS = {
    "connections_rejected": "stream_connection_limit",
    "connections_evicted": "stream_evicted",
    "idle_closed": "stream_idle",
    "tls_handshake_failures": "tls_handshake",
}


__all__ = ["SHELL_REFUSALS", "SIGNALING_REFUSALS", "TURN_REFUSALS"]
