"""Cutting a TURN-over-TCP/TLS byte stream into messages (RFC 8656 §3.1, §12.5; RFC 8489 §6.2.2).

Over a stream transport the client and server exchange STUN messages and ChannelData messages
back to back on one byte stream. Each frame says how long it is:

- STUN (first two bits ``00``): a 20-byte header whose length field counts the attributes,
  always a multiple of 4 (RFC 8489 §5);
- ChannelData (first byte 0x40-0x4F): a 4-byte header whose length field counts the
  application data, which is padded to a multiple of 4 on streams (RFC 8656 §12.5).

:class:`StreamFramer` accumulates received chunks and returns whole frames. Its buffer never
holds more than one incomplete frame (at most 65,539 bytes, less with a smaller
``max_frame``). A stream that cannot be framed — a first byte that is neither STUN nor
ChannelData, a STUN header without the magic cookie, a length that is not a multiple of 4, a
frame larger than ``max_frame`` — raises :class:`StreamFramingError`; after that the stream is
unusable (there is no way to find the next frame boundary) and the connection must be closed.
"""

from __future__ import annotations

from p2ptun.stun import MAGIC_COOKIE, StunDecodeError

STUN_HEADER = 20
CHANNEL_HEADER = 4
#: The largest frame either kind can describe: a STUN header plus 65,532 bytes of attributes,
#: or a ChannelData header plus 65,535 bytes of data and 1 byte of padding.
MAX_FRAME = CHANNEL_HEADER + 0xFFFF + 1

_COOKIE = MAGIC_COOKIE.to_bytes(4, "big")


class StreamFramingError(StunDecodeError):
    """The byte stream from the TURN server cannot be cut into STUN / ChannelData frames."""


class StreamFramer:
    """Reassemble STUN and ChannelData frames from arbitrary chunks of a byte stream.

    ``feed(chunk)`` returns the frames completed by ``chunk``, in order, each as ``bytes``:
    a STUN message exactly as long as its header says, or a ChannelData message including its
    padding (which :func:`p2ptun.stun.decode_channel_data` accepts). Raises
    :class:`StreamFramingError` on a stream that cannot be framed; every later call raises it
    again.
    """

    __slots__ = ("_buf", "_error", "max_frame")

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        if max_frame < STUN_HEADER:
            raise ValueError("max_frame must hold at least a STUN header")
        self.max_frame = max_frame
        self._buf = bytearray()
        self._error: str | None = None

    @property
    def buffered(self) -> int:
        """Bytes held for a frame not yet complete."""
        return len(self._buf)

    @property
    def broken(self) -> bool:
        """True once the stream was found unframeable."""
        return self._error is not None

    def feed(self, chunk: bytes | bytearray | memoryview) -> list[bytes]:
        """Add ``chunk`` and return every frame now complete."""
        if self._error is not None:
            raise StreamFramingError(self._error)
        buf = self._buf
        buf += chunk
        frames: list[bytes] = []
        start = 0
        end = len(buf)
        while True:
            size = self._frame_size(buf, start, end)
            if size is None or end - start < size:
                break
            frames.append(bytes(buf[start : start + size]))
            start += size
        del buf[:start]
        return frames

    def _frame_size(self, buf: bytearray, start: int, end: int) -> int | None:
        """Size of the frame at ``start``, or None if its header is not complete yet."""
        available = end - start
        if available < 1:
            return None
        first = buf[start]
        if first < 0x40:  # the top two bits of a STUN message are zero (RFC 8489 §5)
            if available < 4:
                return None
            length = (buf[start + 2] << 8) | buf[start + 3]
            if length & 3:
                return self._fail("STUN length is not a multiple of 4")
            if available >= 8 and buf[start + 4 : start + 8] != _COOKIE:
                return self._fail("STUN header without the magic cookie")
            size = STUN_HEADER + length
        elif first <= 0x4F:
            if available < 4:
                return None
            length = (buf[start + 2] << 8) | buf[start + 3]
            size = CHANNEL_HEADER + ((length + 3) & ~3)
        else:
            return self._fail(f"byte 0x{first:02x} starts neither STUN nor ChannelData")
        if size > self.max_frame:
            return self._fail(f"frame of {size} bytes exceeds the {self.max_frame}-byte limit")
        return size

    def _fail(self, reason: str) -> int:
        self._error = reason
        self._buf.clear()
        raise StreamFramingError(reason)
