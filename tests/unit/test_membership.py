"""Membership: certificates, grants, invites and revocation lists (p2ptun/membership).

Round trips of every encoding (hypothesis), signatures, validity periods, revocation, the
node-side roster, and every decoder fed damaged or random bytes: it raises only
MembershipDecodeError, with a one-line message.
"""

from __future__ import annotations

import ipaddress
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2ptun.errors import DecodeError
from p2ptun.membership import (
    CertificateRejected,
    Details,
    Invite,
    MembershipDecodeError,
    Rejection,
    Roster,
    decode_certificate,
    decode_grant,
    decode_invite,
    decode_revocations,
    ed25519_public,
    read_certificate_text,
    read_invite_text,
    read_revocations_text,
    sign_certificate,
    sign_grant,
    sign_revocations,
    verify_certificate,
)

NOW = 1_800_000_000
CA = bytes(range(32))
CA_PUB = ed25519_public(CA)
OTHER_CA = bytes(range(1, 33))
ENROLL = bytes(range(2, 34))
RV_KEY = bytes(32)


def details(
    name: str = "bob",
    *,
    serial: bytes = b"s" * 16,
    network: str = "home",
    authority: bytes = CA_PUB,
    not_before: int = NOW - 10,
    not_after: int = NOW + 86400,
    groups: tuple[str, ...] = ("laptops",),
) -> Details:
    return Details(
        network=network,
        name=name,
        serial=serial,
        addresses=(ipaddress.ip_interface("10.77.0.2/24"), ipaddress.ip_interface("fd00::2/64")),
        routes=(ipaddress.ip_network("192.168.1.0/24"),),
        groups=groups,
        not_before=not_before,
        not_after=not_after,
        authority=authority,
    )


def signed(key: bytes = b"k" * 32, **kw: object) -> bytes:
    return sign_certificate(details(**kw), key, CA).encode()  # type: ignore[arg-type]


def invite(**kw: object) -> Invite:
    grant = sign_grant(details(**kw), NOW + 3600, ed25519_public(ENROLL), CA)  # type: ignore[arg-type]
    return Invite(grant, ENROLL, "rv.example.net:7070", RV_KEY, "home")


# -- strategies --------------------------------------------------------------------------------

names = st.from_regex(r"[a-z0-9][a-z0-9._-]{0,20}", fullmatch=True)
v4 = st.builds(
    lambda a, p: ipaddress.ip_interface(f"{ipaddress.IPv4Address(a)}/{p}"),
    st.integers(0, 2**32 - 1),
    st.integers(0, 32),
)
v6 = st.builds(
    lambda a, p: ipaddress.ip_interface(f"{ipaddress.IPv6Address(a)}/{p}"),
    st.integers(0, 2**128 - 1),
    st.integers(0, 128),
)
routes = st.builds(lambda i: i.network, st.one_of(v4, v6))
details_st = st.builds(
    Details,
    network=names,
    name=names,
    serial=st.binary(min_size=16, max_size=16),
    addresses=st.lists(st.one_of(v4, v6), min_size=1, max_size=8, unique=True).map(tuple),
    routes=st.lists(routes, max_size=16, unique=True).map(tuple),
    groups=st.lists(names, max_size=16, unique=True).map(lambda g: tuple(sorted(g))),
    not_before=st.integers(0, 2**40),
    not_after=st.integers(2**40 + 1, 2**62),
    authority=st.just(CA_PUB),
)


# -- certificates -------------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(details_st, st.binary(min_size=32, max_size=32))
def test_signed_certificate_round_trips(d: Details, key: bytes) -> None:
    cert = sign_certificate(d, key, CA)
    data = cert.encode()
    back = decode_certificate(data)
    assert back == cert and back.encode() == data
    assert read_certificate_text(cert.to_text()) == cert
    verify_certificate(back, CA_PUB, d.not_before)


@settings(max_examples=60, deadline=None)
@given(details_st, st.binary(min_size=32, max_size=32))
def test_enrolled_certificate_round_trips(d: Details, key: bytes) -> None:
    grant = sign_grant(d, d.not_before + 10, ed25519_public(ENROLL), CA)
    assert decode_grant(grant.encode()) == grant
    inv = Invite(grant, ENROLL, "rv:7070", RV_KEY, "")
    assert decode_invite(inv.encode()) == inv and read_invite_text(inv.to_text()) == inv
    cert = inv.enroll(key)
    back = decode_certificate(cert.encode())
    assert back == cert and back.enrolled and back.serial == d.serial
    verify_certificate(back, CA_PUB, d.not_before)


