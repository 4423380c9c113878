"""Why a path is what it is: a pure explanation from the facts an ICE agent holds.

``p2ptun status`` shows, per peer, a line such as ``relay: peer behind symmetric NAT, no port
mapping on either side, no IPv6`` or ``direct (host↔srflx)``. :func:`explain` builds it from
what the node already knows, and nothing else:

- the selected pair (its local candidate is the valid one: what the peer sees, RFC 8445
  §7.2.5.3.2), or none;
- our and the peer's candidates, including the peer-reflexive ones learnt from checks
  (§7.2.5.3.1 for ours, §7.3.1.3 for the peer's);
- the outcome of the direct (non-relayed) pairs of the check list (§6.1.2.6 states).

**Endpoint-dependent mapping** ("symmetric NAT", RFC 4787 §4.1) shows as one public address
with several UDP ports for one base: server-reflexive candidates from different servers that
differ (RFC 5780 §4.3 makes the same test with two server addresses), or a peer-reflexive
candidate — the peer's NAT mapped its check to us to a port it had not seen towards any
server. An endpoint-independent NAT keeps one port per base for every destination, so it
never shows two. Two bases behind one NAT do have two ports: mappings whose bases are known
and differ are never compared. A relayed candidate's mapped address (its ``raddr``, RFC 8839
§5.1) is not compared either: an allocation over TCP or TLS has a TCP mapping, with a port of
its own on any NAT, and a candidate does not say which transport reached its server. It does
tell "no NAT": a host candidate that is also a mapped address (a TURN server saw it
unchanged). A side with a NAT and no reflexive candidate could not reach a STUN server over
UDP (UDP blocked, or none configured): the explanation says so.

**Port mapping** (PCP, NAT-PMP, UPnP) is a candidate property: :func:`port_mapped` reads the
``mapped`` extension attribute a port-mapping gatherer puts on the server-reflexive candidate
it makes (``mapped pcp@10.0.1.1``: the protocol and the gateway; RFC 8839 §5.1 extension
attributes travel with the candidate to the peer), or a ``mapped`` flag that is true. Without
either it reads false: "no port mapping on either side".

Nothing here does I/O or keeps state: the node calls :func:`explain` when it reports status.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from p2ptun.addr import Address
from p2ptun.ice.candidate import Candidate, CandidateType

__all__ = [
    "NatKind",
    "PairOutcome",
    "PathFacts",
    "PathReason",
    "classify_nat",
    "explain",
    "has_ipv6",
    "port_mapped",
]

#: What the candidates tell about a side's NAT: ``none`` (a host address is what servers see),
#: ``symmetric`` (endpoint-dependent mapping), ``nat`` (mapped, endpoint-independent as far as
#: seen), ``unknown`` (no mapped address known).
NatKind = str

_ARROW = "↔"


@dataclass(frozen=True)
class PairOutcome:
    """One check-list pair as far as the explanation cares: its candidates, its state
    (``frozen``, ``waiting``, ``in-progress``, ``succeeded``, ``failed``) and how its last
    check failed (:attr:`p2ptun.ice.checklist.CheckPair.failure`: ``timeout``, ``error 403``,
    ``non-symmetric``, ``invalid response``, ``ceased``), if it did."""

    local: Candidate
    remote: Candidate
    state: str
    failure: str | None = None

    @property
    def relayed(self) -> bool:
        return CandidateType.RELAY in (self.local.type, self.remote.type)


@dataclass(frozen=True)
class PathFacts:
    """Everything :func:`explain` looks at. ``selected`` is ``(local, remote)`` of the
    selected pair (the local one as the peer sees it), or None. ``relay_owners``: the peer
    relays this node knows, by server IP, with the name of the peer that runs each."""

    local_candidates: Sequence[Candidate]
    remote_candidates: Sequence[Candidate]
    pairs: Sequence[PairOutcome] = ()
    selected: tuple[Candidate, Candidate] | None = None
    relay_owners: Mapping[str, str] = field(default_factory=dict)
    #: What hard-NAT probing did this generation (:mod:`p2ptun.ice.hardnat`), e.g.
    #: ``port prediction tried (72 probes)``; None if it did not start.
    hard_nat: str | None = None


@dataclass(frozen=True)
class PathReason:
    """The explanation: one line for people (:attr:`text`) and the facts behind it."""

    text: str
    path: str | None
    local_nat: NatKind
    remote_nat: NatKind
    port_mapping_local: bool
    port_mapping_remote: bool
    ipv6_local: bool
    ipv6_remote: bool
    turn_local: bool
    turn_remote: bool
    direct_pairs: dict[str, int] = field(default_factory=dict)
    #: Failed direct pairs by how they failed (``timeout``, ``error 403``, ...).
    direct_failures: dict[str, int] = field(default_factory=dict)
    relay_server: str | None = None
    #: The peer whose peer relay carries the path, if it is one.
    relay_owner: str | None = None
    #: What hard-NAT probing did (:attr:`PathFacts.hard_nat`).
    hard_nat: str | None = None

    def as_json(self) -> dict[str, Any]:
        """The ``reason_facts`` object of ``p2ptun status --json``."""
        return {
            "local_nat": self.local_nat,
            "remote_nat": self.remote_nat,
            "port_mapping": {"local": self.port_mapping_local, "remote": self.port_mapping_remote},
            "ipv6": {"local": self.ipv6_local, "remote": self.ipv6_remote},
            "turn": {"local": self.turn_local, "remote": self.turn_remote},
            "direct_pairs": dict(self.direct_pairs),
            "direct_failures": dict(self.direct_failures),
            "relay_server": self.relay_server,
            "relay_owner": self.relay_owner,
            "hard_nat": self.hard_nat,
        }


def port_mapped(candidate: Candidate) -> bool:
    """Was this candidate's address obtained by port mapping (PCP, NAT-PMP, UPnP)? The one
    place that reads the mark (module docstring)."""
    if getattr(candidate, "mapped", False) is True:
        return True
    return any(name == "mapped" for name, _ in candidate.extensions)


def _mapping_via(candidate: Candidate) -> str | None:
    """``PCP on 10.0.1.1`` from a ``mapped pcp@10.0.1.1`` extension, if it says that."""
    for name, value in candidate.extensions:
        if name == "mapped":
            protocol, at, gateway = value.partition("@")
            if at and protocol and gateway:
                return f"{protocol.upper()} on {gateway}"
    return None


def _global_ipv6(host: str) -> bool:
    ip = ipaddress.ip_address(host)
    return ip.version == 6 and not ip.is_link_local and not ip.is_loopback


def has_ipv6(candidates: Iterable[Candidate]) -> bool:
    """A host or reflexive IPv6 candidate that can reach beyond the link."""
    return any(_global_ipv6(c.host) for c in candidates if c.type is not CandidateType.RELAY)


@dataclass(frozen=True)
class _Mapping:
    address: Address
    base: Address | None


def _mappings(candidates: Iterable[Candidate]) -> list[_Mapping]:
    """The UDP mappings a NAT gave this side: its reflexive candidates, with their base when
    known."""
    return [
        _Mapping(c.address, c.related)
        for c in candidates
        if c.type in (CandidateType.SRFLX, CandidateType.PRFLX)
    ]


def _relay_mappings(candidates: Iterable[Candidate]) -> set[Address]:
    """The mapped addresses TURN servers saw (relayed candidates' related addresses)."""
    return {
        c.related
        for c in candidates
        if c.type is CandidateType.RELAY and c.related is not None and c.related[1]
    }


def classify_nat(candidates: Sequence[Candidate]) -> NatKind:
    """What one side's candidates say about its NAT (module docstring)."""
    hosts = {c.address for c in candidates if c.type is CandidateType.HOST}
    mappings = _mappings(candidates)
    seen = {m.address for m in mappings} | _relay_mappings(candidates)
    for i, a in enumerate(mappings):
        for b in mappings[i + 1 :]:
            if a.address[0] != b.address[0] or a.address == b.address:
                continue
            if a.base is not None and b.base is not None and a.base != b.base:
                continue  # two bases behind one NAT: two mappings is normal
            return "symmetric"
    if not seen:
        return "unknown"
    if seen <= hosts:
        return "none"
    return "nat"


def _lacks_reflexive(candidates: Sequence[Candidate], nat: NatKind) -> bool:
    """An IPv4 host (IPv6 needs no NAT) not known to be public, without any reflexive
    candidate."""
    if nat == "none":
        return False
    v4_host = any(c.type is CandidateType.HOST and c.ip_version == 4 for c in candidates)
    reflexive = any(c.type in (CandidateType.SRFLX, CandidateType.PRFLX) for c in candidates)
    return v4_host and not reflexive


def _no_reflexive_clause(facts: PathFacts, local: NatKind, remote: NatKind) -> str | None:
    """A side behind a NAT (or unknown) without any reflexive candidate: its UDP never got
    past the NAT to a STUN server (or it has none configured)."""
    here = _lacks_reflexive(facts.local_candidates, local)
    there = _lacks_reflexive(facts.remote_candidates, remote)
    if here and there:
        return "no server-reflexive candidate on either side (UDP blocked?)"
    if here:
        return "no server-reflexive candidate here (UDP blocked?)"
    if there:
        return "no server-reflexive candidate on the peer (UDP blocked there?)"
    return None


def _pairs(n: int) -> str:
    return f"{n} pair" if n == 1 else f"{n} pairs"


def _count_direct(pairs: Iterable[PairOutcome]) -> dict[str, int]:
    counts = {"succeeded": 0, "failed": 0, "pending": 0}
    for p in pairs:
        if p.relayed:
            continue
        if p.state in ("succeeded", "failed"):
            counts[p.state] += 1
        else:
            counts["pending"] += 1
    return counts


def _count_failures(pairs: Iterable[PairOutcome]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for p in pairs:
        if not p.relayed and p.state == "failed":
            why = p.failure or "failed"
            counts[why] = counts.get(why, 0) + 1
    return counts


_FAILURE_WORDS = {"timeout": "no answer", "ceased": "given up"}


def _failed_clause(failures: dict[str, int]) -> str:
    """``direct checks failed (2 pairs: no answer)``, or with several causes
    ``(3 pairs: 2 no answer, 1 error 403)``."""
    total = sum(failures.values())
    words = [(_FAILURE_WORDS.get(k, k), n) for k, n in sorted(failures.items())]
    how = words[0][0] if len(words) == 1 else ", ".join(f"{n} {w}" for w, n in words)
    return f"direct checks failed ({_pairs(total)}: {how})"


def _nat_clause(local: NatKind, remote: NatKind) -> str | None:
    if local == "symmetric" and remote == "symmetric":
        return "both sides behind symmetric NATs"
    if remote == "symmetric":
        return "peer behind symmetric NAT"
    if local == "symmetric":
        return "this node behind symmetric NAT"
    return None


def _mapping_clause(local: bool, remote: bool) -> str:
    if local and remote:
        return "port mapping on both sides"
    if local:
        return "port mapping here only"
    if remote:
        return "port mapping on the peer only"
    return "no port mapping on either side"


def _ipv6_clause(local: bool, remote: bool) -> str:
    if local and remote:
        return "IPv6 on both sides"
    if local:
        return "no IPv6 on the peer"
    if remote:
        return "no IPv6 here"
    return "no IPv6"


def explain(facts: PathFacts) -> PathReason:
    """Why the path is what it is (module docstring), as a :class:`PathReason`."""
    local, remote = facts.local_candidates, facts.remote_candidates
    local_nat, remote_nat = classify_nat(local), classify_nat(remote)
    map_local = any(port_mapped(c) for c in local)
    map_remote = any(port_mapped(c) for c in remote)
    v6_local, v6_remote = has_ipv6(local), has_ipv6(remote)
    turn_local = any(c.type is CandidateType.RELAY for c in local)
    turn_remote = any(c.type is CandidateType.RELAY for c in remote)
    counts = _count_direct(facts.pairs)
    failures = _count_failures(facts.pairs)
    relay_server: str | None = None
    relay_owner: str | None = None

    selected = facts.selected
    if selected is not None and CandidateType.RELAY not in (selected[0].type, selected[1].type):
        ours, theirs = selected
        path: str | None = "direct"
        text = f"direct ({ours.type.value}{_ARROW}{theirs.type.value})"
        extras = []
        if _global_ipv6(theirs.host):
            extras.append("over IPv6")
        if port_mapped(ours) or port_mapped(theirs):
            mapped = ours if port_mapped(ours) else theirs
            side = "here" if mapped is ours else "on the peer"
            via = _mapping_via(mapped)
            extras.append(f"via port mapping {side}" + (f" ({via})" if via else ""))
        if extras:
            text += " " + ", ".join(extras)
    else:
        clauses: list[str] = []
        nat = _nat_clause(local_nat, remote_nat)
        if nat is not None:
            clauses.append(nat)
        blocked = _no_reflexive_clause(facts, local_nat, remote_nat)
        if blocked is not None:
            clauses.append(blocked)
        if counts["pending"]:
            clauses.append(f"direct checks still running ({_pairs(counts['pending'])})")
        if nat is None and counts["failed"]:
            clauses.append(_failed_clause(failures))
        elif nat is None and not counts["pending"] and not counts["succeeded"]:
            clauses.append("no direct pair to check")
        if facts.hard_nat is not None:
            clauses.append(facts.hard_nat)
        clauses.append(_mapping_clause(map_local, map_remote))
        clauses.append(_ipv6_clause(v6_local, v6_remote))
        if selected is not None:
            path = "relay"
            ours, theirs = selected
            if ours.type is CandidateType.RELAY:
                relay_server = ours.host
                whose = "our TURN relay"
            else:
                relay_server = theirs.host
                whose = "the peer's TURN relay"
            relay_owner = facts.relay_owners.get(relay_server)
            if relay_owner is not None:
                whose = f"the peer relay of {relay_owner}"
            clauses.append(f"through {whose} {relay_server}")
            text = "relay: " + ", ".join(clauses)
        else:
            path = None
            if not remote:
                text = "no path yet: no candidates from the peer yet"
            elif counts["pending"]:
                text = "no path yet: " + ", ".join(clauses)
            else:
                if not (turn_local or turn_remote):
                    clauses.append("no TURN relay on either side")
                text = "no path: " + ", ".join(clauses)
    return PathReason(
        text=text,
        path=path,
        local_nat=local_nat,
        remote_nat=remote_nat,
        port_mapping_local=map_local,
        port_mapping_remote=map_remote,
        ipv6_local=v6_local,
        ipv6_remote=v6_remote,
        turn_local=turn_local,
        turn_remote=turn_remote,
        direct_pairs=counts,
        direct_failures=failures,
        relay_server=relay_server,
        relay_owner=relay_owner,
        hard_nat=facts.hard_nat,
    )
