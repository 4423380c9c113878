"""Hard-NAT probing: when ordinary checks found no direct pair, aim checks at the ports a
symmetric NAT is about to use (sans-I/O policy; p2ptun-specific, beyond RFC 8445).

A NAT with address-and-port-dependent mapping (RFC 4787 §4.1, "symmetric") gives every new
destination its own public port, so the server-reflexive candidate its STUN server saw is not
the port the peer's checks come from. When our NAT maps endpoint-independently and filters by
address and port (a port-restricted cone), the peer's checks to our server-reflexive address
are dropped by our NAT until we have sent to *their* port towards us; their NAT drops ours to
the port they advertised. Ordinary ICE then settles on the relay. Two ways through:

- **Port prediction.** A peer that asked two STUN servers (two server addresses or ports)
  advertises two server-reflexive candidates with the same base; when their ports differ by a
  small step the NAT allocates sequentially (RFC 4787 §4.2.2 calls it predictable), and the
  mapping its checks to us got is one of the next few steps. We send a Binding request to each
  predicted port: the one that meets the peer's mapping opens our NAT's filter for it, reaches
  the peer, and the peer answers with a triggered check (RFC 8445 §7.3.1.4) that now gets
  through to us as a peer-reflexive candidate — an ordinary check completes the pair.
- **Birthday probing.** When the step is large or irregular (random allocation) we send to
  random ports of the peer's NAT, a bounded number at a bounded rate: each probe opens our
  filter for one port, and hits when that port is the peer's mapping towards us. With the
  peer holding one mapping towards us, the chance per attempt is about ``probes / 45000``;
  the technique pays only when the peer's side holds many mappings towards us at once.

What this module decides: whether to probe (a relayed pair is selected and carries traffic;
every direct pair towards a server-reflexive candidate of the peer has had ``min_sends``
checks without an answer; our own candidates do not show a symmetric NAT: our probes would
leave through a new mapping of ours the peer's NAT does not know), which addresses, and when
(one probe every ``interval`` seconds, at most ``max_probes`` per ICE generation). The agent
sends them (:meth:`p2ptun.ice.agent.IceAgent.handle_timeout`), the shell only transmits.
Randomness (the birthday ports) comes from the ``rng`` the agent was given.
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from p2ptun.addr import Address, is_ipv6
from p2ptun.ice.candidate import Candidate, CandidateType
from p2ptun.ice.checklist import CheckPair, PairState

#: Ports a NAT hands out: below this are the well-known and registered ranges NATs avoid.
FIRST_DYNAMIC_PORT = 1024


class RandomSource(Protocol):
    def getrandbits(self, k: int, /) -> int: ...


@dataclass(frozen=True)
class HardNatConfig:
    """Bounds of hard-NAT probing (``[ice] hard_nat`` turns it on or off)."""

    #: Predicted ports per server-reflexive group of the peer: steps 1..window after the
    #: highest port seen.
    window: int = 24
    #: A port step above this is not sequential allocation: birthday probing instead.
    max_step: int = 16
    #: How often the prediction window is sent (a probe may meet the peer's mapping before
    #: the peer's own check created it).
    prediction_rounds: int = 3
    #: Random ports probed when the peer's NAT allocates randomly (0: no birthday probing).
    birthday_probes: int = 256
    #: Seconds between two probes (rate limit: 1/interval probes per second).
    interval: float = 0.01
    #: Seconds between prediction rounds.
    round_interval: float = 1.0
    #: Checks each direct pair towards a server-reflexive candidate must have had, unanswered,
    #: before probing starts ("ordinary checks failed").
    min_sends: int = 3
    #: Hard cap on probes per ICE generation.
    max_probes: int = 300

    def __post_init__(self) -> None:
        if self.window < 1 or self.max_step < 1 or self.prediction_rounds < 1:
            raise ValueError("window, max_step and prediction_rounds must be at least 1")
        if self.birthday_probes < 0 or self.max_probes < 0 or self.min_sends < 1:
            raise ValueError("probe budgets must not be negative, min_sends at least 1")
        if self.interval <= 0 or self.round_interval <= 0:
            raise ValueError("probe intervals must be positive")


class Technique(enum.Enum):
    PREDICTION = "prediction"
    BIRTHDAY = "birthday"


@dataclass(frozen=True)
class PeerNat:
    """What the peer's server-reflexive candidates of one base tell about its NAT."""

    host: str
    ports: tuple[int, ...]
    """The distinct public ports, ascending."""
    step: int | None
    """The allocation step (None: fewer than two ports, or irregular)."""

    @property
    def symmetric(self) -> bool:
        return len(self.ports) >= 2

    @property
    def technique(self) -> Technique | None:
        if not self.symmetric:
            return None
        return Technique.PREDICTION if self.step is not None else Technique.BIRTHDAY


#: The candidate extension a port mapping (PCP, NAT-PMP, UPnP) marks its server-reflexive
#: candidate with: its port is the one the gateway granted, not one a STUN server saw.
MAPPED_EXTENSION = "mapped"


def _srflx_groups(candidates: Iterable[Candidate]) -> dict[tuple[object, ...], set[int]]:
    groups: dict[tuple[object, ...], set[int]] = {}
    for cand in candidates:
        mapped = any(name == MAPPED_EXTENSION for name, _value in cand.extensions)
        if cand.type is CandidateType.SRFLX and not mapped:
            key = (cand.host, cand.related_address, cand.related_port)
            groups.setdefault(key, set()).add(cand.port)
    return groups


