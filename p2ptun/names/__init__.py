"""Names of a network's members in DNS, sans-I/O: a query's bytes in, the answer's bytes out.

:class:`~p2ptun.names.server.NameServer` answers for one domain (``[network] domain``, e.g.
``home``): ``NAME.home`` has the A and AAAA records of the member's certificate, any other name
under the domain is NXDOMAIN, and everything outside it is REFUSED (the node is no resolver).
The wire format is dnspython's. The node's shell (:mod:`p2ptun.node.names`) serves it on the
overlay address and registers it with systemd-resolved.
"""

from __future__ import annotations

from p2ptun.names.server import NameServer, Records

__all__ = ["NameServer", "Records"]
