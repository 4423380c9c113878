"""The sans-I/O TURN client under virtual time: a scripted server answers its requests.

Nothing here opens a socket or sleeps; ``now`` is a plain number the test advances.
"""

from __future__ import annotations

import base64
import itertools
from typing import Any

import pytest

from p2ptun.errors import DecodeError
from p2ptun.stun import (
    AttrType,
    Message,
    MessageClass,
    Method,
    PasswordAlgorithm,
    PasswordAlgorithmValue,
    decode_channel_data,
    encode_channel_data,
    long_term_key,
)
from p2ptun.turn.client import (
    AllocationFailed,
    AllocationLost,
    AllocationRefreshed,
    AllocationState,
    AllocationSucceeded,
    ChannelBindFailed,
    ChannelBound,
    ChannelState,
    Deallocated,
    PeerData,
    PermissionCreated,
    PermissionFailed,
    PermissionState,
    TurnClient,
    TurnStateError,
    refresh_delay,
)

SERVER = ("203.0.113.10", 3478)
RELAYED = ("203.0.113.10", 50000)
MAPPED = ("198.51.100.18", 40000)
PEER = ("198.51.100.34", 7000)
USER, PASSWORD, REALM = "alice", "secret", "lab"
KEY = long_term_key(USER, REALM, PASSWORD)


def counter_random() -> Any:
    counter = itertools.count(1)
    return lambda n: next(counter).to_bytes(n, "big")


def make_client(**kw: Any) -> TurnClient:
    kw.setdefault("random", counter_random())
    return TurnClient(SERVER, USER, PASSWORD, **kw)


def state_of(client: TurnClient) -> AllocationState:
    """The state, read through a call so mypy does not narrow it across steps."""
    return client.state


def sent(client: TurnClient) -> list[Message]:
    return [Message.decode(d) for d in client.pop_transmits()]


def one(client: TurnClient) -> Message:
    msgs = sent(client)
    assert len(msgs) == 1, msgs
    return msgs[0]


def answer(
    client: TurnClient, msg: Message, now: float, key: bytes | None = KEY, **enc: Any
) -> None:
    client.handle_datagram(msg.encode(key, fingerprint=True, **enc), now)


def challenge(request: Message, nonce: str = "nonce-1", **extra: Any) -> Message:
    attrs: list[tuple[int, Any]] = [(AttrType.REALM, REALM), (AttrType.NONCE, nonce)]
    attrs += list(extra.get("attrs", []))
    return request.error(401, attributes=attrs)


def allocate_success(request: Message, lifetime: int = 600) -> Message:
    return request.success(
        [
            (AttrType.XOR_RELAYED_ADDRESS, RELAYED),
            (AttrType.XOR_MAPPED_ADDRESS, MAPPED),
            (AttrType.LIFETIME, lifetime),
        ]
    )


def allocated(now: float = 0.0, lifetime: int = 600, **kw: Any) -> TurnClient:
    """A client that went through 401 -> authenticated Allocate -> success at ``now``."""
    client = make_client(**kw)
    client.allocate(now)
    first = one(client)
    answer(client, challenge(first), now, key=None)
    second = one(client)
    answer(client, allocate_success(second, lifetime), now)
    events = client.pop_events()
    assert isinstance(events[-1], AllocationSucceeded)
    return client


# -- Allocate and authentication (RFC 8656 §7, RFC 8489 §9.2) ------------------------------


