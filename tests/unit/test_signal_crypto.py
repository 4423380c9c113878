"""The Noise IK signaling channel and the end-to-end seal (Noise K): round trips and every
tampering the rendezvous (or anyone on the path) could try."""

from __future__ import annotations

import itertools
import os
import random

import pytest

from p2ptun.keys import clamp, public_key
from p2ptun.signal.channel import (
    PROLOGUE,
    PROTOCOL_NAME,
    ChannelLimits,
    ChannelState,
    NoiseChannel,
)
from p2ptun.signal.errors import ChannelError, SealError, SignalDecodeError
from p2ptun.signal.frames import Frame, FrameDecoder, FrameType, decode_frame
from p2ptun.signal.seal import (
    OVERHEAD,
    Answer,
    Bye,
    Candidates,
    Offer,
    PeerMessage,
    SealPolicy,
    SignalBox,
    open_sealed,
    seal,
)
from p2ptun.wireguard.constants import CONSTRUCTION, IDENTIFIER

_rand = random.Random(7)


def key() -> bytes:
    return clamp(_rand.randbytes(32))


def rng(n: int) -> bytes:
    return _rand.randbytes(n)


NODE, RV, OTHER = key(), key(), key()


def pair(limits: ChannelLimits | None = None) -> tuple[NoiseChannel, NoiseChannel]:
    client = NoiseChannel.initiator(NODE, public_key(RV), rng, limits)
    server = NoiseChannel.responder(RV, rng, limits)
    response = server.receive_handshake(decode_frame(client.start()))
    assert response is not None
    client.receive_handshake(decode_frame(response))
    return client, server


# -- channel -------------------------------------------------------------------------------


def test_channel_is_distinct_from_wireguard() -> None:
    assert PROTOCOL_NAME == b"Noise_IK_25519_ChaChaPoly_BLAKE2s"
    assert PROTOCOL_NAME != CONSTRUCTION and PROLOGUE != IDENTIFIER


def test_handshake_authenticates_both_sides() -> None:
    client, server = pair()
    assert client.established and server.established
    assert server.remote_static == public_key(NODE)
    assert client.handshake_hash == server.handshake_hash
    for a, b in ((client, server), (server, client)):
        for i in range(3):
            assert b.decrypt(decode_frame(a.encrypt(b"msg %d" % i))) == b"msg %d" % i


def test_wrong_rendezvous_key_is_refused() -> None:
    # The node expects OTHER's key; the real rendezvous RV cannot read message 1.
    client = NoiseChannel.initiator(NODE, public_key(OTHER), rng)
    server = NoiseChannel.responder(RV, rng)
    with pytest.raises(ChannelError):
        server.receive_handshake(decode_frame(client.start()))
    # And an impostor rendezvous (not holding RV) cannot answer a node that expects RV.
    client = NoiseChannel.initiator(NODE, public_key(RV), rng)
    m1 = client.start()
    impostor = NoiseChannel.responder(OTHER, rng)
    with pytest.raises(ChannelError):
        impostor.receive_handshake(decode_frame(m1))


def test_forged_handshake_response_is_refused() -> None:
    client = NoiseChannel.initiator(NODE, public_key(RV), rng)
    server = NoiseChannel.responder(RV, rng)
    response = bytearray(server.receive_handshake(decode_frame(client.start())) or b"")
    response[10] ^= 1
    with pytest.raises(ChannelError):
        client.receive_handshake(decode_frame(bytes(response)))
    assert client.state is ChannelState.CLOSED


def test_replayed_initiation_yields_no_usable_session() -> None:
    client, _server = pair()
    # An attacker replays message 1 to a fresh responder: it answers, but the attacker cannot
    # produce a transport frame the responder accepts (keys depend on the new ephemeral).
    replay_target = NoiseChannel.responder(RV, rng)
    m1 = NoiseChannel.initiator(NODE, public_key(RV), rng).start()
    replay_target.receive_handshake(decode_frame(m1))
    with pytest.raises(ChannelError):
        replay_target.decrypt(decode_frame(client.encrypt(b"register")))


@pytest.mark.parametrize("position", [0, 1, 2, 3, 4, 11, 12, 20, -1])
def test_transport_bit_flips_are_refused(position: int) -> None:
    client, server = pair()
    frame = bytearray(client.encrypt(b"hello rendezvous"))
    frame[position] ^= 0x40
    with pytest.raises((ChannelError, SignalDecodeError)):
        for f in FrameDecoder().feed(bytes(frame)):
            server.decrypt(f)
        raise ChannelError("no frame")


