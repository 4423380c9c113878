"""NAT behaviour as data: the translation table of one NAT, without any I/O.

RFC 4787 names the two behaviours that decide whether hole punching works:

- **mapping** (§4.1): which outgoing flows share one public port — every flow from one
  internal address and port (endpoint-independent, EIM), the flows towards one remote
  address (address-dependent, ADM), or only the flows towards one remote address and port
  (address-and-port-dependent, APDM: a "symmetric" NAT);
- **filtering** (§5): which incoming datagrams a mapping lets through — from anyone (EIF),
  from remote addresses it sent to (ADF), or only from the exact remote address and port it
  sent to (APDF).

and how a NAT picks the public port of a new mapping (§4.2.2, port preservation; a
predictable sequence; random), and how long an idle mapping lives (§4.3; Linux conntrack
keeps a one-way UDP flow 30 s and a flow that saw replies 120 s, LAB-NOTES).

:class:`NatTable` is that state for one public address. Its users move the packets: the
discrete-event ICE simulator (``tests/unit/icesim.py``) and the trio in-memory network
(:mod:`p2plab.memnet`) both translate through it, so both simulate the same NATs. Time is
given by the caller (``now``), randomness by an injected :class:`random.Random`.
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass, field

Address = tuple[str, int]


class Mapping(enum.Enum):
    """RFC 4787 §4.1 mapping behaviour."""

    EIM = "endpoint-independent"
    ADM = "address-dependent"
    APDM = "address-and-port-dependent"


class Filtering(enum.Enum):
    """RFC 4787 §5 filtering behaviour."""

    EIF = "endpoint-independent"
    ADF = "address-dependent"
    APDF = "address-and-port-dependent"


class PortAllocation(enum.Enum):
    """How a new mapping's public port is chosen (RFC 4787 §4.2)."""

    PRESERVE = "preserve"
    """Keep the internal port when it is free on the public address (Linux ``masquerade``)."""
    SEQUENTIAL = "sequential"
    """The next port after the last one handed out: predictable."""
    RANDOM = "random"
    """A random free port (Linux ``masquerade fully-random``)."""


@dataclass(frozen=True)
class NatBehaviour:
    """The behaviour of one NAT: mapping, filtering, port choice and idle timeouts."""

    mapping: Mapping
    filtering: Filtering
    allocation: PortAllocation = PortAllocation.PRESERVE
    one_way_timeout: float = 30.0
    """An idle mapping that never saw an incoming datagram is forgotten after this long."""
    two_way_timeout: float = 120.0
    """An idle mapping that let a datagram in is forgotten after this long."""


#: The lab's NAT types by name (the same names as the namespace lab, ``p2plab.natlab``), plus
#: the RFC 4787 terms. ``None``: the host has a public address (no NAT).
NAT_TYPES: dict[str, NatBehaviour | None] = {
    "none": None,
    "public": None,
    "cone": NatBehaviour(Mapping.EIM, Filtering.EIF),
    "full": NatBehaviour(Mapping.EIM, Filtering.EIF),
    "restricted": NatBehaviour(Mapping.EIM, Filtering.ADF),
    "prc": NatBehaviour(Mapping.EIM, Filtering.APDF),
    "port": NatBehaviour(Mapping.EIM, Filtering.APDF),
    "sym": NatBehaviour(Mapping.APDM, Filtering.APDF, PortAllocation.RANDOM),
    "symmetric": NatBehaviour(Mapping.APDM, Filtering.APDF, PortAllocation.RANDOM),
    "sym-seq": NatBehaviour(Mapping.APDM, Filtering.APDF, PortAllocation.SEQUENTIAL),
}


@dataclass
class Binding:
    """One mapping: an internal endpoint's public port, who may answer, and when it expires."""

    internal: Address
    public_port: int
    key: tuple[object, ...]
    allowed: set[object] = field(default_factory=set)
    two_way: bool = False
    expires: float = 0.0