def test_allocate_unauthenticated_then_401_then_signed_retry() -> None:
    client = make_client(lifetime=1200)
    client.allocate(0.0)
    assert state_of(client) is AllocationState.ALLOCATING
    first = one(client)
    assert first.method == Method.ALLOCATE and first.message_class is MessageClass.REQUEST
    assert first.requested_transport == 17
    assert first.lifetime == 1200
    assert first.username is None and first.message_integrity is None
    answer(client, challenge(first), 0.1, key=None)

    second = one(client)
    assert second.transaction_id != first.transaction_id
    assert second.username == USER and second.realm == REALM and second.nonce == "nonce-1"
    assert second.requested_transport == 17
    assert second.message_integrity is not None and second.message_integrity_sha256 is None
    assert second.check_integrity(KEY)
    assert second.check_fingerprint()
    answer(client, allocate_success(second), 0.2)

    (event,) = client.pop_events()
    assert event == AllocationSucceeded(RELAYED, MAPPED, 600, (RELAYED,))
    assert state_of(client) is AllocationState.ALLOCATED
    assert client.relayed == RELAYED and client.mapped == MAPPED
    assert client.realm == REALM and client.password_algorithm == PasswordAlgorithm.MD5


def _nonce_with_features(bits: int) -> str:
    return "obMatJos2" + base64.b64encode(bits.to_bytes(3, "big")).decode() + "rest"


def test_sha256_password_algorithm_when_offered() -> None:
    client = make_client()
    client.allocate(0.0)
    first = one(client)
    algorithms = (
        PasswordAlgorithmValue(PasswordAlgorithm.SHA256),
        PasswordAlgorithmValue(PasswordAlgorithm.MD5),
    )
    nonce = _nonce_with_features(1 << 23)
    answer(
        client,
        challenge(first, nonce, attrs=[(AttrType.PASSWORD_ALGORITHMS, algorithms)]),
        0.0,
        key=None,
    )
    second = one(client)
    key256 = long_term_key(USER, REALM, PASSWORD, PasswordAlgorithm.SHA256)
    assert second.password_algorithms == algorithms
    assert second.password_algorithm == PasswordAlgorithmValue(PasswordAlgorithm.SHA256)
    assert second.message_integrity is None
    assert second.message_integrity_sha256 is not None
    assert second.check_integrity(key256)
    # The success must be signed with the SHA-256 key; one signed with the MD5 key is ignored.
    answer(client, allocate_success(second), 0.1, key=KEY, sha1=False, sha256=True)
    assert client.pop_events() == []
    answer(client, allocate_success(second), 0.1, key=key256, sha1=False, sha256=True)
    assert isinstance(client.pop_events()[0], AllocationSucceeded)
    assert client.password_algorithm == PasswordAlgorithm.SHA256


def test_password_algorithms_without_nonce_cookie_stay_md5() -> None:
    client = make_client()
    client.allocate(0.0)
    first = one(client)
    algorithms = (PasswordAlgorithmValue(PasswordAlgorithm.SHA256),)
    answer(
        client,
        challenge(first, "plain-nonce", attrs=[(AttrType.PASSWORD_ALGORITHMS, algorithms)]),
        0.0,
        key=None,
    )
    second = one(client)
    assert second.password_algorithm is None and second.check_integrity(KEY)


def test_stale_nonce_retried_with_new_nonce_then_gives_up() -> None:
    client = make_client()
    client.allocate(0.0)
    answer(client, challenge(one(client)), 0.0, key=None)
    request = one(client)
    for i in range(3):
        answer(client, request.error(438, attributes=[(AttrType.NONCE, f"n{i}")]), 1.0, key=None)
        retry = one(client)
        assert retry.nonce == f"n{i}" and retry.transaction_id != request.transaction_id
        assert retry.check_integrity(KEY)
        request = retry
    answer(client, request.error(438, attributes=[(AttrType.NONCE, "n9")]), 1.0, key=None)
    (event,) = client.pop_events()
    assert isinstance(event, AllocationFailed) and event.code == 438
    assert state_of(client) is AllocationState.FAILED
    assert client.pop_transmits() == []


def test_wrong_password_ends_with_clear_failure() -> None:
    client = make_client()
    client.allocate(0.0)
    answer(client, challenge(one(client)), 0.0, key=None)
    answer(client, challenge(one(client), "nonce-2"), 0.0, key=None)
    (event,) = client.pop_events()
    assert isinstance(event, AllocationFailed) and event.code == 401
    assert "rejected the username or password" in event.reason and "'alice'" in event.reason
    assert SERVER[0] in event.reason
    assert client.pop_transmits() == [] and client.next_wakeup() is None