def test_verification_refuses_other_authority_forgery_time_and_revocation() -> None:
    cert = decode_certificate(signed())
    verify_certificate(cert, CA_PUB, NOW, network="home")

    def reason(**kw: object) -> Rejection:
        with pytest.raises(CertificateRejected) as info:
            verify_certificate(cert, **kw)  # type: ignore[arg-type]
        assert "\n" not in str(info.value)
        return info.value.reason

    assert reason(authority=ed25519_public(OTHER_CA), now=NOW) is Rejection.WRONG_AUTHORITY
    assert reason(authority=CA_PUB, now=NOW + 86400) is Rejection.EXPIRED
    assert reason(authority=CA_PUB, now=NOW - 10_000) is Rejection.NOT_YET_VALID
    assert reason(authority=CA_PUB, now=NOW, network="work") is Rejection.WRONG_NETWORK
    assert reason(authority=CA_PUB, now=NOW, revoked={b"s" * 16}) is Rejection.REVOKED
    # A certificate of another authority that claims ours: its signature does not verify.
    forged = sign_certificate(details(authority=ed25519_public(OTHER_CA)), b"k" * 32, OTHER_CA)
    data = bytearray(forged.encode())
    data[data.index(ed25519_public(OTHER_CA)) : data.index(ed25519_public(OTHER_CA)) + 32] = CA_PUB
    with pytest.raises(CertificateRejected) as info:
        verify_certificate(decode_certificate(bytes(data)), CA_PUB, NOW)
    assert info.value.reason is Rejection.BAD_SIGNATURE
    # Any changed byte of a signed certificate (a new name, address, key) breaks it.
    original = signed()
    for i in range(3, len(original)):
        changed = bytearray(original)
        changed[i] ^= 0x01
        try:
            cert2 = decode_certificate(bytes(changed))
        except MembershipDecodeError:
            continue
        with pytest.raises(CertificateRejected):
            verify_certificate(cert2, CA_PUB, NOW)


def test_enrolled_certificate_with_a_foreign_binding_is_forged() -> None:
    inv = invite()
    cert = inv.enroll(b"k" * 32)
    # Another key bound with a signature that is not the enrollment key's.
    from p2ptun.membership.cert import Certificate

    fake = Certificate(cert.details, b"x" * 32, cert.signature, cert.grant)
    with pytest.raises(CertificateRejected) as info:
        verify_certificate(decode_certificate(fake.encode()), CA_PUB, NOW)
    assert info.value.reason is Rejection.BAD_SIGNATURE
    inv.grant.check_redeemable(NOW)
    with pytest.raises(CertificateRejected, match="expired"):
        inv.grant.check_redeemable(NOW + 3600)


# -- revocation and the roster -------------------------------------------------------------------


def test_revocation_list_round_trip_signature_and_order() -> None:
    crl = sign_revocations("home", 3, NOW, {b"b" * 16: NOW + 5, b"a" * 16: NOW + 9}, CA)
    back = decode_revocations(crl.encode())
    assert back == crl and read_revocations_text(crl.to_text()) == crl
    back.verify(CA_PUB, "home")
    with pytest.raises(CertificateRejected) as info:
        back.verify(ed25519_public(OTHER_CA))
    assert info.value.reason is Rejection.WRONG_AUTHORITY
    damaged = bytearray(crl.encode())
    damaged[-1] ^= 1
    with pytest.raises(CertificateRejected):
        decode_revocations(bytes(damaged)).verify(CA_PUB)


def test_roster_verifies_pins_revokes_and_expires() -> None:
    roster = Roster(CA_PUB, "home", "alice")
    member = roster.consider("bob", signed(), NOW)
    assert member.allowed_ips() == (
        ipaddress.ip_network("10.77.0.2/32"),
        ipaddress.ip_network("fd00::2/128"),
        ipaddress.ip_network("192.168.1.0/24"),
    )
    with pytest.raises(CertificateRejected) as info:
        roster.consider("carol", signed(), NOW)  # bob's certificate announced as carol
    assert info.value.reason is Rejection.WRONG_NAME
    with pytest.raises(CertificateRejected) as info:
        roster.consider("alice", signed(name="alice", serial=b"x" * 16), NOW)
    assert info.value.reason is Rejection.WRONG_NAME
    # An enrolled serial is bound to the first key seen under it.
    inv = invite(name="dave", serial=b"d" * 16)
    roster.consider("dave", inv.enroll(b"1" * 32).encode(), NOW)
    with pytest.raises(CertificateRejected) as info:
        roster.consider("dave", inv.enroll(b"2" * 32).encode(), NOW)
    assert info.value.reason is Rejection.WRONG_KEY
    with pytest.raises(MembershipDecodeError):
        roster.consider("erin", b"\x01\x01\x01", NOW)
    # Revocation: newer lists only, signed by our authority.
    crl = sign_revocations("home", 1, NOW, {b"s" * 16: NOW + 86400}, CA)
    assert roster.apply_revocations(crl.encode(), NOW) == ["bob"]
    with pytest.raises(CertificateRejected) as info:
        roster.apply_revocations(crl.encode(), NOW)
    assert info.value.reason is Rejection.STALE
    with pytest.raises(CertificateRejected) as info:
        roster.consider("bob", signed(), NOW)
    assert info.value.reason is Rejection.REVOKED
    other = sign_revocations("home", 9, NOW, {}, OTHER_CA)
    with pytest.raises(CertificateRejected):
        roster.apply_revocations(other.encode(), NOW)
    # Expiry.
    roster.consider("frank", signed(name="frank", serial=b"f" * 16, not_after=NOW + 100), NOW)
    assert roster.next_expiry() == NOW + 100
    assert roster.expire(NOW + 99) == []
    assert roster.expire(NOW + 100) == ["frank"]


