"""Which node may register under which name: the rendezvous' name ↔ key bindings.

Rules (docs/ARCHITECTURE.md §3, ``open_registration`` and ``[[node]]``):

- ``[[node]]`` entries are pinned bindings. A name listed there can only be registered with its
  listed key, and a listed key only under its listed name.
- ``open_registration = false``: only the ``[[node]]`` entries may register.
- ``open_registration = true``: trust on first use. A name not yet bound is bound to the first
  key that registers it, and that binding is stored (SQLite) so it survives restarts. A name
  bound to another key is refused ("name taken"); a key already bound to another name is
  refused as well, so one key is one name. Anyone who reaches the rendezvous can claim names,
  so new bindings are limited (:class:`OpenRegistrationLimits`): a few per source address
  (per IPv6 /64) and then one every few minutes, a rate for everyone together, and a cap on
  the bindings stored; past them a registration is refused as busy. Self-registered nodes
  are not ``pinned``: the hub gives them no TURN credentials unless told to.

A binding can be removed by an operator with ``sqlite3 FILE "DELETE FROM bindings WHERE
name = '...'"`` while the rendezvous is stopped.

:class:`RegistrationStore` is the interface the signaling shell holds: the hub core
(:class:`p2ptun.signal.hub.SignalingServerCore`) asks it only :meth:`~RegistrationStore.admit`
(its :class:`~p2ptun.signal.hub.Registrations`), the shell closes it. :class:`SqliteStore` is the
real one and :class:`MemoryStore` the in-memory one for tests. Calls are synchronous and short:
a known binding is one indexed lookup, only a first use writes (WAL journal).
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from p2ptun.addr import SourceBudget
from p2ptun.config import NodeEntry
from p2ptun.errors import RuntimeFailure
from p2ptun.signal.hub import Admission, Registrations
from p2ptun.signal.messages import RefusalReason

SCHEMA_VERSION = 1

ADMITTED = Admission(True)
PINNED = Admission(True, pinned=True)


@dataclass(frozen=True)
class OpenRegistrationLimits:
    """How fast names may be claimed under ``open_registration = true``, and how many kept."""

    #: Bindings stored at most; past it no new name is accepted.
    max_bindings: int = 10_000
    #: New names one source (an IPv4 address or an IPv6 /64) may claim at once...
    per_source_burst: int = 5
    #: ...and then one per this many seconds.
    per_source_interval: float = 600.0
    #: New names everyone together may claim at once...
    burst: int = 30
    #: ...and then one per this many seconds.
    interval: float = 10.0
    #: Sources whose budget is remembered (the least recent is forgotten first).
    max_sources: int = 4096


class RegistrationStore(Registrations, Protocol):
    """A store as the signaling shell holds it: the hub's
    :class:`~p2ptun.signal.hub.Registrations` (``admit``), closed when the server stops."""

    def close(self) -> None: ...

    def registered(self) -> int:
        """How many names the rendezvous knows: listed ones and those bound since."""
        ...


class _BindingRules:
    """The admission rules over two lookups and an insert, shared by every backend."""

    def __init__(
        self,
        open_registration: bool,
        nodes: Iterable[NodeEntry],
        limits: OpenRegistrationLimits | None = None,
    ) -> None:
        self.open_registration = open_registration
        self.pinned_by_name = {n.name: n.public_key for n in nodes}
        self.pinned_by_key = {key: name for name, key in self.pinned_by_name.items()}
        self.limits = limits = limits or OpenRegistrationLimits()
        self._per_source = SourceBudget(
            1.0 / limits.per_source_interval, limits.per_source_burst, limits.max_sources
        )
        self._everyone = SourceBudget(1.0 / limits.interval, limits.burst, 1)
        #: New names refused by the limits (counted for status and tests).
        self.refused_new_names = 0

    def _count(self) -> int:
        """How many bindings are stored."""
        raise NotImplementedError

    def registered(self) -> int:
        # Listed names are never stored (admit answers them before the store).
        return len(self.pinned_by_name) + self._count()

    def _name_key(self, name: str) -> bytes | None:
        raise NotImplementedError

    def _key_name(self, key: bytes) -> str | None:
        raise NotImplementedError

    def _bind(self, name: str, key: bytes) -> bool:
        """Insert a binding; False if a concurrent one won."""
        raise NotImplementedError

    def known(self, key: bytes) -> bool:
        """Is ``key`` listed (``[[node]]``) or bound to a name?"""
        return key in self.pinned_by_key or (
            self.open_registration and self._key_name(key) is not None
        )

    def admit(self, name: str, key: bytes, *, now: float = 0.0, source: str = "") -> Admission:
        pinned = self.pinned_by_name.get(name)
        if pinned is not None:
            if pinned == key:
                return PINNED
            return Admission(
                False,
                RefusalReason.NAME_TAKEN,
                f"the name {name!r} is configured for a different public key",
            )
        other = self.pinned_by_key.get(key)
        if other is not None:
            return Admission(
                False,
                RefusalReason.KEY_BOUND_TO_OTHER_NAME,
                f"this key is configured for the name {other!r}",
            )
        if not self.open_registration:
            return Admission(
                False,
                RefusalReason.UNKNOWN_NODE,
                f"{name!r} with this key is not in the rendezvous' [[node]] list "
                "and registration is closed",
            )
        bound = self._name_key(name)
        if bound is not None:
            if bound == key:
                return ADMITTED
            return Admission(
                False,
                RefusalReason.NAME_TAKEN,
                f"the name {name!r} is already registered with a different public key",
            )
        other = self._key_name(key)
        if other is not None:
            return Admission(
                False,
                RefusalReason.KEY_BOUND_TO_OTHER_NAME,
                f"this key is already registered as {other!r}",
            )
        busy = self._new_name_refusal(now, source)
        if busy is not None:
            self.refused_new_names += 1
            return Admission(False, RefusalReason.BUSY, busy)
        if not self._bind(name, key):
            return self.admit(name, key, now=now, source=source)
        return Admission(True, new_binding=True)

    def _new_name_refusal(self, now: float, source: str) -> str | None:
        """Why no new name may be bound now for ``source``, or None (and the budgets spent)."""
        limits = self.limits
        if self._count() >= limits.max_bindings:
            return "this rendezvous holds as many self-registered names as it may"
        if not self._per_source.allow(source, now):
            return "too many new names from this address; try again later"
        if not self._everyone.allow("", now):
            return "too many new names right now; try again later"
        return None


#: The admission rules, for a store kept elsewhere (:mod:`p2ptun.rendezvous.redis_store`).
BindingRules = _BindingRules


class MemoryStore(_BindingRules):
    """Bindings in a dict (tests, or a rendezvous that should forget on restart)."""

    def __init__(
        self,
        open_registration: bool,
        nodes: Iterable[NodeEntry] = (),
        limits: OpenRegistrationLimits | None = None,
    ) -> None:
        super().__init__(open_registration, nodes, limits)
        self.bindings: dict[str, bytes] = {}

    def _count(self) -> int:
        return len(self.bindings)

    def _name_key(self, name: str) -> bytes | None:
        return self.bindings.get(name)

    def _key_name(self, key: bytes) -> str | None:
        for name, bound in self.bindings.items():
            if bound == key:
                return name
        return None

    def _bind(self, name: str, key: bytes) -> bool:
        self.bindings[name] = key
        return True

    def close(self) -> None:
        pass


class SqliteStore(_BindingRules):
    """Bindings in an SQLite file: ``bindings(name PRIMARY KEY, public_key UNIQUE, ...)``."""

    def __init__(
        self,
        path: str,
        open_registration: bool,
        nodes: Iterable[NodeEntry] = (),
        *,
        wall_clock: Callable[[], float] = time.time,
        limits: OpenRegistrationLimits | None = None,
    ) -> None:
        super().__init__(open_registration, nodes, limits)
        self.path = path
        self._wall = wall_clock
        directory = os.path.dirname(path)
        if directory and not os.path.isdir(directory):
            raise RuntimeFailure(f"{path}: the database directory does not exist")
        try:
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._migrate()
            (self._stored,) = self._db.execute("SELECT COUNT(*) FROM bindings").fetchone()
        except sqlite3.Error as exc:
            raise RuntimeFailure(f"{path}: cannot open the registration database: {exc}") from None

    def _migrate(self) -> None:
        (version,) = self._db.execute("PRAGMA user_version").fetchone()
        if version > SCHEMA_VERSION:
            raise RuntimeFailure(
                f"{self.path}: database schema {version} is newer than this p2ptun "
                f"({SCHEMA_VERSION})"
            )
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS bindings ("
            " name TEXT PRIMARY KEY,"
            " public_key BLOB NOT NULL UNIQUE,"
            " first_seen REAL NOT NULL)"
        )
        self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _name_key(self, name: str) -> bytes | None:
        row = self._db.execute("SELECT public_key FROM bindings WHERE name = ?", (name,)).fetchone()
        return bytes(row[0]) if row else None

    def _key_name(self, key: bytes) -> str | None:
        row = self._db.execute("SELECT name FROM bindings WHERE public_key = ?", (key,)).fetchone()
        return str(row[0]) if row else None

    def _bind(self, name: str, key: bytes) -> bool:
        try:
            self._db.execute(
                "INSERT INTO bindings (name, public_key, first_seen) VALUES (?, ?, ?)",
                (name, key, float(self._wall())),
            )
        except sqlite3.IntegrityError:
            return False
        self._stored += 1
        return True

    def _count(self) -> int:
        return int(self._stored)

    def bindings(self) -> dict[str, bytes]:
        """Every stored (trust-on-first-use) binding."""
        rows = self._db.execute("SELECT name, public_key FROM bindings").fetchall()
        return {str(name): bytes(key) for name, key in rows}

    def close(self) -> None:
        self._db.close()
