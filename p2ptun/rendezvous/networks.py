"""The networks a rendezvous serves (``[[network]] ca = "…"``): which certificates admit a
node, which invites are used, and the newest revocation list of each network.

:class:`NetworkStore` is the hub's :class:`~p2ptun.signal.hub.Memberships`. A node that
registers with a certificate is admitted when the certificate

- decodes, is signed by the authority of a ``[[network]]`` entry (and is of the network the
  entry names, if it names one), is within its validity period and not revoked by the newest
  list held for that network;
- is issued for the name the node registers and for the key it authenticated with (the Noise
  static key is the node's WireGuard key);
- and, if it was enrolled with an invite, the invite (its serial) is still unused, or was used
  by this very key: the first key is recorded (SQLite, so that it survives restarts) and no
  other is admitted under that serial; an unused invite past its redeem-by time admits no one.

A name the operator pinned to another key (``[[node]]``) is not admitted as a member. Revocation
lists come from the entry's ``revocations`` file (:meth:`NetworkStore.reload`) or from members
(``p2ptun ca revoke`` through a node); only a valid list newer than the one held is kept, and
it is stored, so that the rendezvous hands it to every member that registers later.

Nothing here is trusted by the nodes: every node checks every certificate and list itself.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from p2ptun.config import NetworkEntry
from p2ptun.errors import RuntimeFailure
from p2ptun.log import get_logger
from p2ptun.membership import (
    Certificate,
    CertificateRejected,
    MembershipDecodeError,
    RevocationList,
    decode_certificate,
    decode_revocations,
    verify_certificate,
)
from p2ptun.signal.hub import Admission
from p2ptun.signal.messages import RefusalReason

log = get_logger("rendezvous.networks")


def _refuse(text: str) -> Admission:
    return Admission(False, RefusalReason.CERTIFICATE, text)


@dataclass
class _Network:
    entry: NetworkEntry
    revocations: RevocationList | None = None

    @property
    def id(self) -> str:
        return self.entry.ca.hex()


class NetworkStore:
    """The served networks, their invites' first uses and revocation lists (module
    docstring). ``database`` is an SQLite file (or ``:memory:``)."""

    def __init__(
        self,
        entries: Iterable[NetworkEntry],
        database: str = ":memory:",
        *,
        pinned: Mapping[str, bytes] | None = None,
    ) -> None:
        self._by_ca = {e.ca: _Network(e) for e in entries}
        self._by_id = {n.id: n for n in self._by_ca.values()}
        self._pinned = dict(pinned or {})
        #: Called with (network id, list, number) when a newer list is taken (a cluster
        #: shares it: :mod:`p2ptun.rendezvous.cluster`).
        self.on_taken: Callable[[str, bytes, int], None] | None = None
        #: Called with (serial, key, name) when an invite is used here (a cluster shares it).
        self.on_invite: Callable[[bytes, bytes, str], None] | None = None
        directory = os.path.dirname(database)
        if database != ":memory:" and directory and not os.path.isdir(directory):
            raise RuntimeFailure(f"{database}: the database directory does not exist")
        try:
            self._db = sqlite3.connect(database, isolation_level=None, check_same_thread=False)
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS invites_used ("
                " serial BLOB PRIMARY KEY, public_key BLOB NOT NULL, name TEXT NOT NULL,"
                " used REAL NOT NULL)"
            )
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS revocation_lists ("
                " authority BLOB PRIMARY KEY, number INTEGER NOT NULL, list BLOB NOT NULL)"
            )
        except sqlite3.Error as exc:
            raise RuntimeFailure(f"{database}: cannot open the network database: {exc}") from None
        for network in self._by_ca.values():
            row = self._db.execute(
                "SELECT list FROM revocation_lists WHERE authority = ?", (network.entry.ca,)
            ).fetchone()
            if row is not None:
                self._take(network, bytes(row[0]), persist=False)
        self.reload(entries)

    @property
    def served(self) -> bool:
        return bool(self._by_ca)

    def reload(self, entries: Iterable[NetworkEntry]) -> list[str]:
        """Take the revocation lists of ``entries`` (their files, as the config read them)
        that are newer than the ones held; the ids of the networks whose list changed."""
        changed = []
        for entry in entries:
            network = self._by_ca.get(entry.ca)
            if (
                network is not None
                and entry.revocations is not None
                and self._take(network, entry.revocations)
            ):
                changed.append(network.id)
        return changed

    def _take(self, network: _Network, blob: bytes, *, persist: bool = True) -> bool:
        try:
            crl = decode_revocations(blob)
            crl.verify(network.entry.ca, network.entry.name)
        except (MembershipDecodeError, CertificateRejected) as exc:
            log.info("revocation list refused", error=str(exc))
            return False
        held = network.revocations
        if held is not None and crl.number <= held.number:
            return False
        network.revocations = crl
        if persist:
            self._db.execute(
                "INSERT OR REPLACE INTO revocation_lists (authority, number, list)"
                " VALUES (?, ?, ?)",
                (network.entry.ca, crl.number, crl.encode()),
            )
        log.info(
            "revocation list", network=crl.network, number=crl.number, revoked=len(crl.entries)
        )
        if self.on_taken is not None:
            self.on_taken(network.id, crl.encode(), crl.number)
        return True

    # -- Memberships -------------------------------------------------------------------------

    def admit_member(self, name: str, key: bytes, certificate: bytes, wall: float) -> Admission:
        try:
            cert = decode_certificate(certificate)
        except MembershipDecodeError as exc:
            return _refuse(str(exc))
        network = self._by_ca.get(cert.authority)
        if network is None:
            return _refuse("the certificate is of a network this rendezvous does not serve")
        revoked = network.revocations.serials if network.revocations else frozenset()
        try:
            verify_certificate(
                cert, cert.authority, wall, network=network.entry.name, revoked=revoked
            )
        except CertificateRejected as exc:
            return _refuse(str(exc))
        if cert.name != name:
            return _refuse(f"the certificate is issued for {cert.name!r}, not {name!r}")
        if cert.public_key != key:
            return _refuse("the certificate is issued for another key")
        pinned = self._pinned.get(name)
        if pinned is not None and pinned != key:
            return Admission(
                False,
                RefusalReason.NAME_TAKEN,
                f"the name {name!r} is configured for a different public key",
            )
        if cert.grant is not None:
            refusal = self._use_invite(cert, key, wall)
            if refusal is not None:
                return refusal
        return Admission(True, network=network.id, expires_at=float(cert.details.not_after))

    def _use_invite(self, cert: Certificate, key: bytes, wall: float) -> Admission | None:
        assert cert.grant is not None
        row = self._db.execute(
            "SELECT public_key FROM invites_used WHERE serial = ?", (cert.serial,)
        ).fetchone()
        if row is not None:
            if bytes(row[0]) == key:
                return None
            return _refuse(
                f"the invite for {cert.name!r} was already used by another machine; "
                "ask for a new one"
            )
        if wall >= cert.grant.redeem_by:
            return _refuse(f"the invite for {cert.name!r} has expired; ask for a new one")
        try:
            self._db.execute(
                "INSERT INTO invites_used (serial, public_key, name, used) VALUES (?, ?, ?, ?)",
                (cert.serial, key, cert.name, float(wall)),
            )
        except sqlite3.IntegrityError:
            return self._use_invite(cert, key, wall)
        log.info("invite used", name=cert.name, serial=cert.serial.hex())
        if self.on_invite is not None:
            self.on_invite(cert.serial, key, cert.name)
        return None

    def revocations(self, network: str) -> bytes | None:
        held = self._by_id.get(network)
        if held is None or held.revocations is None:
            return None
        return held.revocations.encode()

    def publish_revocations(self, network: str, blob: bytes, wall: float) -> bool:
        held = self._by_id.get(network)
        return held is not None and self._take(held, blob)

    def still_admitted(self, network: str, certificate: bytes, wall: float) -> bool:
        held = self._by_id.get(network)
        if held is None:
            return False
        try:
            cert = decode_certificate(certificate)
            revoked = held.revocations.serials if held.revocations else frozenset()
            verify_certificate(cert, held.entry.ca, wall, revoked=revoked)
        except (MembershipDecodeError, CertificateRejected):
            return False
        return True

    def learn_invite(self, serial: bytes, key: bytes, name: str) -> None:
        """Another instance of a cluster recorded the first use of invite ``serial`` (its
        record wins over one made here at the same moment)."""
        self._db.execute(
            "INSERT OR REPLACE INTO invites_used (serial, public_key, name, used)"
            " VALUES (?, ?, ?, 0)",
            (serial, key, name),
        )

    def invites_used(self) -> list[tuple[bytes, bytes, str]]:
        """Every recorded first use: (serial, key, name)."""
        rows = self._db.execute("SELECT serial, public_key, name FROM invites_used").fetchall()
        return [(bytes(serial), bytes(key), str(name)) for serial, key, name in rows]

    def held_revocations(self) -> list[tuple[str, int, bytes | None]]:
        """Every served network's id, with the number and list of the newest list held
        (-1 and None without one)."""
        return [
            (n.id, n.revocations.number, n.revocations.encode())
            if n.revocations is not None
            else (n.id, -1, None)
            for n in self._by_ca.values()
        ]

    def close(self) -> None:
        self._db.close()
