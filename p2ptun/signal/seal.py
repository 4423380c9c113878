"""End-to-end sealing of what one node signals to another (offer, answer, candidates, ...).

The rendezvous routes these messages by name but must be unable to read, forge, replay,
reorder or redirect them. Each message is one Noise ``K`` handshake message (Noise spec rev. 34,
§7.4 one-way patterns)::

    K:
      -> s
      <- s
      ...
      -> e, es, ss

over 25519/ChaChaPoly/BLAKE2s (the primitives of :mod:`p2ptun.noise`), with

- protocol name ``Noise_K_25519_ChaChaPoly_BLAKE2s``;
- prologue ``"p2ptun signal seal v1\\0" || len || sender name || len || receiver name``
  (Noise spec §6: both sides must agree on it or decryption fails);
- pre-messages: the sender's static public key (initiator ``s``) and the receiver's
  (responder ``s``), both hashed into ``h`` (§7.1);
- ``es`` encrypts to the receiver's static key (only its holder can open), ``ss``
  authenticates the sender's static key (only the sender or the receiver could have made it,
  so the rendezvous cannot forge; Noise §7.7 source property 1, KCI aside).

So the AEAD's associated data (the handshake hash) binds sender name, receiver name, sender
key and receiver key: a blob the rendezvous redirects to another node, relabels with another
sender name, or reflects back to its sender does not open. The wire form of a sealed blob is
``version (1) || e (32) || ciphertext (plaintext + 16)``.

Replays and reorders are refused inside the plaintext: it starts with a per-(sender, receiver)
``counter`` that must strictly increase, and a ``timestamp`` (sender's wall clock, ms) that must
lie within :attr:`SealPolicy.max_age` / :attr:`SealPolicy.max_future` of the receiver's clock.
The counter is ``max(last + 1, wall-clock µs)``, so it keeps increasing across sender restarts
(like WireGuard's TAI64N). Nodes need clocks within a few minutes of each other (NTP).

What the receiver remembers is a :class:`ReplayRecord`: the highest counter accepted per
(peer name, peer key). The node daemon keeps it in a state file that it writes before it acts
on a message (:mod:`p2ptun.node.sealstate`), and shares it between the signaling clients a
reload replaces. A peer the record does not know yet — the first start, a lost state file, a
peer just added to the config — starts at a floor of the receiver's wall clock (in µs) when
the box was built. So, exactly:

- a sealed message is accepted at most once by a receiver, across restarts and reloads, as
  long as its state file survives (it is written, atomically and synced, before the message
  is acted on; if it cannot be written the box logs it and goes on with what it holds);
- without a record of the peer, nothing the peer sealed before the box was built is
  accepted, unless the sender's clock runs ahead of the receiver's by more than the message's
  age (a replay is then possible only within that skew, and never beyond ``max_future``);
  and a peer whose clock lags the receiver's by δ has its fresh messages refused for the
  first δ seconds after the box is built;
- whatever the record, a message older than ``max_age`` or from further than ``max_future``
  in the receiver's future is refused.

A node accepts signaling only from peers in its own config, opened with the key the config
names for that peer name (:class:`SignalBox`).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from p2ptun.noise import (
    DH_LEN,
    TAG_LEN,
    HandshakePattern,
    HandshakeState,
    NoiseError,
    Rng,
    dh_public,
    protocol_name,
)
from p2ptun.signal.codec import Reader, Writer, check_name
from p2ptun.signal.errors import SealError, SignalDecodeError
from p2ptun.signal.messages import MAX_BLOB, MAX_TEXT

PATTERN_K = HandshakePattern("K", ("s",), ("s",), (("e", "es", "ss"),))
"""Noise ``K`` (spec §7.4): both static keys known in advance, one message."""
PROTOCOL_NAME = protocol_name(PATTERN_K)
SEAL_VERSION = 1
SEAL_LABEL = b"p2ptun signal seal v1\0"
OVERHEAD = 1 + DH_LEN + TAG_LEN
"""Bytes a sealed blob adds to its plaintext."""
_BODY_HEADER = 8 + 8 + 1 + 8 + 2
MAX_DESCRIPTION = 60000
"""Longest description / candidate fragment text one sealed message carries."""
assert OVERHEAD + _BODY_HEADER + MAX_DESCRIPTION <= MAX_BLOB


def _prologue(sender_name: str, receiver_name: str) -> bytes:
    return (
        Writer().raw(SEAL_LABEL).u8(SEAL_VERSION).name(sender_name).name(receiver_name).getvalue()
    )


def seal(
    plaintext: bytes,
    *,
    sender_name: str,
    sender_private: bytes,
    receiver_name: str,
    receiver_public: bytes,
    rng: Rng,
) -> bytes:
    """Seal ``plaintext`` from the sender to the receiver (one Noise K message)."""
    hs = HandshakeState(
        PATTERN_K,
        True,
        rng=rng,
        prologue=_prologue(sender_name, receiver_name),
        s=sender_private,
        rs=receiver_public,
    )
    try:
        message = hs.write_message(plaintext)
    except NoiseError as exc:
        raise SealError("bad_key", f"cannot seal: {exc}") from None
    return bytes((SEAL_VERSION,)) + message


def open_sealed(
    blob: bytes,
    *,
    sender_name: str,
    sender_public: bytes,
    receiver_name: str,
    receiver_private: bytes,
) -> bytes:
    """Open a blob sealed by :func:`seal`; raises SealError unless it authenticates for
    exactly these names and keys."""
    if len(blob) < OVERHEAD or len(blob) > MAX_BLOB:
        raise SealError("malformed", "sealed blob has an impossible length")
    if blob[0] != SEAL_VERSION:
        raise SealError("malformed", f"unknown seal version {blob[0]}")
    hs = HandshakeState(
        PATTERN_K,
        False,
        rng=_no_rng,
        prologue=_prologue(sender_name, receiver_name),
        s=receiver_private,
        rs=sender_public,
    )
    try:
        return hs.read_message(blob[1:])
    except NoiseError:
        raise SealError("bad_seal", "sealed message does not authenticate") from None


def _no_rng(n: int) -> bytes:  # pragma: no cover - the responder of K never generates keys
    raise AssertionError("no randomness needed to open")


# -- the sealed messages ---------------------------------------------------------------------


class SignalKind(enum.IntEnum):
    OFFER = 1
    ANSWER = 2
    CANDIDATES = 3
    RESTART = 4
    BYE = 5
    RELAY_GRANT = 6


@dataclass(frozen=True, slots=True)
class Offer:
    """Start an ICE session: the sender is ICE-controlling (docs/ARCHITECTURE.md §2).

    ``description`` is RFC 8839 attribute text (:class:`p2ptun.ice.sdp.IceDescription`).
    """

    session: int
    description: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class Answer:
    """Accept the offer of ``session``: the sender is ICE-controlled."""

    session: int
    description: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class Candidates:
    """Trickled candidates for ``session`` (an RFC 8840 §9 fragment, ufrag/pwd included)."""

    session: int
    fragment: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class Restart:
    """An ICE restart (RFC 8445 §2.4) of an existing connection: a new offer whose sender
    becomes ICE-controlling; the data-plane session survives."""

    session: int
    description: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class Bye:
    """The sender is closing ``session`` (0: every session)."""

    session: int
    reason: str = ""


@dataclass(frozen=True, slots=True)
class RelayGrant:
    """The sender relays for its peers (a peer relay) and lets the receiver allocate on it:
    the TURN server's ``url`` (RFC 7065) and long-term credentials for the receiver alone,
    in the REST-API form (``username`` is ``expiry:receiver``). Outside any ICE session
    (``session`` is 0); a later grant replaces an earlier one. Only ever sealed: the
    rendezvous cannot read the credentials."""

    url: str
    username: str
    password: str = field(repr=False)
    session: int = 0


PeerMessage = Offer | Answer | Candidates | Restart | Bye | RelayGrant


@dataclass(frozen=True, slots=True)
class SealedBody:
    """What is inside a sealed blob: anti-replay fields and one :data:`PeerMessage`."""

    counter: int
    timestamp_ms: int
    message: PeerMessage


def encode_body(body: SealedBody) -> bytes:
    msg = body.message
    w = Writer().u64(body.counter).u64(body.timestamp_ms)
    if isinstance(msg, Bye):
        text = msg.reason.encode("utf-8")[:MAX_TEXT].decode("utf-8", errors="ignore")
        w.u8(SignalKind.BYE).u64(msg.session).str16(text)
        return w.getvalue()
    if isinstance(msg, RelayGrant):
        for part in (msg.url, msg.username, msg.password):
            if len(part.encode("utf-8")) > MAX_TEXT:
                raise ValueError(f"relay grant field of more than {MAX_TEXT} bytes")
        w.u8(SignalKind.RELAY_GRANT).u64(msg.session)
        w.str16(msg.url).str16(msg.username).str16(msg.password)
        return w.getvalue()
    if isinstance(msg, Offer):
        kind, text = SignalKind.OFFER, msg.description
    elif isinstance(msg, Answer):
        kind, text = SignalKind.ANSWER, msg.description
    elif isinstance(msg, Restart):
        kind, text = SignalKind.RESTART, msg.description
    elif isinstance(msg, Candidates):
        kind, text = SignalKind.CANDIDATES, msg.fragment
    else:  # pragma: no cover - exhaustive
        raise TypeError(f"not a peer message: {msg!r}")
    data = text.encode("utf-8")
    if len(data) > MAX_DESCRIPTION:
        raise ValueError(f"description of {len(data)} bytes exceeds {MAX_DESCRIPTION}")
    w.u8(kind).u64(msg.session).bytes16(data)
    return w.getvalue()


def decode_body(data: bytes) -> SealedBody:
    """Parse an opened plaintext; raises only SignalDecodeError."""
    r = Reader(data)
    counter = r.u64()
    timestamp = r.u64()
    kind = r.u8()
    session = r.u64()
    message: PeerMessage
    if kind == SignalKind.BYE:
        message = Bye(session, r.str16(MAX_TEXT))
    elif kind == SignalKind.RELAY_GRANT:
        url, username, password = r.str16(MAX_TEXT), r.str16(MAX_TEXT), r.str16(MAX_TEXT)
        message = RelayGrant(url, username, password, session)
    elif kind in (SignalKind.OFFER, SignalKind.ANSWER, SignalKind.RESTART, SignalKind.CANDIDATES):
        text = r.str16(MAX_DESCRIPTION)
        if kind == SignalKind.OFFER:
            message = Offer(session, text)
        elif kind == SignalKind.ANSWER:
            message = Answer(session, text)
        elif kind == SignalKind.RESTART:
            message = Restart(session, text)
        else:
            message = Candidates(session, text)
    else:
        raise SignalDecodeError(f"unknown signal kind {kind}")
    r.finish()
    return SealedBody(counter, timestamp, message)


# -- per-node state: counters and the replay guard -------------------------------------------


@dataclass(frozen=True)
class SealPolicy:
    """How far a sealed message's timestamp may be from the receiver's clock."""

    max_age: float = 300.0
    max_future: float = 300.0


@dataclass
class SealCounters:
    """Counters of refused messages, by reason."""

    opened: int = 0
    unknown_peer: int = 0
    bad_seal: int = 0
    replay: int = 0
    stale: int = 0
    malformed: int = 0

    def count(self, reason: str) -> None:
        if hasattr(self, reason) and reason != "opened":
            setattr(self, reason, getattr(self, reason) + 1)
        else:
            self.malformed += 1


class ReplayRecord(Protocol):
    """The highest sealed-message counter accepted from each (peer name, peer key): what
    refuses replays (module docstring). :class:`MemoryReplayRecord` keeps it in memory; the
    node daemon's :class:`p2ptun.node.sealstate.SealStateFile` in a file."""

    def last_counter(self, peer: str, key: bytes) -> int | None:
        """The highest counter accepted (or the floor set) for ``peer`` with ``key``, None if
        there is no record of it."""
        ...

    def record(self, peer: str, key: bytes, counter: int) -> None:
        """Remember ``counter`` for ``peer`` with ``key``; durably, before it returns, for a
        record that must survive restarts."""
        ...


