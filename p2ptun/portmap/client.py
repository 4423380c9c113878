"""One port mapping on the default gateway, as a sans-I/O state machine.

:class:`PortMapClient` maps the UDP port of our shared socket on the gateway, keeps the lease
and deletes it (docs/ARCHITECTURE.md §5.2: datagrams and ``now`` in; datagrams, events and
``next_wakeup()`` out; the nonce comes from the caller).

- **Probe**: a PCP MAP request (RFC 6887 §11.1) and a NAT-PMP external-address request
  (RFC 6886 §3.2) leave together, so that a NAT-PMP-only gateway costs no extra round trip.
  The gateway is one hop away: both are retransmitted on NAT-PMP's schedule (RFC 6886 §3.1:
  250 ms, doubling) rather than PCP's 3 s initial timeout (RFC 6887 §8.1.1), and the probe
  gives up after :data:`PROBE_TIMEOUT` (the caller then tries UPnP or nothing).
- **PCP first**: a successful MAP response with our nonce makes the mapping. A PCP answer of
  another version (UNSUPP_VERSION, RFC 6887 §9), a PCP error, or silence for
  :data:`PCP_GRACE` after the NAT-PMP server answered moves to NAT-PMP: a UDP mapping request
  (RFC 6886 §3.3).
- **Lease**: renewed at half its lifetime (RFC 6886 §3.3; RFC 6887 §11.2.1 allows 1/2 to 5/8)
  with the same nonce and the external port we hold as the suggestion; retransmitted until the
  lease ends, then :class:`MappingLost` and a new probe. A renewal answered with another
  external address or port is a new :class:`MappingAcquired`.
- **Deletion**: :meth:`release` sends a lifetime-0 request (RFC 6887 §15, same nonce; RFC 6886
  §3.4) and retransmits it a few times unless answered.

Only datagrams from the gateway's port 5351 are read (RFC 6887 §8.3, RFC 6886 §3.1); the rest
is dropped and counted in :attr:`PortMapClient.dropped`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from typing import Literal

from p2ptun.addr import Address
from p2ptun.portmap import natpmp, pcp

#: First retransmission timeout, doubling (RFC 6886 §3.1).
INITIAL_RTO = 0.25
#: A probe nobody answered within this long has failed.
PROBE_TIMEOUT = 2.0
#: Once the NAT-PMP server answered, PCP gets this long more before we take NAT-PMP.
PCP_GRACE = 0.5
#: Lifetime we ask for (RFC 6886 §3.3 recommends two hours).
DEFAULT_LIFETIME = 7200
#: A lease shorter than this is taken as this long: renewals at most every 2 s.
MIN_LEASE = 4
#: Deletion requests sent at most (the first and retransmissions).
RELEASE_TRIES = 3
#: Largest interval between renewal retransmissions.
MAX_RTO = 8.0

Protocol = Literal["pcp", "natpmp"]


class MapState(Enum):
    IDLE = "idle"
    PROBING = "probing"
    REQUESTING = "requesting"
    """NAT-PMP chosen; its mapping request is out."""
    MAPPED = "mapped"
    FAILED = "failed"
    RELEASING = "releasing"
    RELEASED = "released"


@dataclass(frozen=True)
class MappingAcquired:
    """The gateway maps ``external`` to our port (new, or moved on renewal)."""

    protocol: Protocol
    gateway: str
    external: Address
    lifetime: int


@dataclass(frozen=True)
class MappingLost:
    """The mapping we had is gone (lease ended unrenewed, or refused on renewal)."""

    reason: str


@dataclass(frozen=True)
class MappingFailed:
    """No mapping on this gateway: nobody answered, or both protocols refused."""

    reason: str


@dataclass(frozen=True)
class MappingReleased:
    """Our deletion was confirmed, or its retransmissions ran out."""

    confirmed: bool


MappingEvent = MappingAcquired | MappingLost | MappingFailed | MappingReleased


class PortMapClient:
    """Map UDP ``internal_port`` of ``client_ip`` on ``gateway`` (module docstring)."""

    def __init__(
        self,
        gateway: str,
        client_ip: str,
        internal_port: int,
        nonce: bytes,
        *,
        lifetime: int = DEFAULT_LIFETIME,
        use_pcp: bool = True,
        use_natpmp: bool = True,
    ) -> None:
        if len(nonce) != pcp.NONCE_SIZE:
            raise ValueError("the PCP nonce is 12 bytes")
        self.gateway = gateway
        self.server: Address = (gateway, pcp.SERVER_PORT)
        self.client_ip = client_ip
        self.internal_port = internal_port
        self.nonce = bytes(nonce)
        self.lifetime = lifetime
        self.use_pcp = use_pcp
        self.use_natpmp = use_natpmp
        self.state = MapState.IDLE
        self.protocol: Protocol | None = None
        self.external: Address | None = None
        self.dropped = 0
        self._transmits: list[bytes] = []
        self._events: list[MappingEvent] = []
        self._requests: list[bytes] = []  # what a retransmission sends
        self._rto = INITIAL_RTO
        self._retransmit_at = math.inf
        self._deadline = math.inf  # probe give-up, lease end, or last deletion try
        self._renew_at = math.inf
        self._natpmp_ip: str | None = None
        self._pcp_refused: str | None = None
        self._grace_until = math.inf
        self._release_tries = 0

    # -- driving -------------------------------------------------------------------------------

    def start(self, now: float) -> None:
        """Probe the gateway (module docstring)."""
        self.state = MapState.PROBING
        self.protocol = None
        self._natpmp_ip = None
        self._pcp_refused = None if self.use_pcp else "PCP not used"
        self._grace_until = math.inf
        requests = []
        if self.use_pcp:
            requests.append(self._pcp_map(self.lifetime))
        if self.use_natpmp:
            requests.append(natpmp.encode_external_address_request())
        self._send(requests, now)
        self._deadline = now + PROBE_TIMEOUT
        self._renew_at = math.inf

    def release(self, now: float) -> None:
        """Delete the mapping (module docstring); a no-op unless one is held or asked for."""
        if self.state not in (MapState.MAPPED, MapState.REQUESTING, MapState.PROBING):
            self.state = MapState.RELEASED
            return
        if self.protocol == "natpmp":
            requests = [natpmp.encode_map(self.internal_port, 0)]
        elif self.protocol == "pcp" or self.use_pcp:
            requests = [self._pcp_map(0)]
        else:
            self.state = MapState.RELEASED
            return
        self.state = MapState.RELEASING
        self._release_tries = 1
        self._send(requests, now)
        self._deadline = math.inf
        self._renew_at = math.inf

    def handle_datagram(self, data: bytes, source: Address, now: float) -> None:
        if source != self.server or not data:
            self.dropped += 1
            return
        if data[0] == pcp.VERSION:
            self._on_pcp(data, now)
        elif data[0] == natpmp.VERSION and len(data) >= 2 and data[1] & natpmp.RESPONSE_BIT:
            if data[1] & 0x7F == pcp.OPCODE_MAP and self._pcp_pending() and len(data) < 16:
                self._pcp_unsupported(now)  # NAT-PMP's answer to our PCP request (§9)
            else:
                self._on_natpmp(data, now)
        else:
            self.dropped += 1

    def handle_timeout(self, now: float) -> None:
        if self.state is MapState.PROBING and now >= self._grace_until:
            self._take_natpmp(now)
        if self.state is MapState.MAPPED and now >= self._renew_at:
            self._renew_at = math.inf
            self._send([self._renewal()], now)
        if now >= self._deadline:
            self._expire(now)
        elif now >= self._retransmit_at:
            self._retransmit(now)

    def next_wakeup(self) -> float | None:
        wake = min(self._retransmit_at, self._deadline, self._renew_at, self._grace_until)
        return None if wake == math.inf else wake

    def pop_transmits(self) -> list[bytes]:
        """Datagrams for :attr:`server` (the gateway's port 5351), in order."""
        out, self._transmits = self._transmits, []
        return out

    def pop_events(self) -> list[MappingEvent]:
        out, self._events = self._events, []
        return out

    # -- internals -----------------------------------------------------------------------------

    def _pcp_map(self, lifetime: int) -> bytes:
        suggested = self.external if self.protocol == "pcp" else None
        return pcp.encode_map(
            self.nonce,
            self.client_ip,
            self.internal_port,
            lifetime,
            suggested_port=suggested[1] if suggested else 0,
            suggested_ip=suggested[0] if suggested else "0.0.0.0",
        )

    def _renewal(self) -> bytes:
        if self.protocol == "pcp":
            return self._pcp_map(self.lifetime)
        suggested = self.external[1] if self.external else 0
        return natpmp.encode_map(self.internal_port, self.lifetime, suggested)

    def _send(self, requests: list[bytes], now: float) -> None:
        self._requests = requests
        self._transmits.extend(requests)
        self._rto = INITIAL_RTO
        self._retransmit_at = now + self._rto

    def _retransmit(self, now: float) -> None:
        if self.state is MapState.RELEASING:
            if self._release_tries >= RELEASE_TRIES:
                self._released(confirmed=False)
                return
            self._release_tries += 1
        elif self.state is MapState.MAPPED and self._renew_at != math.inf:
            self._retransmit_at = math.inf  # no renewal outstanding
            return
        if self.state is MapState.PROBING and self._pcp_refused is not None:
            requests = [r for r in self._requests if r[0] != pcp.VERSION]
        elif self.state is MapState.PROBING and self._natpmp_ip is not None:
            requests = [r for r in self._requests if r[0] == pcp.VERSION]
        else:
            requests = self._requests
        self._transmits.extend(requests)
        self._rto = min(self._rto * 2, MAX_RTO)
        self._retransmit_at = now + self._rto

    def _expire(self, now: float) -> None:
        state = self.state
        if state in (MapState.PROBING, MapState.REQUESTING):
            reason = self._pcp_refused if self._natpmp_ip is None else None
            if reason is None or reason == "PCP not used":
                reason = f"no PCP or NAT-PMP answer from {self.gateway} within {PROBE_TIMEOUT:g} s"
            self._fail(reason)
        elif state is MapState.MAPPED:
            self._events.append(MappingLost(f"lease on {self.gateway} ended unrenewed"))
            self.external = None
            self.start(now)

    def _fail(self, reason: str) -> None:
        self.state = MapState.FAILED
        self._retransmit_at = self._deadline = self._renew_at = self._grace_until = math.inf
        self._events.append(MappingFailed(reason))

    def _released(self, *, confirmed: bool) -> None:
        self.state = MapState.RELEASED
        self._retransmit_at = self._deadline = math.inf
        self.external = None
        self._events.append(MappingReleased(confirmed))

    def _pcp_pending(self) -> bool:
        return self.state is MapState.PROBING and self._pcp_refused is None

    def _pcp_unsupported(self, now: float) -> None:
        self._pcp_refused = f"{self.gateway} does not speak PCP version {pcp.VERSION}"
        if self._natpmp_ip is not None:
            self._take_natpmp(now)

    def _take_natpmp(self, now: float) -> None:
        """Map with NAT-PMP: the server answered and PCP did not (in time)."""
        self._grace_until = math.inf
        if not self.use_natpmp or self._natpmp_ip is None:
            return
        self.protocol = "natpmp"
        self.state = MapState.REQUESTING
        self._send([natpmp.encode_map(self.internal_port, self.lifetime)], now)
        self._deadline = now + PROBE_TIMEOUT

    def _granted(self, protocol: Protocol, external: Address, lifetime: int, now: float) -> None:
        lease = max(lifetime, MIN_LEASE)
        moved = self.state is not MapState.MAPPED or self.external != external
        self.protocol = protocol
        self.state = MapState.MAPPED
        self.external = external
        self._retransmit_at = self._grace_until = math.inf
        self._deadline = now + lease
        self._renew_at = now + lease / 2
        if moved:
            self._events.append(MappingAcquired(protocol, self.gateway, external, lifetime))

    def _on_pcp(self, data: bytes, now: float) -> None:
        try:
            reply = pcp.decode_map_response(data)
        except pcp.PcpDecodeError:
            self.dropped += 1
            return
        if (
            reply.nonce != self.nonce
            or reply.internal_port != self.internal_port
            or reply.protocol != pcp.PROTOCOL_UDP
        ):
            self.dropped += 1  # not ours (RFC 6887 §11.3: nonce and port must match)
            return
        if self.state is MapState.RELEASING:
            self._released(confirmed=reply.result == pcp.ResultCode.SUCCESS)
            return
        if self.state is MapState.PROBING and self._pcp_refused is None:
            if reply.result == pcp.ResultCode.SUCCESS and reply.lifetime > 0:
                self._granted("pcp", (reply.external_ip, reply.external_port), reply.lifetime, now)
            else:
                self._pcp_refused = f"PCP on {self.gateway}: {_pcp_result(reply.result)}"
                self._take_natpmp(now)
        elif self.state is MapState.MAPPED and self.protocol == "pcp":
            if reply.result == pcp.ResultCode.SUCCESS and reply.lifetime > 0:
                self._granted("pcp", (reply.external_ip, reply.external_port), reply.lifetime, now)
            else:
                self._renewal_refused(f"PCP on {self.gateway}: {_pcp_result(reply.result)}", now)
        else:
            self.dropped += 1

    def _on_natpmp(self, data: bytes, now: float) -> None:
        try:
            reply = natpmp.decode(data)
        except natpmp.NatPmpDecodeError:
            self.dropped += 1
            return
        if isinstance(reply, natpmp.AddressResponse):
            if self.state is MapState.PROBING and reply.result == natpmp.ResultCode.SUCCESS:
                if self._natpmp_ip is None:
                    self._natpmp_ip = reply.external_ip
                    if self._pcp_refused is not None:
                        self._take_natpmp(now)
                    else:
                        self._grace_until = now + PCP_GRACE
            else:
                self.dropped += 1
            return
        if reply.internal_port != self.internal_port and reply.result == 0:
            self.dropped += 1
            return
        if self.state is MapState.RELEASING and self.protocol == "natpmp":
            self._released(confirmed=reply.result == natpmp.ResultCode.SUCCESS)
            return
        external_ip = self._natpmp_ip
        if self.protocol != "natpmp" or external_ip is None:
            self.dropped += 1
            return
        ok = reply.result == natpmp.ResultCode.SUCCESS and reply.lifetime > 0
        if self.state is MapState.REQUESTING:
            if ok:
                self._granted("natpmp", (external_ip, reply.external_port), reply.lifetime, now)
            else:
                self._fail(f"NAT-PMP on {self.gateway}: result {reply.result}")
        elif self.state is MapState.MAPPED:
            if ok:
                self._granted("natpmp", (external_ip, reply.external_port), reply.lifetime, now)
            else:
                self._renewal_refused(f"NAT-PMP on {self.gateway}: result {reply.result}", now)
        else:
            self.dropped += 1

    def _renewal_refused(self, reason: str, now: float) -> None:
        self._events.append(MappingLost(reason))
        self.external = None
        self.protocol = None
        self._fail(reason)


def _pcp_result(code: int) -> str:
    try:
        return pcp.ResultCode(code).name
    except ValueError:
        return f"result {code}"


__all__ = [
    "DEFAULT_LIFETIME",
    "PROBE_TIMEOUT",
    "MapState",
    "MappingAcquired",
    "MappingEvent",
    "MappingFailed",
    "MappingLost",
    "MappingReleased",
    "PortMapClient",
]
