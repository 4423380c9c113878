"""miniupnpd (UPnP IGD, NAT-PMP and PCP) on a NAT lab router, for the port-mapping tests.

:func:`start_miniupnpd` runs Debian's ``miniupnpd-nftables`` in a site's router namespace
(``P-nat<i>``) with its own directory, config, lease file and PID file, and prepares the router
for it (the facts are in /work/shared/LAB-NOTES.md, "Port mapping with miniupnpd"):

- miniupnpd creates no nftables chains of its own: :func:`miniupnpd_ruleset` makes table
  ``inet miniupnpd`` with the chains it adds its rules to (``miniupnpd`` for forwarding,
  ``prerouting_miniupnpd`` for the DNAT of each mapping, ``postrouting_miniupnpd``);
- the lab's own ruleset (table ``ip lab``) drops new inbound traffic: a rule accepting what
  miniupnpd DNATed (``ct status dnat``) goes into its forward chain, as in the ``cone`` NAT;
- miniupnpd refuses to forward on a documentation-range WAN address ("reserved") unless a STUN
  test that honours CHANGE-REQUEST (RFC 5780) says the address is public: ``stun`` names such a
  server in the lab's internet (coturn on the server's two addresses,
  :func:`p2plab.coturn.start_coturn`). The router's own packets must then leave un-NATed (the
  lab's masquerade is narrowed to the LAN's sources) and the answers from the server's other
  address and port must reach the router (an input rule for the server's addresses).

``pcp=False`` drops PCP requests (version 2) at the router (a rule in miniupnpd's table), so
that the router looks like a NAT-PMP-only gateway; ``natpmp=False`` turns NAT-PMP and PCP
off (UPnP only); ``upnp=False`` turns UPnP off. :meth:`MiniUpnpd.stop` stops the daemon by
PID and removes what it left (its rules and table — miniupnpd leaves them on SIGTERM).
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from p2ptun.log import get_logger

if TYPE_CHECKING:
    from p2plab.natlab import NatLab, SiteRef

log = get_logger("lab.miniupnpd")

SERVER_PORT = 5351
"""PCP and NAT-PMP on the router's LAN address."""
HTTP_PORT = 5000
"""UPnP's description and SOAP port on the router's LAN address."""
TABLE = "miniupnpd"


@dataclasses.dataclass(frozen=True)
class Mapping:
    """One port forwarding miniupnpd made (a DNAT rule in ``prerouting_miniupnpd``)."""

    protocol: str
    external_port: int
    internal_ip: str
    internal_port: int


@dataclasses.dataclass
class MiniUpnpd:
    """A running miniupnpd on one router; :meth:`stop` (or closing the lab) ends it."""

    lab: NatLab
    router: str
    proc: subprocess.Popen[str]
    workdir: Path
    lan_ip: str
    wan_ip: str

    @property
    def pid_file(self) -> Path:
        return self.workdir / "miniupnpd.pid"

    @property
    def lease_file(self) -> Path:
        return self.workdir / "leases"

    @property
    def root_desc_url(self) -> str:
        return f"http://{self.lan_ip}:{HTTP_PORT}/rootDesc.xml"

    def log_text(self) -> str:
        path = self.workdir / "miniupnpd.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def mappings(self) -> list[Mapping]:
        """The forwardings in miniupnpd's DNAT chain (its state, as the kernel holds it)."""
        proc = self.lab.exec(
            self.router, "nft", "list", "chain", "inet", TABLE, "prerouting_miniupnpd", timeout=10
        )
        found = []
        for m in re.finditer(
            r"@nh,72,8 0x(11|6) th dport (\d+) dnat ip to ([\d.]+):(\d+)", proc.stdout, re.MULTILINE
        ):
            found.append(Mapping("udp" if m[1] == "11" else "tcp", int(m[2]), m[3], int(m[4])))
        return found

    def stop(self) -> None:
        """Stop it by PID, then remove its rules, its table and its directory."""
        self.lab.stop(self.proc)
        self.lab.exec(self.router, "nft", "delete", "table", "inet", TABLE, timeout=10)
        shutil.rmtree(self.workdir, ignore_errors=True)


def miniupnpd_ruleset(wan_if: str, lan_if: str) -> str:
    """Table ``inet miniupnpd`` with the chains miniupnpd adds to (module docstring)."""
    return f"""table inet {TABLE} {{
  chain forward {{
    type filter hook forward priority filter - 1; policy accept;
    iifname "{wan_if}" oifname "{lan_if}" jump miniupnpd
  }}
  chain miniupnpd {{
  }}
  chain prerouting {{
    type nat hook prerouting priority dstnat - 1; policy accept;
    iifname "{wan_if}" jump prerouting_miniupnpd
  }}
  chain postrouting {{
    type nat hook postrouting priority srcnat - 1; policy accept;
    oifname "{wan_if}" jump postrouting_miniupnpd
  }}
  chain prerouting_miniupnpd {{
  }}
  chain postrouting_miniupnpd {{
  }}
  chain input {{
    type filter hook input priority filter - 1; policy accept;
  }}
}}
"""


