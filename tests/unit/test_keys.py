"""WireGuard key format: generation, clamping, base64 strictness, X25519 public keys."""

from __future__ import annotations

import base64
import contextlib
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2ptun import keys

# RFC 7748 §6.1: Alice's private key and the public key it yields.
RFC7748_PRIVATE = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
RFC7748_PUBLIC = bytes.fromhex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")


def test_rfc7748_vector() -> None:
    assert keys.public_key(RFC7748_PRIVATE) == RFC7748_PUBLIC


def test_generated_keys_are_clamped_and_distinct() -> None:
    seen = set()
    for _ in range(50):
        k = keys.generate_private_key()
        assert len(k) == 32 and k[0] & 7 == 0 and k[31] & 0x80 == 0 and k[31] & 0x40
        seen.add(k)
    assert len(seen) == 50


@given(st.binary(min_size=32, max_size=32))
def test_encode_decode_roundtrip(raw: bytes) -> None:
    text = keys.encode_key(raw)
    assert len(text) == 44
    assert keys.decode_key(text) == raw
    assert keys.decode_key(f"  {text}\n") == raw


@given(st.binary(max_size=64))
def test_decode_rejects_other_lengths(raw: bytes) -> None:
    text = base64.b64encode(raw).decode()
    if len(raw) == 32:
        assert keys.decode_key(text) == raw
    else:
        with pytest.raises(ValueError):
            keys.decode_key(text)


@given(st.text(max_size=60))
def test_decode_only_raises_value_error(text: str) -> None:
    with contextlib.suppress(ValueError):
        keys.decode_key(text)


def test_decode_rejects_non_canonical_padding_bits() -> None:
    good = keys.encode_key(bytes(32))  # "AAAA...A="
    bad = good[:42] + "B="  # same bytes if the spare bits were ignored
    with pytest.raises(ValueError):
        keys.decode_key(bad)


def _run(args: list[str], stdin: bytes) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "p2ptun", *args], input=stdin, capture_output=True, timeout=60
    )


def test_cli_genkey_pubkey() -> None:
    gen = _run(["genkey"], b"")
    assert gen.returncode == 0 and len(gen.stdout) == 45 and gen.stdout.endswith(b"\n")
    pub = _run(["pubkey"], gen.stdout)
    assert pub.returncode == 0
    expected = keys.public_key(keys.decode_key(gen.stdout.decode()))
    assert pub.stdout == (keys.encode_key(expected) + "\n").encode()


@pytest.mark.parametrize("garbage", [b"", b"hello\n", b"\xff\xfe\x00garbage", b"A" * 5000])
def test_cli_pubkey_garbage(garbage: bytes) -> None:
    proc = _run(["pubkey"], garbage)
    assert proc.returncode == 2
    assert proc.stdout == b""
    assert proc.stderr.count(b"\n") == 1 and b"not a private key" in proc.stderr