class MemoryReplayRecord:
    """A :class:`ReplayRecord` in a dict: forgets everything when the process ends."""

    def __init__(self) -> None:
        self.counters: dict[tuple[str, bytes], int] = {}

    def last_counter(self, peer: str, key: bytes) -> int | None:
        return self.counters.get((peer, key))

    def record(self, peer: str, key: bytes, counter: int) -> None:
        self.counters[(peer, key)] = counter


class SignalBox:
    """Seals to and opens from this node's configured peers (sans-I/O; the wall clock and
    randomness are passed in).

    ``peers`` maps each configured peer name to the public key the config names for it;
    anything from a name not in it, or that does not open with that key, is refused. A name
    that is not a valid node name raises ValueError here, never later on network input.

    ``replay`` remembers the counters accepted (a fresh :class:`MemoryReplayRecord` by
    default); ``wall`` (the wall clock when the box is built) sets the floor for the peers it
    has no record of: nothing they sealed before then is accepted (module docstring). Without
    ``wall`` there is no floor.
    """

    def __init__(
        self,
        name: str,
        private_key: bytes,
        peers: Mapping[str, bytes],
        rng: Rng,
        policy: SealPolicy | None = None,
        *,
        replay: ReplayRecord | None = None,
        wall: float | None = None,
    ) -> None:
        self.name = check_name(name)
        for peer in peers:
            check_name(peer)
        self._private = private_key
        self.public_key = dh_public(private_key)
        self.peers = dict(peers)
        self.rng = rng
        self.policy = policy or SealPolicy()
        self._send_counter: dict[str, int] = {}
        self.replay: ReplayRecord = replay if replay is not None else MemoryReplayRecord()
        self.counters = SealCounters()
        if wall is not None:
            floor = max(0, int(wall * 1_000_000) - 1)
            for peer, key in self.peers.items():
                if self.replay.last_counter(peer, key) is None:
                    self.replay.record(peer, key, floor)

    def seal(self, peer: str, message: PeerMessage, wall: float) -> bytes:
        """The sealed blob carrying ``message`` to ``peer`` (KeyError if not configured)."""
        key = self.peers[peer]
        counter = max(self._send_counter.get(peer, 0) + 1, int(wall * 1_000_000))
        self._send_counter[peer] = counter
        body = encode_body(SealedBody(counter, max(0, int(wall * 1000)), message))
        return seal(
            body,
            sender_name=self.name,
            sender_private=self._private,
            receiver_name=peer,
            receiver_public=key,
            rng=self.rng,
        )

    def open(self, sender: str, blob: bytes, wall: float) -> PeerMessage:
        """Open a blob the rendezvous says ``sender`` sent; raises SealError (counted)."""
        try:
            return self._open(sender, blob, wall)
        except SealError as exc:
            self.counters.count(exc.reason)
            raise

    def _open(self, sender: str, blob: bytes, wall: float) -> PeerMessage:
        key = self.peers.get(sender)
        if key is None:
            raise SealError("unknown_peer", "signaling from a node not in this config")
        plaintext = open_sealed(
            blob,
            sender_name=sender,
            sender_public=key,
            receiver_name=self.name,
            receiver_private=self._private,
        )
        try:
            body = decode_body(plaintext)
        except SignalDecodeError as exc:
            raise SealError("malformed", f"sealed body does not parse: {exc}") from None
        if body.counter <= (self.replay.last_counter(sender, key) or 0):
            raise SealError("replay", "sealed message replayed or reordered")
        now_ms = wall * 1000
        if body.timestamp_ms < now_ms - self.policy.max_age * 1000:
            raise SealError("stale", "sealed message is too old")
        if body.timestamp_ms > now_ms + self.policy.max_future * 1000:
            raise SealError("stale", "sealed message is from the future")
        self.replay.record(sender, key, body.counter)
        self.counters.opened += 1
        return body.message