def test_401_without_realm_fails() -> None:
    client = make_client()
    client.allocate(0.0)
    answer(client, one(client).error(401), 0.0, key=None)
    (event,) = client.pop_events()
    assert isinstance(event, AllocationFailed) and event.code == 401


@pytest.mark.parametrize(
    ("code", "words"),
    [
        (403, "refused"),
        (420, "does not understand"),
        (437, "allocation already exists"),
        (441, "credentials differ"),
        (486, "quota"),
        (508, "capacity"),
        (442, "does not relay UDP"),
    ],
)
@pytest.mark.parametrize("signed", [True, False])
def test_allocate_error_codes_fail_clearly(code: int, words: str, signed: bool) -> None:
    client = make_client()
    client.allocate(0.0)
    answer(client, challenge(one(client)), 0.0, key=None)
    request = one(client)
    answer(client, request.error(code), 0.0, key=KEY if signed else None)
    (event,) = client.pop_events()
    assert isinstance(event, AllocationFailed)
    assert event.code == code
    assert words in event.reason and str(code) in event.reason
    assert "\n" not in event.reason
    assert state_of(client) is AllocationState.FAILED


def test_badly_signed_response_is_ignored() -> None:
    client = make_client()
    client.allocate(0.0)
    answer(client, challenge(one(client)), 0.0, key=None)
    request = one(client)
    answer(client, allocate_success(request), 0.0, key=b"wrong key")
    answer(client, allocate_success(request), 0.0, key=None)  # unsigned success: ignored too
    assert client.pop_events() == []
    assert client.counters.rx_ignored == 2
    assert state_of(client) is AllocationState.ALLOCATING


