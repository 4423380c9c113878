"""Name ↔ key bindings: the allow list, trust on first use, and persistence in SQLite."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from p2ptun.config import NodeEntry
from p2ptun.errors import RuntimeFailure
from p2ptun.rendezvous.store import MemoryStore, RegistrationStore, SqliteStore
from p2ptun.signal.messages import RefusalReason

A, B, C = os.urandom(32), os.urandom(32), os.urandom(32)


def stores(
    tmp_path: Path, open_registration: bool, nodes: tuple[NodeEntry, ...] = ()
) -> list[RegistrationStore]:
    return [
        MemoryStore(open_registration, nodes),
        SqliteStore(str(tmp_path / f"db-{open_registration}.sqlite"), open_registration, nodes),
    ]


def test_allow_list(tmp_path: Path) -> None:
    for store in stores(tmp_path, False, (NodeEntry("alice", A), NodeEntry("bob", B))):
        assert store.admit("alice", A).allowed
        assert store.admit("bob", B).allowed
        unknown = store.admit("carol", C)
        assert not unknown.allowed and unknown.reason is RefusalReason.UNKNOWN_NODE
        taken = store.admit("alice", C)
        assert taken.reason is RefusalReason.NAME_TAKEN
        assert "different public key" in taken.text
        other = store.admit("mallory", A)
        assert other.reason is RefusalReason.KEY_BOUND_TO_OTHER_NAME
        assert "'alice'" in other.text
        store.close()


def test_trust_on_first_use(tmp_path: Path) -> None:
    for store in stores(tmp_path, True, (NodeEntry("pinned", C),)):
        first = store.admit("alice", A)
        assert first.allowed and first.new_binding
        again = store.admit("alice", A)
        assert again.allowed and not again.new_binding
        assert store.admit("alice", B).reason is RefusalReason.NAME_TAKEN
        assert store.admit("alice2", A).reason is RefusalReason.KEY_BOUND_TO_OTHER_NAME
        # [[node]] entries stay pinned in open mode.
        assert store.admit("pinned", B).reason is RefusalReason.NAME_TAKEN
        assert store.admit("pinned", C).allowed
        assert store.admit("other", C).reason is RefusalReason.KEY_BOUND_TO_OTHER_NAME
        store.close()


def test_tofu_bindings_survive_restart(tmp_path: Path) -> None:
    path = str(tmp_path / "rv.sqlite")
    store = SqliteStore(path, True)
    assert store.admit("alice", A).new_binding
    store.close()
    store = SqliteStore(path, True)
    assert store.bindings() == {"alice": A}
    assert store.admit("alice", A).allowed and not store.admit("alice", A).new_binding
    assert store.admit("alice", B).reason is RefusalReason.NAME_TAKEN
    store.close()


def test_missing_directory_is_a_clear_failure(tmp_path: Path) -> None:
    with pytest.raises(RuntimeFailure, match="directory does not exist"):
        SqliteStore(str(tmp_path / "nope" / "rv.sqlite"), True)


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    import sqlite3

    path = str(tmp_path / "rv.sqlite")
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = 99")
    db.close()
    with pytest.raises(RuntimeFailure, match="newer"):
        SqliteStore(path, True)
