"""Nomination and roles (RFC 8445 §6.1.1, §7.2.5.1, §7.3.1.1, §7.3.1.5, §8.1.1): the policy
the ICE agent (:mod:`p2ptun.ice.agent`) holds.

The agent does the mechanics — sending checks, the USE-CANDIDATE on a nominating check,
selecting a pair, answering 487 — and asks this module *when* and *which*:

- **When the controlling agent nominates** (§8.1.1, regular nomination;
  :meth:`NominationPolicy.step`). It nominates the best valid pair when no higher-priority pair
  may still succeed, or ``nomination_delay`` after the first valid pair at the latest. For a
  relayed best pair: with ``relay_first`` (the node's choice, with renomination) at once — the
  relay carries data from its first valid check and a direct pair that succeeds later is
  renominated; without it every Frozen, Waiting or In-Progress higher pair may still succeed,
  and both sides must have finished gathering: a direct path is worth two seconds. For a direct
  best pair, an In-Progress higher pair is given up once its request went out twice and a
  hold passed since the last send (``direct_hold_rtts`` round trips of the valid pair, at
  least ``direct_hold_min``); the second send comes early, a hold after the first, ahead of
  its RTO. A reachable better pair (same LAN, a public host) answers within a round trip or
  two, usually before the srflx pairs succeed at all; one towards the other site's private
  address never does, and waiting for it used to cost every NATed connect the whole
  ``nomination_delay``. §8.1.1 leaves the stopping rule to the agent; the early re-send is a
  deviation from the RFC 8489 schedule (§14.3 RTO) for these pairs only: one extra request
  per pair, while the transaction's own retransmissions go on unchanged. Frozen or Waiting
  higher pairs (not checked yet: pacing, many candidates) are waited for up to
  ``nomination_delay``. With ``direct_first`` (the node's choice, with renomination) a direct
  best pair is nominated at once as well, and a better one that succeeds later is
  renominated: no hold at all, the first working path carries data.
- **Renomination** (p2ptun-specific): while the nominated pair is relayed, a controlling agent
  with ``renominate`` nominates the best direct valid pair as soon as there is one (the
  agent's "better paths after relaying"); with ``direct_first`` also, while the nominated
  pair is direct, a direct valid pair of higher priority (a host pair on a shared LAN that
  answered after the srflx pair). RFC 8445 §8.1.1 allows one nomination per session; these
  only ever move up — relayed to direct, direct to a better direct — so they cannot flap, and
  a peer that ignores them stays where it is.
- **What nominates a pair** (:meth:`NominationPolicy.peer_nominated`,
  :meth:`NominationPolicy.check_succeeded`): the success of our own nominating check while
  we control; on the controlled side the peer's USE-CANDIDATE (§7.3.1.5), at once on a valid
  pair, else when our own check on the pair succeeds (a peer's aggressive nomination is
  accepted too).
- **Which pair is selected** (:meth:`NominationPolicy.selected`): the highest-priority
  nominated valid pair, for both roles (the controlled agent follows the controlling one's
  choice); lite/lite (§2.5, no checks at all) the highest-priority pair once the peer's
  end-of-candidates arrived (:func:`lite_lite_pair`).
- **Roles**: a full agent facing a lite one controls, a lite agent facing a full one is
  controlled (§6.1.1, :func:`role_facing`); a role conflict in a peer's check is resolved by
  the tie-breakers (§7.3.1.1, :func:`resolve_role_conflict`: a lite agent always gives way),
  a 487 answer to our own check switches our role if the check carried the role we still
  have (§7.2.5.1, :func:`role_after_conflict_response`).

Nothing here sends anything, keeps time or changes a pair other than its nomination flags
(and the lite/lite pair's validity).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from p2ptun.ice.checklist import CheckList, CheckPair, PairState

__all__ = [
    "NominationPlan",
    "NominationPolicy",
    "NominationStep",
    "RoleConflict",
    "lite_lite_pair",
    "resolve_role_conflict",
    "role_after_conflict_response",
    "role_facing",
]


@dataclass(frozen=True)
class NominationPlan:
    """When to nominate the best valid pair, and which higher-priority pairs to re-send."""

    best: CheckPair
    #: Nominate ``best`` at this time (or now, if it has passed).
    nominate_at: float
    #: Re-send the checks of ``hurry`` (higher-priority pairs sent once) from this time.
    hurry_at: float | None
    hurry: list[CheckPair]
    hold: float


@dataclass(frozen=True)
class NominationStep:
    """What the controlling agent does now: nominate ``nominate`` (None: nothing yet), and
    send the requests of the checks in flight on ``resend`` again (ahead of their RTO)."""

    nominate: CheckPair | None = None
    resend: tuple[CheckPair, ...] = ()


_WAIT = NominationStep()


@dataclass(frozen=True)
class NominationPolicy:
    """The controlling agent's regular nomination and renomination, and what nominates and
    selects a pair for either role (module docstring). The values are the agent's
    configuration of the same names."""

    nomination_delay: float
    direct_hold_rtts: float
    direct_hold_min: float
    renominate: bool
    relay_first: bool = False
    direct_first: bool = False

    # -- the controlling agent -------------------------------------------------------------

    def plan(
        self, checklist: CheckList, first_valid_at: float | None, gathered: bool
    ) -> NominationPlan | None:
        """When to nominate the best valid pair, and which higher-priority pairs to re-send
        early; None without a valid pair. ``gathered``: both sides signalled
        end-of-candidates."""
        valid = checklist.valid_pairs()
        if not valid or first_valid_at is None:
            return None
        best = valid[0]
        latest = first_valid_at + self.nomination_delay
        higher = [
            p
            for p in checklist.pairs
            if p.priority > best.priority
            and p.state in (PairState.FROZEN, PairState.WAITING, PairState.IN_PROGRESS)
        ]
        if best.relayed:
            if self.relay_first and self.renominate:
                # Carry data on the relay now; a direct pair that succeeds later is
                # renominated (step), with no new WireGuard handshake.
                return NominationPlan(best, first_valid_at, None, [], 0.0)
            at = first_valid_at if not higher and gathered else latest
            return NominationPlan(best, at, None, [], 0.0)
        if self.direct_first and self.renominate:
            # Carry data on the first direct pair; a better one is renominated (step).
            return NominationPlan(best, first_valid_at, None, [], 0.0)
        hold = self.direct_hold(valid)
        unknown = False
        give_up = first_valid_at
        hurry: list[CheckPair] = []
        hurry_at: float | None = None
        for p in higher:
            if p.state is not PairState.IN_PROGRESS or p.last_sent is None:
                unknown = True  # not checked yet: no telling when it answers
            elif p.sends < 2:
                unknown = True
                hurry.append(p)
                t = p.last_sent + hold
                hurry_at = t if hurry_at is None else min(hurry_at, t)
            else:
                give_up = max(give_up, p.last_sent + hold)
        at = latest if unknown else min(latest, give_up)
        return NominationPlan(best, at, hurry_at, hurry, hold)

    def direct_hold(self, valid: Sequence[CheckPair]) -> float:
        """How long a check towards a pair as good as the valid ones takes to be answered:
        ``direct_hold_rtts`` round trips of the best valid pair (of the slowest one measured
        when its check was retransmitted), at least ``direct_hold_min``."""
        rtt = valid[0].rtt
        if rtt is None:
            rtt = max((p.rtt for p in valid if p.rtt is not None), default=0.0)
        return max(self.direct_hold_min, self.direct_hold_rtts * rtt)

    def step(
        self, checklist: CheckList, first_valid_at: float | None, gathered: bool, now: float
    ) -> NominationStep:
        """What a controlling agent that is not nominating a pair right now does at ``now``:
        regular nomination (§8.1.1) when the plan says so, early re-sends of the checks it
        waits for until then, or the move from a nominated relayed pair to a direct one."""
        valid = checklist.valid_pairs()
        if not valid:
            return _WAIT
        nominated = [p for p in valid if p.nominated]
        if nominated:
            current = nominated[0]
            if self.renominate and current.relayed:
                direct = [p for p in valid if not p.relayed and not p.nominated]
                if direct:
                    return NominationStep(nominate=direct[0])
            elif self.renominate and self.direct_first:
                better = [
                    p
                    for p in valid
                    if not p.relayed and not p.nominated and p.priority > current.priority
                ]
                if better:
                    return NominationStep(nominate=better[0])
            return _WAIT
        plan = self.plan(checklist, first_valid_at, gathered)
        assert plan is not None
        if now >= plan.nominate_at:
            return NominationStep(nominate=plan.best)
        due = [p for p in plan.hurry if p.last_sent is not None and now >= p.last_sent + plan.hold]
        return NominationStep(resend=tuple(due)) if due else _WAIT

    def next_wakeup(
        self, checklist: CheckList, first_valid_at: float | None, gathered: bool
    ) -> float | None:
        """When :meth:`step` may next have something to do for a controlling agent that has
        nominated nothing yet (None: not before an input)."""
        if any(p.nominated for p in checklist.pairs):
            return None
        plan = self.plan(checklist, first_valid_at, gathered)
        if plan is None:
            return None
        if plan.hurry_at is None:
            return plan.nominate_at
        return min(plan.nominate_at, plan.hurry_at)

    # -- what nominates and selects a pair ---------------------------------------------------

    @staticmethod
    def peer_nominated(pair: CheckPair) -> None:
        """The peer's check on ``pair`` carried USE-CANDIDATE and we do not control
        (§7.3.1.5): a valid pair is nominated now, any other once our check on it succeeds."""
        if pair.state is PairState.SUCCEEDED and pair.valid:
            pair.nominated = True
        else:
            pair.nominate_on_success = True

    @staticmethod
    def check_succeeded(
        pair: CheckPair, *, sent_use_candidate: bool, sent_controlling: bool, controlling: bool
    ) -> None:
        """Our check on ``pair`` succeeded: it nominates the pair if it was our nominating
        check, sent while controlling and we still are (§8.1.1), or if the peer nominated the
        pair before it was valid and we are controlled (§7.3.1.5)."""
        if sent_use_candidate and sent_controlling and controlling:
            pair.nominated = True
        if pair.nominate_on_success and not controlling:
            pair.nominated = True

    @staticmethod
    def selected(checklist: CheckList) -> CheckPair | None:
        """The pair to select: the highest-priority nominated valid pair (§8.1.1; the
        controlled agent follows what the controlling one nominated), or None."""
        for pair in checklist.valid_pairs():
            if pair.nominated:
                return pair
        return None


def lite_lite_pair(checklist: CheckList, remote_complete: bool) -> CheckPair | None:
    """Lite/lite (RFC 8445 §2.5): nobody checks, so once the peer's end-of-candidates arrived
    both agents take the highest-priority pair (of the same family) as valid and nominated.
    None until then, or without a pair."""
    if not remote_complete or not checklist.pairs:
        return None
    best = checklist.pairs[0]
    best.state = PairState.SUCCEEDED
    best.valid_local = best.local
    best.nominated = True
    return best


# -- roles ---------------------------------------------------------------------------------------


def role_facing(controlling: bool, *, lite: bool, peer_lite: bool) -> bool:
    """Our role once we know whether the peer is lite (RFC 8445 §6.1.1): a full agent facing a
    lite one controls, a lite agent facing a full one is controlled; otherwise the role stays
    (the offerer controls, docs/ARCHITECTURE.md §2)."""
    if peer_lite and not lite:
        return True
    if lite and not peer_lite:
        return False
    return controlling


class RoleConflict(enum.Enum):
    """How a peer's check that claims our role is answered (RFC 8445 §7.3.1.1)."""

    NONE = "none"
    """No conflict: process the check."""
    SWITCH = "switch"
    """We take the other role, then process the check."""
    REJECT = "reject"
    """Answer 487 (Role Conflict); we keep our role."""


def resolve_role_conflict(
    *,
    controlling: bool,
    lite: bool,
    tie_breaker: int,
    theirs_controlling: int | None,
    theirs_controlled: int | None,
) -> RoleConflict:
    """RFC 8445 §7.3.1.1. ``theirs_controlling`` / ``theirs_controlled`` are the peer's
    ICE-CONTROLLING / ICE-CONTROLLED tie-breakers (None: absent). Both claim the same role:
    the larger tie-breaker keeps controlling (ours wins ties), and a lite agent always gives
    way (it cannot control a full peer)."""
    if controlling and theirs_controlling is not None:
        if not lite and tie_breaker >= theirs_controlling:
            return RoleConflict.REJECT
        return RoleConflict.SWITCH
    if not controlling and theirs_controlled is not None:
        if not lite and tie_breaker >= theirs_controlled:
            return RoleConflict.SWITCH
        return RoleConflict.REJECT
    return RoleConflict.NONE


def role_after_conflict_response(sent_controlling: bool, controlling: bool) -> bool:
    """Our role after a 487 answer to our check (RFC 8445 §7.2.5.1): the other one if the
    check carried the role we still have, else (we switched since) the one we have."""
    return not controlling if sent_controlling == controlling else controlling