def start_miniupnpd(
    lab: NatLab,
    site: SiteRef,
    *,
    stun: tuple[str, int],
    upnp: bool = True,
    natpmp: bool = True,
    pcp: bool = True,
    stun_alt: Sequence[str] = (),
    min_lifetime: int = 120,
    timeout: float = 10.0,
) -> MiniUpnpd:
    """Start miniupnpd on ``site``'s router (module docstring) and wait until it forwards.

    ``stun`` is a STUN server honouring CHANGE-REQUEST in the lab's internet; ``stun_alt`` its
    other addresses (their answers are let in to the router)."""
    if shutil.which("miniupnpd") is None:
        raise FileNotFoundError("miniupnpd (miniupnpd-nftables) is not installed")
    s = lab.site(site)
    router = f"nat{s.index}"
    wan_if = lab.if_wan(s.index)
    lan_if = lab.if_lan(s.index)
    lan_net = s.lan_net
    workdir = Path(tempfile.mkdtemp(prefix=f"{lab.prefix}-miniupnpd{s.index}-"))
    lab.add_cleanup(lambda: shutil.rmtree(workdir, ignore_errors=True))
    masq = "masquerade fully-random" if s.nat == "sym" else "masquerade"
    servers = ", ".join(sorted({stun[0], *stun_alt}))
    rules = [
        miniupnpd_ruleset(wan_if, lan_if),
        # What miniupnpd forwards passes the lab's own forward chain too.
        f'insert rule ip lab forward iifname "{wan_if}" oifname "{lan_if}" ct status dnat accept',
        # Its STUN test: the router's own packets un-NATed, and the answers from the
        # server's other address and port let in.
        "flush chain ip lab postrouting",
        f'add rule ip lab postrouting oifname "{wan_if}" ip saddr {lan_net} {masq}',
        f'insert rule ip lab input iifname "{wan_if}" ip saddr {{ {servers} }} udp sport'
        f" {{ {stun[1]}, {stun[1] + 1} }} accept",
    ]
    if not pcp:
        # A NAT-PMP-only gateway: PCP (version 2 in the first byte, RFC 6887 §7) is dropped.
        rules.append(
            f'add rule inet {TABLE} input iifname "{lan_if}" udp dport {SERVER_PORT}'
            " @th,64,8 2 drop"
        )
    lab.exec(router, "nft", "-f", "-", input="\n".join(rules) + "\n", check=True, timeout=10)
    conf = workdir / "miniupnpd.conf"
    conf.write_text(
        "\n".join(
            [
                f"ext_ifname={wan_if}",
                f"listening_ip={lan_if}",
                f"port={HTTP_PORT}",
                f"enable_upnp={'yes' if upnp else 'no'}",
                f"enable_natpmp={'yes' if natpmp else 'no'}",
                "secure_mode=yes",
                "system_uptime=yes",
                f"uuid={uuid.uuid4()}",
                f"lease_file={workdir / 'leases'}",
                f"min_lifetime={min_lifetime}",
                "ext_perform_stun=yes",
                f"ext_stun_host={stun[0]}",
                f"ext_stun_port={stun[1]}",
                f"upnp_table_name={TABLE}",
                f"upnp_nat_table_name={TABLE}",
                "upnp_forward_chain=miniupnpd",
                "upnp_nat_chain=prerouting_miniupnpd",
                "upnp_nat_postrouting_chain=postrouting_miniupnpd",
                f"allow 1024-65535 {lan_net} 1024-65535",
                "deny 0-65535 0.0.0.0/0 0-65535",
                "",
            ]
        )
    )
    logf = (workdir / "miniupnpd.log").open("w")
    proc: subprocess.Popen[str] = lab.popen(
        router,
        ["miniupnpd", "-f", str(conf), "-d", "-P", str(workdir / "miniupnpd.pid")],
        stdout=logf,
        stderr=subprocess.STDOUT,
        text=True,
    )
    logf.close()
    daemon = MiniUpnpd(lab, router, proc, workdir, s.lan_gw, s.mapped_addr)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            text = daemon.log_text()
            daemon.stop()
            raise RuntimeError(f"miniupnpd exited ({proc.returncode}): {text.strip()[-800:]}")
        if _ready(daemon.log_text(), natpmp, upnp):
            log.info("miniupnpd up", prefix=lab.prefix, router=router, pid=proc.pid)
            return daemon
        time.sleep(0.05)
    text = daemon.log_text()
    daemon.stop()
    raise RuntimeError(f"miniupnpd did not enable forwarding within {timeout}s: {text[-800:]}")


def _ready(text: str, natpmp: bool, upnp: bool) -> bool:
    """Whether miniupnpd's log says it forwards and listens for what is enabled."""
    return (
        "Port forwarding is now enabled" in text
        and (not natpmp or "Listening for NAT-PMP/PCP traffic" in text)
        and (not upnp or "HTTP listening on port" in text)
    )


__all__ = [
    "HTTP_PORT",
    "SERVER_PORT",
    "Mapping",
    "MiniUpnpd",
    "miniupnpd_ruleset",
    "start_miniupnpd",
]