# -- malformed input: one clear line, only MembershipDecodeError ----------------------------------


@pytest.mark.parametrize(
    "text,expected",
    [
        ("", "no '-----BEGIN P2PTUN CERTIFICATE-----'"),
        ("-----BEGIN P2PTUN CERTIFICATE-----\n!!!\n-----END P2PTUN CERTIFICATE-----", "base64"),
        (
            sign_revocations("home", 1, NOW, {}, CA).to_text(),
            "this is a p2ptun revocation list, not a p2ptun certificate",
        ),
        ("-----BEGIN P2PTUN CERTIFICATE-----\nAQE=\n-----END P2PTUN CERTIFICATE-----", "truncated"),
        ("-----BEGIN P2PTUN CERTIFICATE-----\nAgE=\n-----END P2PTUN CERTIFICATE-----", "version 2"),
        (
            "-----BEGIN P2PTUN CERTIFICATE-----\nAQI=\n-----END P2PTUN CERTIFICATE-----",
            "revocation",
        ),
    ],
)
def test_malformed_certificate_text_is_one_clear_line(text: str, expected: str) -> None:
    with pytest.raises(MembershipDecodeError) as info:
        read_certificate_text(text)
    message = str(info.value)
    assert expected in message and "\n" not in message
    assert message.startswith("not a valid certificate")


@pytest.mark.parametrize(
    "token,expected",
    [
        ("hello", "does not start with 'p2ptun-invite:'"),
        ("p2ptun-invite:%%%", "damaged"),
        ("p2ptun-invite:AQQ", "truncated"),
        (invite().to_text()[:-20], "not a valid invite"),
    ],
)
def test_malformed_invite_is_one_clear_line(token: str, expected: str) -> None:
    with pytest.raises(MembershipDecodeError) as info:
        read_invite_text(token)
    assert expected in str(info.value) and "\n" not in str(info.value)


DECODERS = (decode_certificate, decode_grant, decode_invite, decode_revocations)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_decoders_raise_only_decode_errors_on_random_bytes(data: bytes) -> None:
    for decoder in DECODERS:
        try:
            decoder(data)
        except MembershipDecodeError as exc:
            assert isinstance(exc, DecodeError) and "\n" not in str(exc)


VALID = (
    signed(),
    invite().enroll(b"k" * 32).encode(),
    invite().grant.encode(),
    invite().encode(),
    sign_revocations("home", 1, NOW, {b"a" * 16: 1, b"b" * 16: 2}, CA).encode(),
)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(VALID), st.data())
def test_decoders_raise_only_decode_errors_on_mutations(valid: bytes, data: st.DataObject) -> None:
    mutated = bytearray(valid)
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        i = data.draw(st.integers(0, max(0, len(mutated) - 1)))
        if op == "flip" and mutated:
            mutated[i] ^= data.draw(st.integers(1, 255))
        elif op == "cut":
            del mutated[i:]
        else:
            mutated[i:i] = data.draw(st.binary(min_size=1, max_size=8))
    for decoder in DECODERS:
        try:
            decoded = decoder(bytes(mutated))
        except MembershipDecodeError:
            continue
        # Whatever decodes is canonical: it encodes back to the same bytes.
        assert decoded.encode() == bytes(mutated)


def test_random_keys_are_injected_not_drawn() -> None:
    """The core takes seeds from its caller: the same seeds give the same objects."""
    seed = os.urandom(32)
    a = sign_grant(details(), NOW, ed25519_public(seed), CA)
    b = sign_grant(details(), NOW, ed25519_public(seed), CA)
    assert a == b
