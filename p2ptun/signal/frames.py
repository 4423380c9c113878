"""Signaling frames on the node ↔ rendezvous TCP stream.

Every frame is a 4-byte header and a payload::

    0        1        2                 4
    +--------+--------+-----------------+------------------ - -
    | version|  type  | length (16 bit) | payload (length bytes)
    +--------+--------+-----------------+------------------ - -

``version`` is :data:`VERSION`; ``type`` one of :class:`FrameType`; ``length`` the payload size
in bytes, so a frame is at most 4 + 65535 bytes (the Noise limit of 65535 bytes per message,
Noise spec §3, fits exactly). Handshake frames carry one Noise handshake message; transport
frames carry an 8-byte counter and one AEAD ciphertext (see :mod:`p2ptun.signal.channel`).

:class:`FrameDecoder` buffers at most one frame, so a peer sending garbage costs at most
64 KiB of memory, and it raises only :class:`~p2ptun.signal.errors.SignalDecodeError`.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from p2ptun.signal.errors import SignalDecodeError

VERSION = 1
"""The signaling protocol version carried in every frame."""
HEADER = struct.Struct("!BBH")
HEADER_LEN = HEADER.size
MAX_PAYLOAD = 0xFFFF
"""Largest frame payload: 65535 bytes, the Noise message size limit (Noise spec §3)."""
MAX_FRAME = HEADER_LEN + MAX_PAYLOAD


class FrameType(enum.IntEnum):
    """What a frame carries."""

    #: Noise IK message 1, node → rendezvous.
    HANDSHAKE_INIT = 1
    #: Noise IK message 2, rendezvous → node.
    HANDSHAKE_RESPONSE = 2
    #: Counter + AEAD ciphertext of one protocol message (either direction).
    TRANSPORT = 3
    #: A rendezvous under load asks for a proof before any Diffie-Hellman: a token,
    #: rendezvous → node (see :mod:`p2ptun.signal.channel`).
    HANDSHAKE_RETRY = 4
    #: The node's answer to a retry: its static key, the proof and a fresh message 1.
    HANDSHAKE_INIT_PROOF = 5


_FRAME_TYPES = frozenset(int(t) for t in FrameType)


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded frame. ``header`` is the 4 raw header bytes (authenticated as AD)."""

    type: FrameType
    payload: bytes

    @property
    def header(self) -> bytes:
        return HEADER.pack(VERSION, self.type, len(self.payload))

    def encode(self) -> bytes:
        return encode_frame(self.type, self.payload)


def encode_frame(frame_type: FrameType, payload: bytes) -> bytes:
    """The wire form of a frame; raises ValueError if the payload is too large."""
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"frame payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    return HEADER.pack(VERSION, frame_type, len(payload)) + payload


def decode_header(header: bytes) -> tuple[FrameType, int]:
    """Check a 4-byte header; return the frame type and the payload length."""
    if len(header) != HEADER_LEN:
        raise SignalDecodeError("short frame header")
    version, frame_type, length = HEADER.unpack(header)
    if version != VERSION:
        raise SignalDecodeError(f"unsupported signaling version {version}")
    if frame_type not in _FRAME_TYPES:
        raise SignalDecodeError(f"unknown frame type {frame_type}")
    return FrameType(frame_type), length


def decode_frame(data: bytes) -> Frame:
    """Decode exactly one frame (no trailing bytes)."""
    frame_type, length = decode_header(bytes(data[:HEADER_LEN]))
    if len(data) != HEADER_LEN + length:
        raise SignalDecodeError("frame length does not match its header")
    return Frame(frame_type, bytes(data[HEADER_LEN:]))


class FrameDecoder:
    """Splits a TCP byte stream into frames.

    :meth:`feed` appends bytes and returns the complete frames now available. The buffer never
    holds more than one incomplete frame plus what one :meth:`feed` call added. After an error
    the decoder is poisoned: the stream has lost its framing and the connection must close.
    """

    __slots__ = ("_buf", "_failed", "limit")

    def __init__(self, limit: int = MAX_PAYLOAD) -> None:
        self._buf = bytearray()
        self._failed = False
        #: Largest payload accepted: a header announcing more fails the stream at once, so a
        #: peer that is still shaking hands cannot make the other side buffer 64 KiB.
        self.limit = limit

    @property
    def buffered(self) -> int:
        """Bytes held that do not yet form a complete frame."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[Frame]:
        if self._failed:
            raise SignalDecodeError("frame stream already failed")
        self._buf += data
        frames: list[Frame] = []
        try:
            while len(self._buf) >= HEADER_LEN:
                frame_type, length = decode_header(bytes(self._buf[:HEADER_LEN]))
                if length > self.limit:
                    raise SignalDecodeError(f"frame of {length} bytes exceeds {self.limit} here")
                end = HEADER_LEN + length
                if len(self._buf) < end:
                    break
                frames.append(Frame(frame_type, bytes(self._buf[HEADER_LEN:end])))
                del self._buf[:end]
        except SignalDecodeError:
            self._failed = True
            self._buf.clear()
            raise
        return frames
