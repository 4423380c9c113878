"""A node's view of its network: the members whose certificates it verified, sans-I/O.

The rendezvous announces the online members of the network, each with its certificate; it is
not trusted with any of it. :class:`Roster` decides, for every announcement:

- the certificate decodes, names the announced name, is of this node's network, and verifies
  against the authority's public key this node was configured with (a certificate of another
  authority, a forged signature, one not yet valid or expired, or a revoked serial is refused
  with one line saying which);
- an enrolled certificate's serial is bound to one key: the first key seen under a serial is
  pinned, and another key under it is refused (a rendezvous that lets a stolen invite be
  redeemed twice still cannot show two keys to a node that saw the first);
- this node's own name is never a peer.

Revocation lists are applied only when the authority signed them and they are newer than the
one held (:meth:`Roster.apply_revocations`): the members they revoke are dropped.
:meth:`Roster.expire` drops the members whose certificate ran out; :meth:`Roster.next_expiry`
says when that is next due. Times are Unix seconds, given by the caller.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from p2ptun.membership.cert import Certificate, decode_certificate, verify_certificate
from p2ptun.membership.codec import IPInterface, IPNetwork
from p2ptun.membership.errors import CertificateRejected, Rejection
from p2ptun.membership.revocation import RevocationList, decode_revocations

MAX_PINS = 10_000


@dataclass(frozen=True)
class Member:
    """A verified member: what a node needs to make it a peer."""

    certificate: Certificate

    @property
    def name(self) -> str:
        return self.certificate.name

    @property
    def public_key(self) -> bytes:
        return self.certificate.public_key

    @property
    def addresses(self) -> tuple[IPInterface, ...]:
        return self.certificate.details.addresses

    @property
    def routes(self) -> tuple[IPNetwork, ...]:
        return self.certificate.details.routes

    @property
    def groups(self) -> tuple[str, ...]:
        return self.certificate.details.groups

    @property
    def not_after(self) -> int:
        return self.certificate.details.not_after

    def allowed_ips(self) -> tuple[IPNetwork, ...]:
        """What the member may send from and receive: each overlay address as a host
        prefix, then its routes (WireGuard's cryptokey routing)."""
        hosts = tuple(a.network.__class__(f"{a.ip}/{a.max_prefixlen}") for a in self.addresses)
        return hosts + tuple(r for r in self.routes if r not in hosts)


class Roster:
    """The verified members of one network, as one node sees them (module docstring)."""

    def __init__(self, authority: bytes, network: str, own_name: str) -> None:
        self.authority = authority
        self.network = network
        self.own_name = own_name
        self.members: dict[str, Member] = {}
        self.revocations: RevocationList | None = None
        self._pins: OrderedDict[bytes, bytes] = OrderedDict()
        #: Certificates refused, by reason (for status and tests).
        self.refused: dict[str, int] = {}

    @property
    def revoked(self) -> frozenset[bytes]:
        return frozenset() if self.revocations is None else self.revocations.serials

    def verify(self, cert: Certificate, now: float) -> None:
        """Raise :class:`CertificateRejected` unless ``cert`` is a valid, unrevoked certificate
        of this network."""
        verify_certificate(cert, self.authority, now, network=self.network, revoked=self.revoked)

    def consider(self, name: str, blob: bytes, now: float) -> Member:
        """Verify the certificate the rendezvous announced for ``name``; the member it makes
        (stored), or :class:`~p2ptun.membership.errors.MembershipDecodeError` /
        :class:`CertificateRejected`."""
        try:
            cert = decode_certificate(blob)
            if cert.name != name:
                raise CertificateRejected(
                    Rejection.WRONG_NAME,
                    f"the certificate announced for {name!r} is issued for {cert.name!r}",
                )
            if name == self.own_name:
                raise CertificateRejected(
                    Rejection.WRONG_NAME, f"a member announced with this node's name {name!r}"
                )
            self.verify(cert, now)
            pinned = self._pins.get(cert.serial)
            if pinned is not None and pinned != cert.public_key:
                raise CertificateRejected(
                    Rejection.WRONG_KEY,
                    f"the certificate of {name!r} binds another key than the one seen first "
                    "under its serial (an invite redeemed twice?)",
                )
        except (CertificateRejected, ValueError) as exc:
            reason = exc.reason.name if isinstance(exc, CertificateRejected) else "MALFORMED"
            self.refused[reason] = self.refused.get(reason, 0) + 1
            raise
        self._pins[cert.serial] = cert.public_key
        self._pins.move_to_end(cert.serial)
        while len(self._pins) > MAX_PINS:
            self._pins.popitem(last=False)
        member = Member(cert)
        self.members[name] = member
        return member

    def forget(self, name: str) -> None:
        self.members.pop(name, None)

    def apply_revocations(self, blob: bytes, now: float) -> list[str]:
        """Take a revocation list (raises MembershipDecodeError or CertificateRejected, also
        for one not newer than the one held); the names of the members it revokes, who are
        dropped."""
        crl = decode_revocations(blob)
        crl.verify(self.authority, self.network)
        held = self.revocations
        if held is not None and crl.number <= held.number:
            raise CertificateRejected(
                Rejection.STALE,
                f"revocation list {crl.number} is not newer than {held.number}",
            )
        self.revocations = crl
        gone = [n for n, m in self.members.items() if m.certificate.serial in crl.serials]
        for name in gone:
            del self.members[name]
        return gone

    def expire(self, now: float) -> list[str]:
        """Drop the members whose certificates have expired by ``now``; their names."""
        gone = [n for n, m in self.members.items() if now >= m.not_after]
        for name in gone:
            del self.members[name]
        return gone

    def next_expiry(self) -> float | None:
        """When :meth:`expire` next drops a member (Unix seconds), or None."""
        return min((float(m.not_after) for m in self.members.values()), default=None)