def classify(candidates: Iterable[Candidate], max_step: int) -> list[PeerNat]:
    """The NAT behind each base of ``candidates``, from its server-reflexive candidates: one
    port for every server (endpoint-independent, or only one server asked), or several
    (endpoint-dependent: symmetric) — with a regular step no larger than ``max_step``
    (sequential allocation) or not."""
    found = []
    for (host, _raddr, _rport), port_set in _srflx_groups(candidates).items():
        ports = tuple(sorted(port_set))
        steps = {b - a for a, b in itertools.pairwise(ports)}
        step = steps.pop() if len(steps) == 1 else None
        if step is not None and step > max_step:
            step = None
        found.append(PeerNat(str(host), ports, step))
    return found


def ordinary_checks_failed(pairs: Sequence[CheckPair], min_sends: int) -> bool:
    """Did ordinary checks fail to find a direct pair? True when there is a direct pair
    towards a server-reflexive candidate, every such pair failed or had ``min_sends`` checks
    unanswered, and no direct pair succeeded."""
    towards_srflx = 0
    for pair in pairs:
        if pair.relayed:
            continue
        if pair.state is PairState.SUCCEEDED:
            return False
        if pair.remote.type is CandidateType.SRFLX:
            towards_srflx += 1
            if pair.state is not PairState.FAILED and pair.sends < min_sends and not pair.retries:
                return False
    return towards_srflx > 0


def probing_bases(local: Sequence[Candidate], ipv6: bool) -> list[Candidate]:
    """The host candidates probes leave from: the bases of our server-reflexive candidates
    of that family (the ones whose NAT mapping the peer knows), else every host candidate
    of the family."""
    hosts = [c for c in local if c.type is CandidateType.HOST and is_ipv6(c.host) == ipv6]
    mapped = {(c.related_address, c.related_port) for c in local if c.type is CandidateType.SRFLX}
    behind = [c for c in hosts if c.address in mapped]
    return behind or hosts


def predicted_ports(nat: PeerNat, window: int) -> list[int]:
    """The ports after the highest one seen, ``window`` steps of the allocation step."""
    assert nat.step is not None
    top = nat.ports[-1]
    return [p for k in range(1, window + 1) if (p := top + k * nat.step) <= 65535]


class HardNatProbing:
    """The plan for one ICE generation: :meth:`start` once ordinary checks failed, then
    :meth:`due` hands out the probes whose time has come, :meth:`next_wakeup` says when."""

    def __init__(self, config: HardNatConfig, rng: RandomSource, generation: int = 0) -> None:
        self.config = config
        self.generation = generation
        self._rng = rng
        self._plan: list[tuple[float, Address]] = []
        self.started_at: float | None = None
        self.technique: Technique | None = None
        self.sent = 0
        self.declined: str | None = None
        """Why probing was not started (None: started, or not decided yet)."""

    @property
    def decided(self) -> bool:
        return self.started_at is not None or self.declined is not None

    def start(
        self, local: Sequence[Candidate], remote: Sequence[Candidate], ipv6: bool, now: float
    ) -> bool:
        """Decide once, after ordinary checks failed: probe the peer's NAT (True) or not."""
        if self.decided:
            return False
        cfg = self.config
        ours = [n for n in classify(local, cfg.max_step) if is_ipv6(n.host) == ipv6]
        if any(n.symmetric for n in ours):
            self.declined = "our NAT maps per destination"
            return False
        theirs = [n for n in classify(remote, cfg.max_step) if is_ipv6(n.host) == ipv6]
        targets: list[Address] = []
        rounds = 1
        for nat in theirs:
            if nat.technique is Technique.PREDICTION:
                self.technique = Technique.PREDICTION
                targets += [(nat.host, p) for p in predicted_ports(nat, cfg.window)]
                rounds = cfg.prediction_rounds
        if not targets:
            random_nats = [n for n in theirs if n.technique is Technique.BIRTHDAY]
            if not random_nats or cfg.birthday_probes == 0:
                self.declined = "the peer's NAT maps independently or is unknown"
                return False
            self.technique = Technique.BIRTHDAY
            host = random_nats[0].host
            known = set(random_nats[0].ports)
            ports: set[int] = set()
            budget = min(cfg.birthday_probes, cfg.max_probes, 65536 - FIRST_DYNAMIC_PORT)
            while len(ports) < budget:
                port = self._rng.getrandbits(16)
                if port >= FIRST_DYNAMIC_PORT and port not in known:
                    ports.add(port)
            targets = [(host, p) for p in sorted(ports)]
        end = now
        for r in range(rounds):
            start = max(end, now + r * cfg.round_interval)
            for i, target in enumerate(targets):
                if len(self._plan) >= cfg.max_probes:
                    break
                self._plan.append((start + i * cfg.interval, target))
            end = start + len(targets) * cfg.interval
        self._plan.reverse()  # pop from the end
        self.started_at = now
        return True

    def due(self, now: float) -> list[Address]:
        """The probes to send at ``now``."""
        out: list[Address] = []
        while self._plan and self._plan[-1][0] <= now:
            out.append(self._plan.pop()[1])
        self.sent += len(out)
        return out

    def next_wakeup(self) -> float | None:
        return self._plan[-1][0] if self._plan else None

    def stop(self) -> None:
        """A direct pair was found (or the generation ended): drop what is left."""
        self._plan.clear()

    @property
    def pending(self) -> int:
        return len(self._plan)
