"""Our key tools against WireGuard's own `wg` (Debian wireguard-tools)."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from p2ptun import keys

pytestmark = pytest.mark.skipif(
    shutil.which("wg") is None, reason="wg (wireguard-tools) not installed"
)


def wg(*args: str, stdin: bytes = b"") -> bytes:
    return subprocess.run(
        ["wg", *args], input=stdin, capture_output=True, check=True, timeout=30
    ).stdout


def p2ptun(*args: str, stdin: bytes = b"") -> bytes:
    return subprocess.run(
        [sys.executable, "-m", "p2ptun", *args],
        input=stdin,
        capture_output=True,
        check=True,
        timeout=30,
    ).stdout


def our_pubkey(private_text: bytes) -> bytes:
    return (
        keys.encode_key(keys.public_key(keys.decode_key(private_text.decode()))) + "\n"
    ).encode()


def test_cli_pubkey_matches_wg() -> None:
    """The command itself, as users run it, on a batch of random keys."""
    for _ in range(15):
        private = p2ptun("genkey")
        assert p2ptun("pubkey", stdin=private) == wg("pubkey", stdin=private)


def test_pubkey_matches_wg_on_many_keys() -> None:
    for _ in range(500):
        private = (keys.encode_key(keys.generate_private_key()) + "\n").encode()
        assert our_pubkey(private) == wg("pubkey", stdin=private)


def test_pubkey_matches_wg_on_unclamped_keys() -> None:
    # `wg pubkey` accepts any 32 bytes; X25519 clamps internally, and so do we.
    for i in range(64):
        private = (
            keys.encode_key(bytes((i * 37 + j * 11) % 256 for j in range(32))) + "\n"
        ).encode()
        assert our_pubkey(private) == wg("pubkey", stdin=private)


def test_wg_genkey_output_is_accepted() -> None:
    for i in range(100):
        private = wg("genkey")
        expected = wg("pubkey", stdin=private)
        assert our_pubkey(private) == expected
        if i < 5:
            assert p2ptun("pubkey", stdin=private) == expected


def test_genkey_pipeline_equals_wg_pubkey() -> None:
    """`p2ptun genkey | p2ptun pubkey` equals `wg pubkey` for the same key."""
    private = p2ptun("genkey")
    assert p2ptun("pubkey", stdin=private) == wg("pubkey", stdin=private)
