"""The flow table: connection tracking with a fixed capacity and a per-peer share.

A flow is keyed from our side: ``(protocol, local address, remote address, local port,
remote port)``, so that a packet and its reply find the same entry whichever way it opened.
Each flow belongs to the peer whose traffic opened it; a packet of another peer never matches
it. A flow is forgotten after its idle timeout (looked at lazily, and by a small sweep each
time a flow is added), when its peer goes, or to make room:

* a peer holding :attr:`FlowTable.per_peer` flows makes room among its *own* flows;
* a full table takes room from the peer holding the most flows.

Either way the victim is the least recently seen of the holder's :data:`EVICTION_SCAN`
oldest flows (an expired one first). A flood of new flows from one peer therefore only ever
evicts that peer's flows while any other peer holds fewer than it: the others' flows survive.
Every eviction is counted. Memory is bounded by ``capacity`` entries.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Hashable, Iterator
from dataclasses import dataclass

FlowKey = tuple[int, bytes, bytes, int, int]

EVICTION_SCAN = 8
"""Oldest flows of the holder compared to pick a victim (bounded work per new flow)."""
SWEEP_PER_ADD = 2
"""Flows the sweep looks at for each flow added (expired ones are removed, live ones move to
the back): the table's expired entries are reclaimed at the rate new flows arrive."""


class Flow:
    """One tracked flow. ``seen`` is the time of its latest packet (the caller's ``now``
    object is stored as is: refreshing a flow allocates nothing)."""

    __slots__ = ("answered", "inbound", "key", "live", "owner", "rule", "seen", "timeout")

    def __init__(
        self, key: FlowKey, owner: Hashable, now: float, timeout: float, rule: int, inbound: bool
    ) -> None:
        self.key = key
        self.owner = owner
        self.seen = now
        self.timeout = timeout
        self.rule = rule
        """The index of the rule that opened it (in the direction it was opened)."""
        self.inbound = inbound
        """Opened by a packet from the peer (else by one of ours)."""
        self.live = True
        """False once removed from the table (a cached reference sees it)."""
        self.answered = False
        """A packet came the other way (the firewall sets it)."""

    def expired(self, now: float) -> bool:
        return now - self.seen > self.timeout


@dataclass
class FlowCounters:
    added: int = 0
    expired: int = 0
    """Flows removed after their idle timeout."""
    evicted_peer_share: int = 0
    """Flows removed to make room for a new flow of the same peer at its share."""
    evicted_table_full: int = 0
    """Flows removed to make room in a full table (from the peer holding the most)."""


class FlowTable:
    """Tracked flows with at most ``capacity`` entries and ``per_peer`` per peer."""

    def __init__(self, capacity: int, per_peer: int) -> None:
        if not 1 <= per_peer <= capacity:
            raise ValueError("per_peer must be between 1 and capacity")
        self.capacity = capacity
        self.per_peer = per_peer
        self.counters = FlowCounters()
        # OrderedDicts, not dicts: entries leave at the front and join at the back, and a
        # plain dict's iteration would step over every hole left at the front first.
        self._flows: OrderedDict[FlowKey, Flow] = OrderedDict()  # sweep order
        self._by_owner: dict[Hashable, OrderedDict[FlowKey, Flow]] = {}  # creation order

    def __len__(self) -> int:
        return len(self._flows)

    def __iter__(self) -> Iterator[Flow]:
        return iter(list(self._flows.values()))

    def held_by(self, owner: Hashable) -> int:
        flows = self._by_owner.get(owner)
        return 0 if flows is None else len(flows)

    def get(self, key: FlowKey) -> Flow | None:
        return self._flows.get(key)

    def add(
        self, key: FlowKey, owner: Hashable, now: float, timeout: float, rule: int, inbound: bool
    ) -> Flow:
        """Track a new flow (replacing any entry with its key), making room as needed."""
        old = self._flows.get(key)
        if old is not None:
            self.remove(old)
        self._sweep(now, SWEEP_PER_ADD)
        own = self._by_owner.get(owner)
        if own is None:
            own = self._by_owner[owner] = OrderedDict()
        if len(own) >= self.per_peer:
            self._evict_from(own, now, share=True)
        elif len(self._flows) >= self.capacity:
            biggest = max(self._by_owner.values(), key=len)
            self._evict_from(biggest, now, share=False)
        flow = Flow(key, owner, now, timeout, rule, inbound)
        self._flows[key] = flow
        own[key] = flow
        self.counters.added += 1
        return flow

    def remove(self, flow: Flow) -> None:
        if not flow.live:
            return
        flow.live = False
        del self._flows[flow.key]
        own = self._by_owner[flow.owner]
        del own[flow.key]
        if not own:
            del self._by_owner[flow.owner]

    def remove_owner(self, owner: Hashable) -> int:
        """Forget every flow of ``owner`` (a peer that went); returns how many."""
        own = self._by_owner.pop(owner, None)
        if not own:
            return 0
        for key, flow in own.items():
            flow.live = False
            del self._flows[key]
        return len(own)

    def _evict_from(self, flows: OrderedDict[FlowKey, Flow], now: float, *, share: bool) -> None:
        candidates = list(itertools.islice(flows.values(), EVICTION_SCAN))
        victim = next((f for f in candidates if f.expired(now)), None)
        if victim is not None:
            self.counters.expired += 1
        else:
            victim = min(candidates, key=lambda f: f.seen)
            if share:
                self.counters.evicted_peer_share += 1
            else:
                self.counters.evicted_table_full += 1
        self.remove(victim)

    def _sweep(self, now: float, budget: int) -> None:
        flows = self._flows
        for flow in list(itertools.islice(flows.values(), budget)):
            if flow.expired(now):
                self.remove(flow)
                self.counters.expired += 1
            else:  # look at it again after the others
                flows.move_to_end(flow.key)

    def sweep(self, now: float, budget: int = 256) -> None:
        """Remove expired flows among the ``budget`` looked at longest ago."""
        self._sweep(now, min(budget, len(self._flows)))
