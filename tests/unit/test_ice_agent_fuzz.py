"""Fuzzing the agent's datagram input: random and mutated STUN never raises, only drops and
counts (docs/ARCHITECTURE.md §4). Also an in-memory aioice compatibility smoke test."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2ptun.ice.agent import AgentConfig, IceAgent
from p2ptun.ice.candidate import make_host_candidate
from p2ptun.ice.sdp import IceCredentials
from p2ptun.stun import AttrType, Message, MessageClass, Method, short_term_key
from p2ptun.stun.attributes import KNOWN_ATTRIBUTES

LOCAL = ("10.0.0.1", 4000)
PEER = ("198.51.100.9", 6000)
PEER_CREDS = IceCredentials("peer1", "peerpasswordpeerpassword1")


def make_agent(controlling: bool = False, *, lite: bool = False) -> IceAgent:
    a = IceAgent(
        IceCredentials("aliceu", "alicepasswordpasswordpassword"),
        controlling=controlling,
        rng=random.Random(1),
        lite=lite,
        config=AgentConfig(),
    )
    a.add_local_candidate(make_host_candidate(LOCAL, 65535), 0.0)
    return a


def check_request(
    a: IceAgent,
    remote_ufrag: str,
    *,
    src_port: int = 0,
    controlling: bool = True,
    use_candidate: bool = False,
    tid: bytes | None = None,
    tie_breaker: int = 1,
) -> bytes:
    """A check from the peer to ``a`` as the peer would send it."""
    tid = tid or bytes([src_port % 256]) * 12
    msg = Message.request(
        Method.BINDING,
        tid,
        [
            (AttrType.USERNAME, f"{a.local_credentials.ufrag}:{remote_ufrag}"),
            (AttrType.PRIORITY, 1853824767),
            (AttrType.ICE_CONTROLLING if controlling else AttrType.ICE_CONTROLLED, tie_breaker),
        ],
    )
    if use_candidate:
        msg.add(AttrType.USE_CANDIDATE)
    return msg.encode(short_term_key(a.local_credentials.pwd), fingerprint=True)


def _connected_agent() -> IceAgent:
    a = make_agent(controlling=True)
    a.set_remote_credentials(PEER_CREDS, 0.0)
    a.add_remote_candidate(make_host_candidate(PEER, 65535), 0.0)
    a.handle_timeout(0.0)
    return a


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_never_raise(data: bytes) -> None:
    a = _connected_agent()
    a.handle_datagram(data, LOCAL, PEER, 1.0)
    a.handle_timeout(1.0)
    assert a.stats.datagrams == 1


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.data())
def test_mutated_checks_and_responses_never_raise(data: st.DataObject) -> None:
    a = _connected_agent()
    sent = a.pop_transmits()
    assert sent
    request = Message.decode(sent[0].data)
    valid_check = check_request(a, "peer1")
    valid_response = request.success([(AttrType.XOR_MAPPED_ADDRESS, ("203.0.113.5", 7000))]).encode(
        short_term_key(PEER_CREDS.pwd), fingerprint=True
    )
    base = bytearray(data.draw(st.sampled_from([valid_check, valid_response])))
    for _ in range(data.draw(st.integers(1, 6))):
        i = data.draw(st.integers(0, len(base) - 1))
        base[i] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        base = base[: data.draw(st.integers(0, len(base)))]
    a.handle_datagram(bytes(base), LOCAL, PEER, 0.5)
    a.handle_timeout(0.5)
    a.pop_transmits()


# Attribute values that decode fine but are semantically odd.
_ODD_ATTRS = st.lists(
    st.one_of(
        st.tuples(st.just(AttrType.PRIORITY), st.integers(0, 2**32 - 1)),
        st.tuples(st.just(AttrType.ICE_CONTROLLING), st.integers(0, 2**64 - 1)),
        st.tuples(st.just(AttrType.ICE_CONTROLLED), st.integers(0, 2**64 - 1)),
        st.tuples(st.just(AttrType.USE_CANDIDATE), st.just(True)),
        st.tuples(
            st.just(AttrType.XOR_MAPPED_ADDRESS),
            st.tuples(
                st.sampled_from(["0.0.0.0", "203.0.113.5", "::", "2001:db8::1"]),
                st.integers(0, 65535),
            ),
        ),
        st.tuples(
            st.integers(0x0000, 0xFFFF).filter(lambda t: t not in KNOWN_ATTRIBUTES),
            st.binary(max_size=8),
        ),
    ),
    max_size=6,
)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    attrs=_ODD_ATTRS,
    klass=st.sampled_from(list(MessageClass)),
    authenticated=st.booleans(),
    our_tid=st.booleans(),
    lite=st.booleans(),
)
def test_authenticated_odd_messages_never_raise(
    attrs: list[tuple[int, object]],
    klass: MessageClass,
    authenticated: bool,
    our_tid: bool,
    lite: bool,
) -> None:
    a = make_agent(lite=lite) if lite else _connected_agent()
    sent = a.pop_transmits()
    tid = Message.decode(sent[0].data).transaction_id if (sent and our_tid) else b"\x07" * 12
    username = [(AttrType.USERNAME, f"{a.local_credentials.ufrag}:peer1")]
    msg = Message(Method.BINDING, klass, tid, username + list(attrs))
    if klass == MessageClass.REQUEST:
        key = short_term_key(a.local_credentials.pwd)
    else:
        key = short_term_key(PEER_CREDS.pwd)
    try:
        wire = msg.encode(key if authenticated else None, fingerprint=True)
    except ValueError:
        return
    a.handle_datagram(wire, LOCAL, PEER, 0.5)
    a.handle_timeout(0.6)
    a.pop_transmits()
    a.pop_events()


def test_unauthenticated_and_malformed_are_counted() -> None:
    a = _connected_agent()
    a.pop_transmits()
    a.handle_datagram(b"\x01\x02garbage", LOCAL, PEER, 0.1)
    assert a.stats.not_stun == 1
    bad = bytearray(check_request(a, "peer1"))
    bad[-1] ^= 0xFF  # breaks FINGERPRINT
    a.handle_datagram(bytes(bad), LOCAL, PEER, 0.1)
    assert a.stats.bad_fingerprint == 1
    wrong_key = Message.request(
        Method.BINDING,
        b"\x09" * 12,
        [
            (AttrType.USERNAME, f"{a.local_credentials.ufrag}:peer1"),
            (AttrType.PRIORITY, 1),
            (AttrType.ICE_CONTROLLED, 1),
        ],
    ).encode(short_term_key("not the password at all"), fingerprint=True)
    a.handle_datagram(wrong_key, LOCAL, PEER, 0.1)
    assert a.stats.unauthenticated == 1
    reply = Message.decode(a.pop_transmits()[-1].data)
    assert reply.message_class == MessageClass.ERROR and reply.error_code is not None
    assert reply.error_code.code == 401


# --- aioice, in memory ----------------------------------------------------------------------


def test_aioice_messages_through_our_agent() -> None:
    aioice_stun = pytest.importorskip("aioice.stun")
    a = make_agent(controlling=False)
    a.set_remote_credentials(PEER_CREDS, 0.0)
    # aioice-built check (as aioice's Connection sends it) → our agent.
    req = aioice_stun.Message(aioice_stun.Method.BINDING, aioice_stun.Class.REQUEST)
    req.attributes["USERNAME"] = f"{a.local_credentials.ufrag}:{PEER_CREDS.ufrag}"
    req.attributes["PRIORITY"] = 1853824767
    req.attributes["ICE-CONTROLLING"] = 0x1234
    req.attributes["USE-CANDIDATE"] = None
    req.add_message_integrity(a.local_credentials.pwd.encode())
    req.add_fingerprint()
    assert a.handle_datagram(bytes(req), LOCAL, PEER, 0.0)
    out = a.pop_transmits()
    assert len(out) == 1 and out[0].remote == PEER and out[0].local == LOCAL
    resp = aioice_stun.parse_message(out[0].data)
    assert resp.message_class == aioice_stun.Class.RESPONSE
    assert resp.transaction_id == req.transaction_id
    assert resp.attributes["XOR-MAPPED-ADDRESS"] == PEER
    # aioice's own integrity check on our response (short-term key = the password).
    assert resp.check_message_integrity(a.local_credentials.pwd.encode())
    # Our triggered check → aioice parses it and answers; we accept aioice's answer.
    a.handle_timeout(0.0)
    checks = a.pop_transmits()
    assert checks, "a triggered check should follow the peer's check"
    ours = aioice_stun.parse_message(checks[0].data)
    assert ours.check_message_integrity(PEER_CREDS.pwd.encode())
    assert ours.attributes["USERNAME"] == f"{PEER_CREDS.ufrag}:{a.local_credentials.ufrag}"
    assert "ICE-CONTROLLED" in ours.attributes and "PRIORITY" in ours.attributes
    answer = aioice_stun.Message(
        aioice_stun.Method.BINDING,
        aioice_stun.Class.RESPONSE,
        transaction_id=ours.transaction_id,
    )
    answer.attributes["XOR-MAPPED-ADDRESS"] = LOCAL
    answer.add_message_integrity(PEER_CREDS.pwd.encode())
    answer.add_fingerprint()
    assert a.handle_datagram(bytes(answer), LOCAL, PEER, 0.05)
    # aioice nominated with USE-CANDIDATE: we are controlled, the pair is now selected.
    sel = a.selected_pair
    assert sel is not None and sel.remote.address == PEER and a.can_send()