def test_transport_replay_reorder_and_drop_are_refused() -> None:
    client, server = pair()
    f0, f1, f2 = (client.encrypt(b"%d" % i) for i in range(3))
    assert server.decrypt(decode_frame(f0)) == b"0"
    with pytest.raises(ChannelError, match="counter"):
        server.decrypt(decode_frame(f0))  # replay
    client2, server2 = pair()
    g0, g1 = client2.encrypt(b"a"), client2.encrypt(b"b")
    with pytest.raises(ChannelError, match="counter"):
        server2.decrypt(decode_frame(g1))  # reorder / drop
    assert server2.state is ChannelState.CLOSED
    with pytest.raises(ChannelError):
        server2.decrypt(decode_frame(g0))  # closed for good
    del f1, f2


def test_frames_from_another_session_are_refused() -> None:
    a_client, _a_server = pair()
    _b_client, b_server = pair()
    with pytest.raises(ChannelError):
        b_server.decrypt(decode_frame(a_client.encrypt(b"x")))


def test_session_message_bound() -> None:
    client, server = pair(ChannelLimits(max_messages=3))
    for i in range(3):
        server.decrypt(decode_frame(client.encrypt(b"%d" % i)))
    with pytest.raises(ChannelError, match="limit"):
        client.encrypt(b"one too many")


def test_out_of_turn_frames() -> None:
    _client, server = pair()
    with pytest.raises(ChannelError):
        server.decrypt(Frame(FrameType.HANDSHAKE_INIT, bytes(96)))
    fresh = NoiseChannel.responder(RV, rng)
    with pytest.raises(ChannelError):
        fresh.decrypt(Frame(FrameType.TRANSPORT, bytes(40)))
    fresh = NoiseChannel.responder(RV, rng)
    with pytest.raises(SignalDecodeError):
        fresh.receive_handshake(Frame(FrameType.HANDSHAKE_INIT, bytes(10)))


# -- end-to-end seal -----------------------------------------------------------------------

ALICE, BOB, CAROL = key(), key(), key()
WALL = 1_800_000_000.0


def boxes() -> tuple[SignalBox, SignalBox, SignalBox]:
    peers = {"alice": public_key(ALICE), "bob": public_key(BOB), "carol": public_key(CAROL)}
    alice = SignalBox("alice", ALICE, {k: v for k, v in peers.items() if k != "alice"}, rng)
    bob = SignalBox("bob", BOB, {k: v for k, v in peers.items() if k != "bob"}, rng)
    carol = SignalBox("carol", CAROL, {k: v for k, v in peers.items() if k != "carol"}, rng)
    return alice, bob, carol


def test_seal_round_trip() -> None:
    alice, bob, _ = boxes()
    sequence: list[PeerMessage] = [
        Offer(7, "a=ice-ufrag:abcd\n"),
        Candidates(7, "x"),
        Answer(7, "y"),
        Bye(7, "done"),
    ]
    for i, msg in enumerate(sequence):
        blob = alice.seal("bob", msg, WALL + i)
        assert bob.open("alice", blob, WALL + i) == msg
    assert bob.counters.opened == 4


def test_seal_hides_plaintext_and_is_randomised() -> None:
    alice, _, _ = boxes()
    msg = Offer(1, "a=ice-pwd:verysecretpasswordvalue\n")
    a, b = alice.seal("bob", msg, WALL), alice.seal("bob", msg, WALL)
    assert b"verysecret" not in a and a != b


def test_every_bit_flip_is_refused() -> None:
    alice, bob, _ = boxes()
    blob = alice.seal("bob", Offer(1, "desc"), WALL)
    for i, bit in itertools.product(range(len(blob)), range(8)):
        tampered = bytearray(blob)
        tampered[i] ^= 1 << bit
        with pytest.raises(SealError):
            bob.open("alice", bytes(tampered), WALL)
    assert bob.counters.opened == 0
    assert bob.open("alice", blob, WALL) == Offer(1, "desc")


def test_truncated_and_extended_blobs_are_refused() -> None:
    alice, bob, _ = boxes()
    blob = alice.seal("bob", Offer(1, "desc"), WALL)
    for cut in range(len(blob)):
        with pytest.raises(SealError):
            bob.open("alice", blob[:cut], WALL)
    with pytest.raises(SealError):
        bob.open("alice", blob + b"\0", WALL)
    assert len(blob) == OVERHEAD + 8 + 8 + 1 + 8 + 2 + 4


def test_relabelled_sender_is_refused() -> None:
    # The rendezvous says "from carol" for a blob alice sealed.
    alice, bob, _ = boxes()
    blob = alice.seal("bob", Offer(1, "x"), WALL)
    with pytest.raises(SealError) as err:
        bob.open("carol", blob, WALL)
    assert err.value.reason == "bad_seal"