def test_udp_allocate_retransmits_then_times_out() -> None:
    client = make_client()
    client.allocate(0.0)
    first = one(client)
    times = [0.0]
    now = 0.0
    while (wakeup := client.next_wakeup()) is not None:
        now = wakeup
        client.handle_timeout(now)
        for msg in sent(client):
            assert msg.transaction_id == first.transaction_id
            times.append(now)
    assert times == [0.0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert now == pytest.approx(39.5)
    (event,) = client.pop_events()
    assert isinstance(event, AllocationFailed) and event.code is None
    assert "no response" in event.reason


def test_stream_allocate_sends_once_and_times_out_after_39_5_s() -> None:
    client = make_client(stream=True)
    client.allocate(0.0)
    one(client)
    assert client.next_wakeup() == pytest.approx(39.5)
    client.handle_timeout(39.4)
    assert client.pop_transmits() == [] and client.pop_events() == []
    client.handle_timeout(39.5)
    assert client.pop_transmits() == []
    (event,) = client.pop_events()
    assert isinstance(event, AllocationFailed)


def test_success_without_relayed_address_fails() -> None:
    client = make_client()
    client.allocate(0.0)
    answer(client, challenge(one(client)), 0.0, key=None)
    answer(client, one(client).success([(AttrType.LIFETIME, 600)]), 0.0)
    (event,) = client.pop_events()
    assert isinstance(event, AllocationFailed) and "XOR-RELAYED-ADDRESS" in event.reason


def test_commands_need_an_allocation() -> None:
    client = make_client()
    with pytest.raises(TurnStateError):
        client.send(PEER, b"x", 0.0)
    with pytest.raises(TurnStateError):
        client.create_permission(PEER, 0.0)
    client.allocate(0.0)
    with pytest.raises(TurnStateError):
        client.allocate(0.0)


# -- Refresh (RFC 8656 §8) -----------------------------------------------------------------


def test_refresh_delay() -> None:
    assert refresh_delay(600) == 540
    assert refresh_delay(3600) == 3540
    assert refresh_delay(300) == 240
    assert refresh_delay(10) == 8


def test_refresh_schedule_keeps_allocation_past_its_lifetime() -> None:
    client = allocated(now=100.0, lifetime=600)
    assert client.next_wakeup() == pytest.approx(640.0)
    client.handle_timeout(639.0)
    assert client.pop_transmits() == []
    now = 100.0
    for _ in range(5):  # 5 lifetimes' worth: each refresh at lifetime - 60 s
        now += 540.0
        assert client.next_wakeup() == pytest.approx(now)
        client.handle_timeout(now)
        refresh = one(client)
        assert refresh.method == Method.REFRESH and refresh.check_integrity(KEY)
        assert refresh.username == USER and refresh.nonce == "nonce-1"
        answer(client, refresh.success([(AttrType.LIFETIME, 600)]), now)
        assert client.pop_events() == [AllocationRefreshed(600)]
    assert now > 100.0 + 5 * 600 - 600  # well past the first lifetime's end (700)
    assert state_of(client) is AllocationState.ALLOCATED
    assert client.expires_at == pytest.approx(now + 600)


def test_short_lifetime_refreshes_at_80_percent_and_refresh_interval_caps() -> None:
    client = allocated(lifetime=10)
    assert client.next_wakeup() == pytest.approx(8.0)
    client = allocated(lifetime=600, refresh_interval=20.0)
    assert client.next_wakeup() == pytest.approx(20.0)


def test_refresh_with_stale_nonce_is_retried() -> None:
    client = allocated()
    client.handle_timeout(540.0)
    refresh = one(client)
    answer(client, refresh.error(438, attributes=[(AttrType.NONCE, "fresh")]), 540.1, key=None)
    retry = one(client)
    assert retry.method == Method.REFRESH and retry.nonce == "fresh"
    answer(client, retry.success([(AttrType.LIFETIME, 600)]), 540.2)
    assert client.pop_events() == [AllocationRefreshed(600)]
    # Later requests use the new nonce.
    client.create_permission(PEER, 541.0)
    assert one(client).nonce == "fresh"


def test_refresh_437_loses_the_allocation() -> None:
    client = allocated()
    client.handle_timeout(540.0)
    answer(client, one(client).error(437), 540.0)
    (event,) = client.pop_events()
    assert isinstance(event, AllocationLost) and event.code == 437
    assert state_of(client) is AllocationState.FAILED


def test_unanswered_refreshes_retry_until_the_allocation_expires() -> None:
    client = allocated()
    client.handle_timeout(540.0)
    one(client)
    now = 540.0
    refreshes = 1
    while state_of(client) is AllocationState.ALLOCATED:
        wakeup = client.next_wakeup()
        assert wakeup is not None and wakeup <= 600.0
        now = wakeup
        client.handle_timeout(now)
        refreshes += sum(1 for m in sent(client) if m.method == Method.REFRESH)
    assert now == pytest.approx(600.0)
    assert refreshes > 7  # a second transaction started after the first timed out
    (event,) = client.pop_events()
    assert isinstance(event, AllocationLost) and "expired" in event.reason


def test_close_deallocates_with_lifetime_zero() -> None:
    client = allocated()
    client.close(10.0)
    assert state_of(client) is AllocationState.DEALLOCATING
    request = one(client)
    assert request.method == Method.REFRESH and request.lifetime == 0
    answer(client, request.success([(AttrType.LIFETIME, 0)]), 10.1)
    assert client.pop_events() == [Deallocated()]
    assert state_of(client) is AllocationState.CLOSED
    assert client.next_wakeup() is None


def test_close_without_answer_still_finishes() -> None:
    client = allocated(stream=True)
    client.close(10.0)
    one(client)
    client.handle_timeout(10.0 + 39.5)
    assert client.pop_events() == [Deallocated()]


def test_connection_lost() -> None:
    client = allocated(stream=True)
    client.connection_lost(5.0)
    (event,) = client.pop_events()
    assert isinstance(event, AllocationLost) and "connection closed" in event.reason


# -- Permissions (RFC 8656 §9) and channels (§11) -------------------------------------------


def test_permission_created_and_refreshed_every_240_s() -> None:
    client = allocated()
    client.create_permission(PEER, 1.0)
    request = one(client)
    assert request.method == Method.CREATE_PERMISSION
    assert request.xor_peer_addresses == [(PEER[0], 0)]
    assert request.check_integrity(KEY)
    assert client.permission_state(PEER) is PermissionState.PENDING
    client.create_permission(PEER[0], 1.0)  # already pending: nothing new
    assert client.pop_transmits() == []
    answer(client, request.success(), 1.1)
    assert client.pop_events() == [PermissionCreated(PEER[0])]
    assert client.permission_state(PEER) is PermissionState.INSTALLED
    assert client.next_wakeup() == pytest.approx(241.1)
    client.handle_timeout(241.0)
    assert client.pop_transmits() == []
    # Run an hour, answering every request at once: CreatePermission every 240 s exactly.
    permission_times = []
    while (now := client.next_wakeup()) is not None and now < 3600.0:
        client.handle_timeout(now)
        for m in sent(client):
            if m.method == Method.CREATE_PERMISSION:
                assert m.xor_peer_addresses == [(PEER[0], 0)]
                permission_times.append(now)
            answer(client, m.success([(AttrType.LIFETIME, 600)]), now)
        assert not any(isinstance(e, PermissionCreated) for e in client.pop_events())
    assert permission_times == pytest.approx([1.1 + 240.0 * k for k in range(1, 15)])
    assert client.permission_state(PEER) is PermissionState.INSTALLED


def test_permission_refused_and_permission_lost_to_silence() -> None:
    client = allocated()
    client.create_permission(PEER, 0.0)
    answer(client, one(client).error(403), 0.0)
    (event,) = client.pop_events()
    assert isinstance(event, PermissionFailed) and event.code == 403
    assert client.permission_state(PEER) is None

    client = allocated(refresh_interval=1e9, stream=True)
    client.create_permission(PEER, 0.0)
    answer(client, one(client).success(), 0.0)
    client.pop_events()
    client.handle_timeout(240.0)
    one(client)  # unanswered; over a stream it times out after 39.5 s, then one retry
    client.handle_timeout(279.5)
    one(client)
    client.handle_timeout(300.0)
    (event,) = client.pop_events()
    assert isinstance(event, PermissionFailed) and "expired" in event.reason


def test_channel_bind_refresh_and_data() -> None:
    client = allocated()
    number = client.bind_channel(PEER, 1.0)
    assert number == 0x4000
    assert client.bind_channel(PEER, 1.0) == number
    request = one(client)
    assert request.method == Method.CHANNEL_BIND
    assert request.channel_number == 0x4000 and request.xor_peer_address == PEER
    # Until bound, data goes as a Send indication (and asks for a permission once).
    wire = client.send(PEER, b"early", 1.0)
    indication = Message.decode(wire)
    assert indication.method == Method.SEND and indication.data == b"early"
    assert indication.xor_peer_address == PEER
    permission = one(client)
    assert permission.method == Method.CREATE_PERMISSION
    answer(client, permission.success(), 1.0)
    answer(client, request.success(), 1.1)
    assert client.pop_events() == [PermissionCreated(PEER[0]), ChannelBound(PEER, 0x4000)]
    assert client.channel(PEER) == (0x4000, ChannelState.BOUND)

    assert client.send(PEER, b"abc", 2.0) == encode_channel_data(0x4000, b"abc")
    client.handle_datagram(encode_channel_data(0x4000, b"back"), 2.0)
    client.handle_datagram(encode_channel_data(0x4001, b"nobody"), 2.0)
    assert client.pop_events() == [PeerData(PEER, b"back", 0x4000)]
    assert client.counters.rx_unknown_channel == 1

    # Permission refresh every 240 s, channel refresh every 480 s (ChannelBind again, same
    # number), allocation refresh at 540 s.
    log = []
    while (now := client.next_wakeup()) is not None and now < 1000.0:
        client.handle_timeout(now)
        for m in sent(client):
            log.append((round(now, 1), Method(m.method).name))
            if m.method == Method.CHANNEL_BIND:
                assert m.channel_number == 0x4000 and m.xor_peer_address == PEER
            answer(client, m.success([(AttrType.LIFETIME, 600)]), now)
    assert log == [
        (241.1, "CREATE_PERMISSION"),
        (481.1, "CREATE_PERMISSION"),
        (481.1, "CHANNEL_BIND"),
        (540.0, "REFRESH"),
        (721.1, "CREATE_PERMISSION"),
        (961.1, "CREATE_PERMISSION"),
        (961.1, "CHANNEL_BIND"),
    ]
    assert client.pop_events() == [AllocationRefreshed(600)]


def test_channel_bind_failure_falls_back_to_send_indications() -> None:
    client = allocated()
    client.bind_channel(PEER, 0.0)
    answer(client, one(client).error(400), 0.0)
    (event,) = client.pop_events()
    assert isinstance(event, ChannelBindFailed) and event.channel == 0x4000
    assert client.channel(PEER) is None
    assert Message.decode(client.send(PEER, b"x", 0.0)).method == Method.SEND


def test_channel_numbers_are_distinct() -> None:
    client = allocated()
    numbers = {client.bind_channel(("198.51.100.34", 7000 + i), 0.0) for i in range(50)}
    assert len(numbers) == 50 and min(numbers) == 0x4000


def test_data_indication_and_garbage() -> None:
    client = allocated()
    data = Message.indication(
        Method.DATA, b"\x01" * 12, [(AttrType.XOR_PEER_ADDRESS, PEER), (AttrType.DATA, b"hi")]
    )
    client.handle_datagram(data.encode(), 1.0)
    assert client.pop_events() == [PeerData(PEER, b"hi")]
    with pytest.raises(DecodeError):
        client.handle_datagram(b"\xff" * 30, 1.0)
    with pytest.raises(DecodeError):
        client.handle_datagram(b"\x40\x00\x00\x09abc", 1.0)
    assert state_of(client) is AllocationState.ALLOCATED


# -- streams (TCP/TLS) ------------------------------------------------------------------------


def test_stream_client_pads_channel_data_and_reassembles() -> None:
    client = make_client(stream=True)
    client.allocate(0.0)
    first = one(client)
    wire = challenge(first).encode(fingerprint=True)
    for b in wire:  # one byte at a time
        client.handle_stream_data(bytes([b]), 0.0)
    second = one(client)
    client.handle_stream_data(allocate_success(second).encode(KEY), 0.0)
    client.pop_events()
    client.bind_channel(PEER, 0.0)
    bind = one(client)
    blob = bind.success().encode(KEY) + encode_channel_data(0x4000, b"hello", pad=True)
    blob += encode_channel_data(0x4000, b"!", pad=True)
    client.handle_stream_data(blob[:7], 0.0)
    client.handle_stream_data(blob[7:], 0.0)
    assert client.pop_events() == [
        PermissionCreated(PEER[0]),
        ChannelBound(PEER, 0x4000),
        PeerData(PEER, b"hello", 0x4000),
        PeerData(PEER, b"!", 0x4000),
    ]
    out = client.send(PEER, b"abcde", 0.0)
    assert len(out) == 12 and decode_channel_data(out).data == b"abcde"


def test_stream_client_rejects_datagram_api_misuse() -> None:
    client = make_client()
    with pytest.raises(TurnStateError):
        client.handle_stream_data(b"x", 0.0)


def test_channel_bind_also_refreshes_the_permission() -> None:
    client = allocated(refresh_interval=1e9)
    client.create_permission(PEER, 0.0)
    answer(client, one(client).success(), 0.0)
    client.bind_channel(PEER, 100.0)
    answer(client, one(client).success(), 100.0)
    client.handle_timeout(240.0)
    assert client.pop_transmits() == []  # moved to 100 + 240
    client.handle_timeout(340.0)
    assert [m.method for m in sent(client)] == [Method.CREATE_PERMISSION]
