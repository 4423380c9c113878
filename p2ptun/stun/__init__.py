"""Sans-I/O STUN (RFC 8489) with the ICE (RFC 8445) and TURN (RFC 8656) attributes.

Nothing in this package reads a clock, draws randomness or touches a socket: the caller passes
the time (``now``) and the random source (transaction ids).

Demultiplexing (docs/ARCHITECTURE.md §2)
-----------------------------------
``is_stun(data)`` — first byte 0-3 and the magic cookie at bytes 4-8.
``is_channel_data(data)`` — first byte 0x40-0x4F (TURN ChannelData).

Messages
--------
::

    from p2ptun.stun import AttrType, Message, Method, random_transaction_id, short_term_key

    tid = random_transaction_id(os.urandom)    # the shell's CSPRNG; tests pass a seeded source
    req = Message.request(Method.BINDING, tid, [
        (AttrType.USERNAME, "remote:local"),
        (AttrType.PRIORITY, 0x6E0001FF),
        (AttrType.ICE_CONTROLLING, tie_breaker),
    ]).add(AttrType.USE_CANDIDATE)
    wire = req.encode(short_term_key(remote_pwd), fingerprint=True)

    msg = Message.decode(datagram)          # raises only StunDecodeError
    msg.xor_mapped_address                  # ("198.51.100.7", 40000) or None
    msg.check_fingerprint(); msg.check_integrity(key)

- ``Message(method, message_class, transaction_id, attributes)`` is a dataclass;
  ``attributes`` is the ordered list of ``(attr_type, typed value)`` pairs (value types are
  listed in :mod:`p2ptun.stun.attributes`; unknown types keep their raw ``bytes``).
- ``get(t)`` returns the first occurrence (RFC 8489 §5), ``get_all(t)`` all of them,
  ``raw(t)`` / ``raw_attributes()`` the wire values; properties such as ``username``,
  ``xor_mapped_address``, ``error_code``, ``priority``, ``use_candidate``, ``ice_controlling``,
  ``lifetime``, ``xor_relayed_addresses``, ``xor_peer_addresses``, ``data``,
  ``channel_number``, ``nonce``, ``realm``, ``password_algorithms``... are typed shortcuts.
- ``req.success(attrs)`` / ``req.error(code, reason, attrs)`` build responses with the same
  method and transaction id.
- ``encode(key=None, *, sha1=True, sha256=False, fingerprint=False)`` appends
  MESSAGE-INTEGRITY and/or MESSAGE-INTEGRITY-SHA256 (HMAC over the right prefix, length field
  adjusted, §14.5/§14.6) and FINGERPRINT (§14.7). These trailer attributes never sit in
  ``attributes``; decoded values are in ``message_integrity``, ``message_integrity_sha256`` and
  ``fingerprint``.
- Decoding ignores whatever follows an integrity attribute (except MESSAGE-INTEGRITY-SHA256
  after MESSAGE-INTEGRITY, and FINGERPRINT), rejects anything after FINGERPRINT, and verifies
  integrity over the exact received bytes: ``check_integrity(key)`` uses
  MESSAGE-INTEGRITY-SHA256 when present, else MESSAGE-INTEGRITY.

Credentials (RFC 8489 §9)
-------------------------
``short_term_key(password)``; ``long_term_key(username, realm, password,
algorithm=PasswordAlgorithm.MD5 | SHA256)``; ``userhash(username, realm)``;
``opaque_string(text)`` (RFC 8265 §4.2, NFC + space mapping).

Servers
-------
``handle_binding(data, source) -> bytes | None`` is the embedded STUN server.
``unknown_comprehension_required(msg, known)`` finds attributes that call for a 420;
``error_response(request, code, unknown_attributes=..., attributes=...)`` builds the reply.

Transactions (RFC 8489 §6.2)
----------------------------
``ClientTransaction(request, now, rto=0.5, rc=7, rm=16, reliable=False, key=..., context=...)``
with ``next_wakeup()``, ``handle_timeout(now) -> bytes | TransactionOutcome | None`` and
``handle_response(msg, now) -> TransactionOutcome | None``.
``TransactionManager[C]`` keeps many by transaction id::

    mgr: TransactionManager[Address] = TransactionManager()
    t = mgr.start(wire, now, key=key, context=server_addr)    # -> Transmit: send t.data
    for ev in mgr.handle_timeout(now):                         # Transmit | TransactionOutcome
        ...
    outcome = mgr.handle_response(msg, now)                    # None if not ours / invalid
    outcome.ok, outcome.error, outcome.response, outcome.rtt, outcome.context

TURN ChannelData (RFC 8656 §12)
-------------------------------
``encode_channel_data(channel, data, pad=False)``, ``decode_channel_data(datagram)`` ->
``ChannelData(channel, data)``, ``channel_data_frame_length(buffer)`` for streams; for relays
that forward views without copying, ``channel_data_header(channel, length)`` and
``channel_data_end(datagram)`` (-1 if malformed).
"""

from p2ptun.stun.attributes import (
    AddressErrorValue,
    ErrorValue,
    IcmpValue,
    PasswordAlgorithmValue,
)
from p2ptun.stun.channeldata import (
    CHANNEL_MAX,
    CHANNEL_MIN,
    ChannelData,
    channel_data_end,
    channel_data_frame_length,
    channel_data_header,
    decode_channel_data,
    encode_channel_data,
    is_channel_data,
    is_channel_number,
)
from p2ptun.stun.constants import (
    MAGIC_COOKIE,
    MAX_ATTRIBUTES,
    TRANSPORT_UDP,
    AddressFamily,
    AttrType,
    ErrorCode,
    MessageClass,
    Method,
    PasswordAlgorithm,
    StunDecodeError,
    is_comprehension_required,
)
from p2ptun.stun.credentials import (
    long_term_key,
    opaque_string,
    short_term_key,
    userhash,
)
from p2ptun.stun.message import (
    Message,
    decode,
    is_stun,
    message_length,
    peek_transaction_id,
    random_transaction_id,
)
from p2ptun.stun.server import (
    binding_response,
    binding_success,
    error_response,
    handle_binding,
    unknown_comprehension_required,
)
from p2ptun.stun.transaction import (
    ClientTransaction,
    TransactionManager,
    TransactionOutcome,
    TransactionState,
    Transmit,
)

__all__ = [
    "CHANNEL_MAX",
    "CHANNEL_MIN",
    "MAGIC_COOKIE",
    "MAX_ATTRIBUTES",
    "TRANSPORT_UDP",
    "AddressErrorValue",
    "AddressFamily",
    "AttrType",
    "ChannelData",
    "ClientTransaction",
    "ErrorCode",
    "ErrorValue",
    "IcmpValue",
    "Message",
    "MessageClass",
    "Method",
    "PasswordAlgorithm",
    "PasswordAlgorithmValue",
    "StunDecodeError",
    "TransactionManager",
    "TransactionOutcome",
    "TransactionState",
    "Transmit",
    "binding_response",
    "binding_success",
    "channel_data_end",
    "channel_data_frame_length",
    "channel_data_header",
    "decode",
    "decode_channel_data",
    "encode_channel_data",
    "error_response",
    "handle_binding",
    "is_channel_data",
    "is_channel_number",
    "is_comprehension_required",
    "is_stun",
    "long_term_key",
    "message_length",
    "opaque_string",
    "peek_transaction_id",
    "random_transaction_id",
    "short_term_key",
    "unknown_comprehension_required",
    "userhash",
]