def test_redirected_to_another_receiver_is_refused() -> None:
    alice, _, carol = boxes()
    blob = alice.seal("bob", Offer(1, "x"), WALL)
    with pytest.raises(SealError):
        carol.open("alice", blob, WALL)


def test_reflected_back_to_sender_is_refused() -> None:
    _alice, bob, _ = boxes()
    blob = bob.seal("alice", Offer(1, "x"), WALL)
    # The rendezvous sends bob's own message back to bob, claiming it came from alice.
    with pytest.raises(SealError):
        bob.open("alice", blob, WALL)


def test_wrong_sender_key_is_refused() -> None:
    # Mallory holds a key of her own and claims to be alice: bob's config names alice's key.
    _, bob, _ = boxes()
    mallory = SignalBox("alice", key(), {"bob": public_key(BOB)}, rng)
    with pytest.raises(SealError) as err:
        bob.open("alice", mallory.seal("bob", Offer(1, "x"), WALL), WALL)
    assert err.value.reason == "bad_seal"


def test_sealed_to_the_wrong_receiver_key_is_refused() -> None:
    # alice's config has a stale key for bob: bob cannot open it.
    alice = SignalBox("alice", ALICE, {"bob": public_key(key())}, rng)
    _, bob, _ = boxes()
    with pytest.raises(SealError):
        bob.open("alice", alice.seal("bob", Offer(1, "x"), WALL), WALL)


def test_swapped_names_in_the_prologue_are_refused() -> None:
    blob = seal(
        b"payload",
        sender_name="alice",
        sender_private=ALICE,
        receiver_name="bob",
        receiver_public=public_key(BOB),
        rng=rng,
    )
    ok = open_sealed(
        blob,
        sender_name="alice",
        sender_public=public_key(ALICE),
        receiver_name="bob",
        receiver_private=BOB,
    )
    assert ok == b"payload"
    for sender_name, receiver_name in (("bob", "alice"), ("alice", "carol"), ("carol", "bob")):
        with pytest.raises(SealError):
            open_sealed(
                blob,
                sender_name=sender_name,
                sender_public=public_key(ALICE),
                receiver_name=receiver_name,
                receiver_private=BOB,
            )


def test_unknown_peer_is_refused() -> None:
    _, bob, _ = boxes()
    stranger = SignalBox("dave", key(), {"bob": public_key(BOB)}, rng)
    with pytest.raises(SealError) as err:
        bob.open("dave", stranger.seal("bob", Offer(1, "x"), WALL), WALL)
    assert err.value.reason == "unknown_peer"


def test_replay_and_reorder_are_refused() -> None:
    alice, bob, _ = boxes()
    first = alice.seal("bob", Offer(1, "a"), WALL)
    second = alice.seal("bob", Candidates(1, "b"), WALL)  # same wall time: counter still grows
    third = alice.seal("bob", Candidates(1, "c"), WALL + 1)
    assert bob.open("alice", first, WALL) == Offer(1, "a")
    with pytest.raises(SealError) as err:
        bob.open("alice", first, WALL)
    assert err.value.reason == "replay"
    assert bob.open("alice", third, WALL + 1) == Candidates(1, "c")
    with pytest.raises(SealError) as err:
        bob.open("alice", second, WALL + 1)  # arrives after a later one: reordered
    assert err.value.reason == "replay"
    assert bob.counters.replay == 2


def test_counter_survives_sender_restart() -> None:
    alice, bob, _ = boxes()
    bob.open("alice", alice.seal("bob", Offer(1, "a"), WALL), WALL)
    restarted_alice, _, _ = boxes()  # forgot its counters; the wall clock moved on
    blob = restarted_alice.seal("bob", Offer(2, "b"), WALL + 0.001)
    assert bob.open("alice", blob, WALL + 0.001) == Offer(2, "b")


def test_stale_and_future_messages_are_refused() -> None:
    alice, _, _ = boxes()
    policy = SealPolicy(max_age=60, max_future=30)
    bob = SignalBox("bob", BOB, {"alice": public_key(ALICE)}, rng, policy)
    old = alice.seal("bob", Offer(1, "a"), WALL - 61)
    future = alice.seal("bob", Offer(2, "a"), WALL + 31)
    # A receiver that restarted (fresh box) still refuses an old capture.
    with pytest.raises(SealError) as err:
        bob.open("alice", old, WALL)
    assert err.value.reason == "stale"
    with pytest.raises(SealError) as err:
        bob.open("alice", future, WALL)
    assert err.value.reason == "stale"
    assert bob.counters.stale == 2


def test_random_keys_never_open() -> None:
    _, bob, _ = boxes()
    for _ in range(20):
        with pytest.raises(SealError):
            bob.open("alice", bytes([1]) + os.urandom(80), WALL)
