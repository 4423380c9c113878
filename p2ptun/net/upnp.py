"""UPnP IGD port mapping through miniupnpc's Python binding (the last resort after PCP and
NAT-PMP, :mod:`p2ptun.net.portmap`).

UPnP is SSDP discovery (multicast HTTP over UDP), an XML device description and SOAP calls: a
lot of text protocol for one mapping, which miniupnpc — the client library of miniupnpd's
author, packaged by Debian (``python3-miniupnpc``) and on PyPI with wheels — already does well.
Its calls block and open their own sockets, so they run on trio's worker threads, each bounded
by the caller and abandoned when cancelled (a node stopping during the search does not wait
for it), and this is the one part of the node whose I/O does not go through the Host (the
memory network has no UPnP gateway to offer). Without the binding UPnP is skipped, with the
reason in status.

Only the default gateway is used: an IGD found by discovery whose control URL is on another
host is refused (UPnP Device Architecture 1.1 §1.3: any device may answer the search).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import trio

from p2ptun.addr import Address
from p2ptun.errors import RuntimeFailure
from p2ptun.log import get_logger

log = get_logger("net.upnp")

#: The SSDP search waits this long for answers (milliseconds, miniupnpc's discoverdelay).
DISCOVER_MS = 500
#: Lease we ask for; renewed at half (an IGD that only grants permanent leases gets 0, and a
#: permanent mapping is deleted on exit like any other).
LEASE = 3600
DESCRIPTION = "p2ptun"


def available() -> str | None:
    """Why UPnP cannot be used here (the binding is missing), or None."""
    try:
        import miniupnpc  # noqa: F401
    except ImportError:
        return "UPnP needs the miniupnpc Python module"
    return None


@dataclass
class UpnpMapping:
    """A mapping made on the gateway's IGD: what :func:`renew` and :func:`delete` need."""

    igd: Any  # miniupnpc.UPnP, with its IGD selected
    gateway: str
    internal: Address
    external: Address
    lease: int


def _map(gateway: str, internal: Address, external_port: int | None) -> UpnpMapping:
    """Blocking: discover, check the IGD is the gateway, map (same port first, else any)."""
    import miniupnpc

    igd = miniupnpc.UPnP(discoverdelay=DISCOVER_MS, multicastif=internal[0])
    try:
        found = igd.discover()
    except Exception:  # the binding raises bare Exceptions; "Success" when nobody answered
        found = 0
    if not found:
        raise RuntimeFailure("no UPnP IGD answered the search")
    try:
        control = igd.selectigd()
    except Exception as exc:
        raise RuntimeFailure(f"no UPnP IGD among the devices that answered ({exc})") from None
    host = urlsplit(str(control)).hostname or ""
    if host != gateway:
        raise RuntimeFailure(f"UPnP IGD at {host or '?'} is not the default gateway {gateway}")
    try:
        public = str(ipaddress.IPv4Address(str(igd.externalipaddress())))
    except (Exception, ValueError) as exc:
        raise RuntimeFailure(f"UPnP on {gateway}: no external address ({exc})") from None
    want = external_port or internal[1]
    for lease in (LEASE, 0):
        try:
            if igd.addportmapping(want, "UDP", internal[0], internal[1], DESCRIPTION, "", lease):
                return UpnpMapping(igd, gateway, internal, (public, want), lease)
        except Exception as exc:
            log.debug("upnp add failed", port=want, lease=lease, error=str(exc))
        try:  # the port is taken (or the IGD wants another lease): let it choose (IGD v2)
            port = int(
                igd.addanyportmapping(want, "UDP", internal[0], internal[1], DESCRIPTION, "", lease)
            )
            if 0 < port < 65536:
                return UpnpMapping(igd, gateway, internal, (public, port), lease)
        except Exception as exc:
            log.debug("upnp add-any failed", port=want, lease=lease, error=str(exc))
    raise RuntimeFailure(f"UPnP on {gateway} refused a mapping of UDP port {internal[1]}")


def _renew(mapping: UpnpMapping) -> None:
    igd = mapping.igd
    ext = mapping.external
    try:
        ok = igd.addportmapping(
            ext[1], "UDP", mapping.internal[0], mapping.internal[1], DESCRIPTION, "", mapping.lease
        )
    except Exception as exc:
        raise RuntimeFailure(f"UPnP on {mapping.gateway}: renewal refused ({exc})") from None
    if not ok:
        raise RuntimeFailure(f"UPnP on {mapping.gateway}: renewal refused")


def _delete(mapping: UpnpMapping) -> None:
    try:
        mapping.igd.deleteportmapping(mapping.external[1], "UDP")
    except Exception as exc:
        log.debug("upnp delete failed", error=str(exc))


async def map_port(
    gateway: str, internal: Address, external_port: int | None = None
) -> UpnpMapping:
    """Map UDP ``internal`` on the gateway's IGD (bound it from outside: a cancelled call's
    thread finishes on its own); raises :class:`RuntimeFailure` with the reason."""
    return await trio.to_thread.run_sync(
        _map, gateway, internal, external_port, abandon_on_cancel=True
    )


async def renew(mapping: UpnpMapping) -> None:
    await trio.to_thread.run_sync(_renew, mapping, abandon_on_cancel=True)


async def delete(mapping: UpnpMapping) -> None:
    await trio.to_thread.run_sync(_delete, mapping, abandon_on_cancel=True)


__all__ = ["LEASE", "UpnpMapping", "available", "delete", "map_port", "renew"]
