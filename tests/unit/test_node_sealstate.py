"""The node's sealed-message counters on disk (p2ptun.node.sealstate)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from p2ptun.keys import generate_private_key, public_key
from p2ptun.node.sealstate import SealStateFile, seal_state_path, state_directory

ME = public_key(generate_private_key())
PEER = public_key(generate_private_key())


def test_where_the_state_lives(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("P2PTUN_STATE_DIR", raising=False)
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    assert state_directory() == "/var/lib/p2ptun"
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/p2ptun:/var/lib/other")  # systemd
    assert seal_state_path("p2p0") == "/var/lib/p2ptun/p2p0.seal-state"
    monkeypatch.setenv("P2PTUN_STATE_DIR", "/tmp/x")  # tests, labs
    assert seal_state_path("p2p0") == "/tmp/x/p2p0.seal-state"


def test_counters_survive_and_the_file_is_private(tmp_path: Path) -> None:
    path = tmp_path / "state" / "p2p0.seal-state"
    state = SealStateFile(str(path), ME)
    assert not state.loaded and state.last_counter("bob", PEER) is None
    state.record("bob", PEER, 42)
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert os.stat(path.parent).st_mode & 0o777 == 0o700
    again = SealStateFile(str(path), ME)
    assert again.loaded and again.last_counter("bob", PEER) == 42
    assert again.last_counter("bob", ME) is None  # another key is another record
    # A file written for another node key is not used.
    assert SealStateFile(str(path), PEER).last_counter("bob", PEER) is None


@pytest.mark.parametrize("content", [b"{", b'{"version": 9}', b"\xff" * 10, b'{"version":1}'])
def test_a_damaged_file_is_ignored(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "p2p0.seal-state"
    path.write_bytes(content)
    state = SealStateFile(str(path), ME)
    assert state.counters == {} and not state.loaded
    state.record("bob", PEER, 7)  # and replaced by a good one
    assert json.loads(path.read_text())["peers"][0]["counter"] == 7


def test_an_unwritable_directory_is_logged_not_fatal(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        blocker = tmp_path / "file"
        blocker.write_text("")
        path = blocker / "p2p0.seal-state"  # a file where the directory should be
    else:
        tmp_path.chmod(0o500)
        path = tmp_path / "sub" / "p2p0.seal-state"
    state = SealStateFile(str(path), ME)
    state.record("bob", PEER, 9)
    assert state.write_failures == 1 and state.last_counter("bob", PEER) == 9
