"""L5: a peer's candidates cannot point our connectivity checks at us or our LAN's plumbing.

Remote candidates come from the peer. It could signal loopback, broadcast, multicast,
link-local or this host's own address, and the agent then sent STUN checks there (to a
service on our own host, the broadcast domain, ...). The agent now refuses such candidates,
signalled or learnt from checks, and counts them; a normal candidate still connects.
"""

from __future__ import annotations

import random

import pytest

from p2ptun.ice import AgentConfig, IceAgent, IceCredentials
from p2ptun.ice.candidate import make_host_candidate
from p2ptun.stun import Message, Method

OWN = ("192.0.2.10", 4000)
#: Where a hostile peer points our checks (``OWN[0]`` is this host's own address).
HOSTILE = [
    ("127.0.0.1", 22),
    ("127.0.0.53", 53),
    ("0.0.0.0", 9),
    ("255.255.255.255", 9),
    ("224.0.0.251", 5353),
    ("169.254.169.254", 80),
    (OWN[0], 631),
    ("::1", 22),
    ("fe80::1", 9),
    ("ff02::1", 9),
    ("::ffff:127.0.0.1", 22),
]
GOOD = ("198.51.100.7", 5000)


def run(agent: IceAgent, seconds: float) -> list[tuple[str, int]]:
    """Drive the agent for ``seconds`` of virtual time; where it sent datagrams."""
    sent: list[tuple[str, int]] = []
    now = 0.0
    while now < seconds:
        agent.handle_timeout(now)
        sent.extend(t.remote for t in agent.pop_transmits())
        agent.pop_events()
        wake = agent.next_wakeup()
        now = max(now + 0.01, wake if wake is not None else seconds)
    return sent


@pytest.mark.parametrize("trickle_first", [False, True])
def test_hostile_remote_candidates_get_no_checks(trickle_first: bool) -> None:
    agent = IceAgent(
        IceCredentials("ourufrag", "ourpasswordpasswordpassword"),
        controlling=True,
        rng=random.Random(5),
        config=AgentConfig(connect_timeout=None),
    )
    local = make_host_candidate(OWN, 65535)
    v6 = make_host_candidate(("2001:db8::10", 4000), 65534)
    if not trickle_first:
        agent.add_local_candidate(local, 0.0)
        agent.add_local_candidate(v6, 0.0)
    agent.set_remote_credentials(IceCredentials("peerufrag", "peerpasswordpasswordpassword"), 0.0)
    for i, address in enumerate([*HOSTILE, GOOD]):
        agent.add_remote_candidate(make_host_candidate(address, 1000 - i), 0.0)
    if trickle_first:  # the peer's candidates arrived before ours were gathered
        agent.add_local_candidate(local, 0.0)
        agent.add_local_candidate(v6, 0.0)
    sent = run(agent, 5.0)
    hostile_hits = [a for a in sent if a in HOSTILE]
    refused = getattr(agent.stats, "remote_candidates_forbidden", 0)
    print(
        f"FIGURE L5 (trickle_first={trickle_first}): checks to hostile candidates "
        f"{len(hostile_hits)} of {len(sent)}; refused {refused}"
    )
    assert hostile_hits == []
    assert GOOD in sent
    assert agent.stats.remote_candidates_forbidden >= len(HOSTILE) - (1 if trickle_first else 0)


def test_a_check_from_loopback_teaches_no_candidate() -> None:
    """A check that arrives from a forbidden address (a local process that knows the
    credentials) is answered, but no peer-reflexive candidate is learnt from it."""
    agent = IceAgent(
        IceCredentials("ourufrag", "ourpasswordpasswordpassword"),
        controlling=False,
        rng=random.Random(6),
    )
    agent.add_local_candidate(make_host_candidate(OWN, 65535), 0.0)
    agent.set_remote_credentials(IceCredentials("peerufrag", "peerpasswordpasswordpassword"), 0.0)
    from p2ptun.stun import AttrType, short_term_key

    check = Message.request(Method.BINDING, random.randbytes(12))
    check.add(AttrType.USERNAME, "ourufrag:peerufrag").add(AttrType.PRIORITY, 100)
    check.add(AttrType.ICE_CONTROLLING, 1)
    wire = check.encode(short_term_key("ourpasswordpasswordpassword"), fingerprint=True)
    agent.handle_datagram(wire, OWN, ("127.0.0.1", 5555), 0.0)
    agent.pop_transmits()
    sent = run(agent, 3.0)
    assert ("127.0.0.1", 5555) not in sent
    assert all(c.host != "127.0.0.1" for c in agent.remote_candidates)
