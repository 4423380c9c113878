"""What a node changes in its host's routing for subnet routes and the exit node.

:mod:`p2ptun.node.routes` decides (which advertised routes our certificate signs, which peer
is the exit node); :mod:`p2ptun.net.forwarding` writes the texts. :class:`HostRouting` holds
what is in force on the host and brings it to what was decided, through the
:class:`~p2ptun.net.ports.Host`:

- **IP forwarding** per family of the forwarded routes (left on at exit: other programs may
  rely on it);
- **our nftables table** ``inet p2ptun-<iface>``: masquerade and MSS clamping of forwarded
  packets, the exit node's mark; written only when its text changes. A marker file beside the
  control socket says a table may exist, so that a start after a crash looks for one (running
  ``nft`` costs ~13 ms) only when a run left one;
- **the exit node's policy routing** (rules and a table of its own, by ``fwmark``), cleared
  first at start (a crashed run's) and at stop.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from typing import Any

from p2ptun.config import InterfaceConfig, IPNetwork
from p2ptun.errors import P2ptunError
from p2ptun.log import get_logger
from p2ptun.net.forwarding import lan_prefixes, nft_ruleset
from p2ptun.net.ports import Host
from p2ptun.node.routes import ExitDecision, split_advertised

log = get_logger("p2ptun.node")

ExitRouting = tuple[tuple[IPNetwork, ...], tuple[IPNetwork, ...]]
"""The exit routing in force: (default routes through the tunnel, LAN prefixes taken too)."""


class HostRouting:
    """Forwarding, nftables and exit routing of one node's interface (module docstring)."""

    def __init__(self, host: Host, interface: str, marker: str | None) -> None:
        """``marker``: the file that exists while our nftables table may (None: no marker,
        always look for a table at start, as a node without a control socket does)."""
        self.host = host
        self.interface = interface
        self._marker = marker
        #: Advertised routes forwarded, and refused (not in our certificate).
        self.forwarded: tuple[IPNetwork, ...] = ()
        self.refused: tuple[IPNetwork, ...] = ()
        #: IP forwarding per family: None when on, else why it could not be turned on.
        self.forwarding: dict[int, str | None] = {}
        self.exit_applied: ExitRouting | None = None
        self._nft_applied: str | None = None

    async def start(self, iface: InterfaceConfig) -> None:
        """Remove what a crashed run left: exit rules (netlink, no program run) and, if the
        marker says one may exist, our nftables table."""
        try:
            await self.host.clear_exit_routing(iface.fwmark)
            if self._marker is None or os.path.exists(self._marker):
                await self.host.set_nftables(self.interface, None)
        except P2ptunError as exc:
            log.warning("could not check for rules a crashed run left", error=str(exc))
        self._nft_applied = None

    def _mark(self, present: bool) -> None:
        if self._marker is None:
            return
        with contextlib.suppress(OSError):
            if present:
                with open(self._marker, "w"):
                    pass
            else:
                os.unlink(self._marker)

    async def apply_forwarding(
        self, iface: InterfaceConfig, signed: tuple[IPNetwork, ...] | None
    ) -> None:
        """Forward the advertised routes ``signed`` allows (None: no certificate, all)."""
        self.forwarded, self.refused = split_advertised(iface.advertise_routes, signed)
        for route in self.refused:
            log.warning(
                "advertised route refused: not in our certificate, peers ignore it",
                route=str(route),
            )
        for version in sorted({r.version for r in self.forwarded}):
            if version not in self.forwarding or self.forwarding[version] is not None:
                error = await self.host.enable_forwarding(version)
                self.forwarding[version] = error
                if error is not None:
                    log.error(
                        f"cannot turn IPv{version} forwarding on: advertised routes of that "
                        "family will not be forwarded",
                        error=error,
                    )
        if self.forwarded:
            log.info(
                "forwarding for peers",
                routes=",".join(map(str, self.forwarded)),
                masquerade=iface.masquerade,
            )
        await self.apply_nftables(iface)

    async def apply_nftables(self, iface: InterfaceConfig) -> None:
        text = nft_ruleset(
            self.interface,
            forward=bool(self.forwarded),
            masquerade=iface.masquerade,
            mark=iface.fwmark if self.exit_applied is not None else None,
        )
        if text != self._nft_applied:
            if text is not None:
                self._mark(True)
            await self.host.set_nftables(self.interface, text)
            self._nft_applied = text
            if text is None:
                self._mark(False)

    async def apply_exit(self, iface: InterfaceConfig, decision: ExitDecision) -> ExitDecision:
        """Bring the policy routing to ``decision``: all traffic through the active exit
        node, the LAN outside the tunnel unless ``exit_node_allow_lan = false``. Returns the
        decision in force (``refused`` with the reason if the host would not take it)."""
        want = None
        if decision.state == "active":
            lan: list[IPNetwork] = []
            if not iface.exit_node_allow_lan:
                local = await self.host.local_addresses(exclude=[self.interface])
                lan = lan_prefixes([(a.address, a.prefixlen) for a in local])
            want = (decision.defaults, tuple(lan))
        if want == self.exit_applied:
            return decision
        if self.exit_applied is not None:
            await self.host.clear_exit_routing(iface.fwmark)
            self.exit_applied = None
            log.info("exit node left: direct routing restored")
        if want is not None:
            try:
                await self.host.set_exit_routing(self.interface, iface.fwmark, *want)
            except P2ptunError as exc:
                await self.host.clear_exit_routing(iface.fwmark)
                log.error("exit node not used", exit_node=decision.name, error=str(exc))
                await self.apply_nftables(iface)
                return dataclasses.replace(decision, state="refused", reason=str(exc))
            self.exit_applied = want
            log.info(
                "exit node in use",
                exit_node=decision.name,
                routes=",".join(map(str, want[0])),
                lan_through_tunnel=",".join(map(str, want[1])) or "-",
            )
        await self.apply_nftables(iface)
        return decision

    async def stop(self, fwmark: int) -> None:
        """Remove our policy rules, exit table and nftables table (shielded by the caller)."""
        with contextlib.suppress(P2ptunError):
            if self.exit_applied is not None:
                await self.host.clear_exit_routing(fwmark)
                self.exit_applied = None
        with contextlib.suppress(P2ptunError):
            if self._nft_applied is not None:
                await self.host.set_nftables(self.interface, None)
                self._nft_applied = None
                self._mark(False)

    def status(self, masquerade: bool) -> dict[str, Any]:
        """What this node advertises: forwarded, refused (not signed), forwarding per family."""
        return {
            "advertised": [str(r) for r in self.forwarded],
            "refused": [
                {"route": str(r), "reason": "not in this node's certificate"} for r in self.refused
            ],
            "masquerade": masquerade,
            "forwarding": {
                f"ipv{v}": "on" if error is None else error for v, error in self.forwarding.items()
            },
        }