class NatTable:
    """The translation state of one NAT's public address (sans-I/O: ``now`` is given).

    :meth:`outbound` maps an internal source to the public source a datagram leaves with
    (creating or refreshing a binding); :meth:`inbound` says which internal endpoint a
    datagram arriving on a public port goes to, or None when the filtering drops it.
    :meth:`flush` forgets every binding (a router reboot, conntrack flushed); :meth:`renumber`
    moves the NAT to a new public address (and forgets every binding with it).
    """

    FIRST_PORT = 20000
    LAST_PORT = 65535

    def __init__(
        self, public_ip: str, behaviour: NatBehaviour, *, rng: random.Random | None = None
    ) -> None:
        self.public_ip = public_ip
        self.behaviour = behaviour
        self._rng = rng if rng is not None else random.Random(0)
        self._by_key: dict[tuple[object, ...], Binding] = {}
        self._by_port: dict[int, Binding] = {}
        self._next_port = self.FIRST_PORT
        self.expired = 0
        """Bindings forgotten because they idled past their timeout."""

    # -- the two directions ----------------------------------------------------------------

    def outbound(self, src: Address, dst: Address, now: float) -> Address:
        """The public source of a datagram from internal ``src`` to remote ``dst``."""
        key = self._key(src, dst)
        binding = self._by_key.get(key)
        if binding is not None and binding.expires <= now:
            self._forget(binding)
            binding = None
        if binding is None:
            binding = Binding(src, self._allocate(src[1]), key)
            self._by_key[key] = binding
            self._by_port[binding.public_port] = binding
        filtering = self.behaviour.filtering
        if filtering is Filtering.ADF:
            binding.allowed.add(dst[0])
        elif filtering is Filtering.APDF:
            binding.allowed.add(dst)
        self._refresh(binding, now)
        return self.public_ip, binding.public_port

    def inbound(self, src: Address, public_port: int, now: float) -> Address | None:
        """The internal endpoint a datagram from ``src`` to our ``public_port`` goes to, or
        None: no binding (or it expired), or the filtering refuses ``src``."""
        binding = self._by_port.get(public_port)
        if binding is None:
            return None
        if binding.expires <= now:
            self._forget(binding)
            return None
        filtering = self.behaviour.filtering
        if filtering is Filtering.ADF and src[0] not in binding.allowed:
            return None
        if filtering is Filtering.APDF and src not in binding.allowed:
            return None
        binding.two_way = True
        self._refresh(binding, now)
        return binding.internal

    # -- events ----------------------------------------------------------------------------

    def flush(self) -> None:
        """Forget every binding: the next datagrams get new ones (on a port-preserving NAT
        the same port numbers come back, LAB-NOTES)."""
        self._by_key.clear()
        self._by_port.clear()

    def renumber(self, public_ip: str) -> None:
        """The NAT's public address changes; every binding is lost with the old address."""
        self.public_ip = public_ip
        self.flush()

    @property
    def bindings(self) -> int:
        return len(self._by_port)

    # -- internals -------------------------------------------------------------------------

    def _key(self, src: Address, dst: Address) -> tuple[object, ...]:
        mapping = self.behaviour.mapping
        if mapping is Mapping.EIM:
            return (src,)
        if mapping is Mapping.ADM:
            return (src, dst[0])
        return (src, dst)

    def _refresh(self, binding: Binding, now: float) -> None:
        b = self.behaviour
        binding.expires = now + (b.two_way_timeout if binding.two_way else b.one_way_timeout)

    def _allocate(self, internal_port: int) -> int:
        allocation = self.behaviour.allocation
        taken = self._by_port
        if allocation is PortAllocation.PRESERVE and internal_port not in taken:
            return internal_port
        span = self.LAST_PORT - self.FIRST_PORT + 1
        if len(taken) >= span:
            raise RuntimeError(f"NAT {self.public_ip}: no free public port")
        if allocation is PortAllocation.RANDOM:
            while True:
                port = self._rng.randint(self.FIRST_PORT, self.LAST_PORT)
                if port not in taken:
                    return port
        port = self._next_port
        while port in taken:
            port = self.FIRST_PORT + (port + 1 - self.FIRST_PORT) % span
        self._next_port = self.FIRST_PORT + (port + 1 - self.FIRST_PORT) % span
        return port

    def _forget(self, binding: Binding) -> None:
        self.expired += 1
        if self._by_key.get(binding.key) is binding:
            del self._by_key[binding.key]
        if self._by_port.get(binding.public_port) is binding:
            del self._by_port[binding.public_port]
