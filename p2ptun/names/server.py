"""The answering logic of the node's DNS responder (RFC 1034/1035), sans-I/O.

:meth:`NameServer.answer` takes one query datagram and returns the response datagram (or None
for bytes that are not a DNS query worth an answer):

- not a standard query (opcode), or not exactly one question of class IN: NOTIMP / FORMERR;
- a name outside the domain: REFUSED (RFC 1035 §4.1.1: the server declines by policy; the
  node resolves nothing else, and is no open resolver);
- ``NAME.DOMAIN`` of a member: its A and AAAA records (other types: no data, NOERROR); the
  domain itself: its SOA and NS (an answer for type SOA, NS or ANY, else no data);
- any other name under the domain: NXDOMAIN (RFC 8020: nothing exists below it either), with
  the SOA in the authority section so that resolvers cache the denial (RFC 2308 §3).

Every answer is authoritative (AA) and carries a short TTL: members come and go. EDNS queries
get an EDNS answer (dnspython's ``make_response``). Wire parsing is dnspython's
(``dns.message``): its exceptions are caught here, so malformed bytes never escape as anything
but a silent drop or a FORMERR.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Records = Mapping[str, Iterable[IPAddress]]
"""Member name (one DNS label) -> its overlay addresses."""

TTL = 30
"""Seconds resolvers may keep an answer (members come and go)."""
MAX_QUERY = 4096


class NameServer:
    """Authoritative answers for one domain (module docstring)."""

    def __init__(self, domain: str, server_address: str = "") -> None:
        self.origin = dns.name.from_text(domain)
        self.server_address = server_address
        self._records: dict[dns.name.Name, tuple[IPAddress, ...]] = {}
        self.counters = {"answered": 0, "nxdomain": 0, "refused": 0, "malformed": 0}
        self._ns_name = dns.name.Name((b"ns", *self.origin.labels))
        self._soa = dns.rdata.from_text(
            dns.rdataclass.IN,
            dns.rdatatype.SOA,
            f"{self._ns_name} hostmaster.{self.origin} 1 3600 600 86400 {TTL}",
        )

    def set_records(self, records: Records) -> None:
        """Replace the members' addresses (names that are not one DNS label are left out)."""
        table: dict[dns.name.Name, tuple[IPAddress, ...]] = {}
        for name, addresses in records.items():
            try:
                label = dns.name.Name((name.encode("ascii"),))
            except (dns.exception.DNSException, UnicodeEncodeError):
                continue
            if "." in name or not name:
                continue
            table[label.concatenate(self.origin)] = tuple(addresses)
        self._records = table

    @property
    def names(self) -> list[str]:
        return sorted(str(n.relativize(self.origin)) for n in self._records)

    def answer(self, data: bytes) -> bytes | None:
        """The response to one query datagram, or None (dropped: not a query we answer)."""
        if len(data) > MAX_QUERY:
            self.counters["malformed"] += 1
            return None
        try:
            query = dns.message.from_wire(data)
        except dns.exception.DNSException:
            self.counters["malformed"] += 1
            return _formerr(data)
        except Exception:  # dnspython may raise others on hostile input; drop it
            self.counters["malformed"] += 1
            return None
        if query.flags & dns.flags.QR:
            return None  # a response: never answer one (no loops)
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        response.flags &= ~dns.flags.RA
        if query.opcode() != dns.opcode.QUERY:
            response.set_rcode(dns.rcode.NOTIMP)
            return self._wire(response)
        if len(query.question) != 1 or query.question[0].rdclass != dns.rdataclass.IN:
            response.set_rcode(dns.rcode.FORMERR)
            return self._wire(response)
        question = query.question[0]
        qname, qtype = question.name, question.rdtype
        if not qname.is_subdomain(self.origin):
            self.counters["refused"] += 1
            response.flags &= ~dns.flags.AA
            response.set_rcode(dns.rcode.REFUSED)
            return self._wire(response)
        self.counters["answered"] += 1
        if qname == self.origin:
            self._apex(response, qtype)
            return self._wire(response)
        addresses = self._records.get(qname)
        if addresses is None:
            self.counters["nxdomain"] += 1
            response.set_rcode(dns.rcode.NXDOMAIN)
            response.authority.append(self._soa_rrset())
            return self._wire(response)
        wanted: list[tuple[dns.rdatatype.RdataType, list[IPAddress]]] = []
        if qtype in (dns.rdatatype.A, dns.rdatatype.ANY):
            wanted.append((dns.rdatatype.A, [a for a in addresses if a.version == 4]))
        if qtype in (dns.rdatatype.AAAA, dns.rdatatype.ANY):
            wanted.append((dns.rdatatype.AAAA, [a for a in addresses if a.version == 6]))
        for rdtype, found in wanted:
            if found:
                rrset = dns.rrset.from_text_list(
                    qname, TTL, dns.rdataclass.IN, rdtype, [str(a) for a in found]
                )
                response.answer.append(rrset)
        if not response.answer:
            response.authority.append(self._soa_rrset())  # no data (RFC 2308 §2.2)
        return self._wire(response)

    def _apex(self, response: dns.message.Message, qtype: dns.rdatatype.RdataType) -> None:
        if qtype in (dns.rdatatype.SOA, dns.rdatatype.ANY):
            response.answer.append(self._soa_rrset())
        if qtype in (dns.rdatatype.NS, dns.rdatatype.ANY):
            response.answer.append(
                dns.rrset.from_text(
                    self.origin, TTL, dns.rdataclass.IN, dns.rdatatype.NS, str(self._ns_name)
                )
            )
        if not response.answer:
            response.authority.append(self._soa_rrset())

    def _soa_rrset(self) -> dns.rrset.RRset:
        return dns.rrset.from_rdata(self.origin, TTL, self._soa)

    @staticmethod
    def _wire(response: dns.message.Message) -> bytes:
        return response.to_wire(max_size=4096)


def _formerr(data: bytes) -> bytes | None:
    """A FORMERR for bytes whose header is at least readable (RFC 1035 §4.1.1), else None."""
    if len(data) < 12 or data[2] & 0x80:
        return None
    header = bytearray(data[:12])
    header[2] = 0x80 | (data[2] & 0x79)  # QR, keep opcode and RD
    header[3] = dns.rcode.FORMERR
    header[4:12] = bytes(8)  # no sections
    return bytes(header)
