"""Cross-check the codec against aioice's STUN parser (a codec nobody here wrote)."""

from __future__ import annotations

import pytest

from p2ptun.stun import AttrType, Message, MessageClass, Method, short_term_key

aioice_stun = pytest.importorskip("aioice.stun")

KEY = short_term_key("0123456789abcdefghijkl")
TID = bytes.fromhex("00112233445566778899aabb")


def test_aioice_parses_our_ice_check() -> None:
    ours = Message.request(
        Method.BINDING,
        TID,
        [
            (AttrType.USERNAME, "rmt:lcl"),
            (AttrType.PRIORITY, 1853824767),
            (AttrType.ICE_CONTROLLING, 0x0123456789ABCDEF),
            (AttrType.USE_CANDIDATE, True),
        ],
    )
    wire = ours.encode(KEY, fingerprint=True)
    theirs = aioice_stun.parse_message(wire)
    assert theirs.message_method == aioice_stun.Method.BINDING
    assert theirs.message_class == aioice_stun.Class.REQUEST
    assert theirs.transaction_id == TID
    assert theirs.attributes["USERNAME"] == "rmt:lcl"
    assert theirs.attributes["PRIORITY"] == 1853824767
    assert theirs.attributes["ICE-CONTROLLING"] == 0x0123456789ABCDEF
    assert "USE-CANDIDATE" in theirs.attributes
    # aioice re-encodes identically (same zero padding, same trailer computation).
    again = aioice_stun.Message(
        aioice_stun.Method.BINDING,
        aioice_stun.Class.REQUEST,
        transaction_id=TID,
    )
    for name in ("USERNAME", "PRIORITY", "ICE-CONTROLLING", "USE-CANDIDATE"):
        again.attributes[name] = theirs.attributes[name]
    again.add_message_integrity(KEY)
    again.add_fingerprint()
    assert bytes(again) == wire


@pytest.mark.parametrize("address", [("198.51.100.3", 61000), ("2001:db8::42", 3478)])
def test_we_parse_aioice_response(address: tuple[str, int]) -> None:
    theirs = aioice_stun.Message(
        aioice_stun.Method.BINDING, aioice_stun.Class.RESPONSE, transaction_id=TID
    )
    theirs.attributes["XOR-MAPPED-ADDRESS"] = address
    theirs.add_message_integrity(KEY)
    theirs.add_fingerprint()
    msg = Message.decode(bytes(theirs))
    assert msg.message_class == MessageClass.SUCCESS
    assert msg.xor_mapped_address == address
    assert msg.check_integrity(KEY) and msg.check_fingerprint()
