"""The README's guide "Link your machines", command by command, in the NAT lab; then the
network it builds: more members, refused certificates, a revocation.

The lab: the public server is the VPS (``203.0.113.10``, the address the guide uses), sites
behind NATs of different kinds are the laptop (port-restricted), the NAS (symmetric), a PC
(full cone) and, later, a TV (port-restricted). Each is a :class:`p2plab.machine.Machine`:
its own ``/etc``, ``/opt``, ``/usr/local``, ``/var/lib`` and ``/run`` (overlays in the test's
directory), so that ``scripts/install``, ``p2ptun join`` and the ``systemctl`` lines run
exactly as on a real machine (the install with the test machine's network: the lab cannot
reach the package index); ``systemctl`` is the lab's stand-in (:mod:`p2plab.systemctl`:
units from ``/etc/systemd/system``, ``Type=notify`` waited for). The guide's shell blocks are
read from README.md itself and run in its order; a value one block prints as ``NAME=value``
is handed to the later blocks, as the reader copies it. Where systemd-resolved would send
``*.home`` to the node's DNS, the lab machine's ``/etc/resolv.conf`` names the node's own
overlay address (the lab has no resolved).

Then, with the same commands: a third member, all pairs ping by name; a fourth joins later and
reaches the others while their configs stay as they were; a certificate of another authority,
a forged one and an expired one are refused (by ``p2ptun check`` and by the rendezvous); a
member revoked with ``p2ptun ca revoke`` on the laptop loses its tunnels within 5 s.

Slow: each machine installs p2ptun into its own virtualenv (pip's cache makes the later ones
quick).
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from p2plab.bench import parse_reply
from p2plab.machine import Machine
from p2plab.natlab import NatLab, wait_until

pytestmark = [pytest.mark.lab, pytest.mark.slow]

LabFactory = Callable[..., NatLab]
REPO = Path(__file__).resolve().parents[2]
HOSTS = {"vps": "server", "laptop": "site1", "nas": "site2", "pc": "site3", "tv": "site4"}
ADDRESSES = {"laptop": "10.77.0.1", "nas": "10.77.0.2", "pc": "10.77.0.3", "tv": "10.77.0.4"}
CA = "/etc/p2ptun/ca"
LAB_ALLOW_PEERS = 'allow_peers = ["192.0.2.0/24", "198.51.100.0/24"]\n'
"""Appended to the guide's ``[turn]`` section in the lab (see the first test)."""
PRINTED = re.compile(r"^([A-Z_]+)=(\S+)$")
VENV_PYTHON = "/opt/p2ptun/venv/bin/python"
PIP_ENV = {k: v for k, v in os.environ.items() if k.startswith("PIP_") or k.endswith("_proxy")}
"""How pip reaches the package index from the test machine (its settings, any proxy)."""

REGISTER = """
import sys, trio
from p2ptun.keys import decode_key
from p2ptun.membership import read_certificate_text
from p2ptun.net.signaling import SignalingClient
from p2ptun.net.system import SystemHost
from p2ptun.signal.client import RegisteredEvent, RegistrationRefused

name, key_file, cert_file, rv_key = sys.argv[1:5]
cert = read_certificate_text(open(cert_file).read())

async def main():
    client = SignalingClient(SystemHost(), name=name,
        private_key=decode_key(open(key_file).read()), rendezvous=("203.0.113.10", 7070),
        rendezvous_key=decode_key(rv_key), peers={}, certificate=cert.encode())
    async with trio.open_nursery() as nursery:
        await nursery.start(client.run)
        with trio.move_on_after(20):
            async for event in client.events:
                if isinstance(event, RegisteredEvent):
                    print("registered"); break
                if isinstance(event, RegistrationRefused):
                    print("refused:", event.text); break
        client.stop()
        nursery.cancel_scope.cancel()

trio.run(main)
"""
"""Registers once with the rendezvous as a member with a given certificate, as a node would;
prints the outcome (the daemon itself refuses to start with a bad certificate)."""

FORGE = """
import sys
from dataclasses import replace
from p2ptun.membership import Certificate, read_certificate_text
real = read_certificate_text(open(sys.argv[1]).read())   # signed by another authority
ours = read_certificate_text(open(sys.argv[2]).read())   # any certificate of ours
details = replace(real.details, authority=ours.details.authority)
print(Certificate(details, real.public_key, real.signature).to_text(), end="")
"""
"""A certificate that claims our authority but carries another authority's signature."""


def guide_blocks() -> list[tuple[list[str], str]]:
    """The guide's shell blocks in order: (machines, script)."""
    text = (REPO / "README.md").read_text()
    start = text.index("## Link your machines")
    end = text.index("\n## ", start + 1)
    section = text[start:end]
    blocks = re.findall(r"<!-- guide: ([a-z ]+) -->\n```sh\n(.*?)```", section, re.S)
    assert blocks, "no guide blocks in README.md"
    return [(names.split(), script) for names, script in blocks]


@dataclass
class World:
    lab: NatLab
    root: Path
    clone: Path
    machines: dict[str, Machine] = field(default_factory=dict)
    variables: dict[str, str] = field(default_factory=dict)

    def machine(self, name: str) -> Machine:
        if name not in self.machines:
            machine = Machine(self.lab, HOSTS[name], self.root / name).up()
            self.machines[name] = machine
            if name in ADDRESSES:  # what systemd-resolved would do for *.home
                resolv = machine.file("/etc/resolv.conf")
                resolv.parent.mkdir(parents=True, exist_ok=True)
                resolv.write_text(f"nameserver {ADDRESSES[name]}\nsearch home\n")
        return self.machines[name]

    def run(self, name: str, script: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
        # The install downloads from the package index, which the lab cannot reach: it runs
        # on the machine's files with the test machine's network.
        result = self.machine(name).run(
            script,
            env={**self.variables, **({} if "scripts/install" not in script else PIP_ENV)},
            cwd=self.clone,
            host_network="scripts/install" in script,
            **kwargs,  # type: ignore[arg-type]
        )
        for line in result.stdout.splitlines():
            match = PRINTED.match(line.strip())
            if match:
                self.variables[match.group(1)] = match.group(2)
        return result

    def status(self, name: str) -> dict[str, object]:
        import json

        result = self.run(name, "p2ptun status --json", check=False)
        return json.loads(result.stdout) if result.returncode == 0 else {}

    def peers(self, name: str) -> set[str]:
        return {str(p["name"]) for p in self.status(name).get("peers", [])}  # type: ignore[attr-defined]

    def logs(self) -> str:
        return "\n".join(m.service_logs() for m in self.machines.values())

    def join(self, name: str) -> None:
        """The guide's "another machine": an invite on the laptop, join and start there."""
        ip = ADDRESSES[name]
        self.run("laptop", f"echo TOKEN=$(p2ptun invite --ca {CA} --name {name} --ip {ip}/24)")
        self.run(name, "./scripts/install")
        self.run(name, 'p2ptun join "$TOKEN"\nsystemctl enable --now p2ptun@p2p0')

    def ping_by_name(self, src: str, dst: str, timeout: float = 40.0) -> None:
        """``ping NAME.home`` from ``src`` (through its own DNS) until a reply comes."""
        result = self.run(
            src, f"ping -c 1 -i 0.2 -W 1 -w {int(timeout)} {dst}.home", check=False,
            timeout=timeout + 20,
        )  # fmt: skip
        assert result.returncode == 0, f"{src} -> {dst}.home\n{result.stdout}{self.logs()}"


@pytest.fixture(scope="module")
def world(natlab_module: LabFactory, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    lab = natlab_module(["prc", "sym", "cone", "prc"])
    root = tmp_path_factory.mktemp("guide")
    clone = root / "p2ptun"
    subprocess.run(
        ["git", "clone", "--quiet", "--no-local", str(REPO), str(clone)], check=True, timeout=120
    )
    world = World(lab, root, clone)
    try:
        yield world
    finally:
        for machine in world.machines.values():
            machine.close()


def test_the_guide_links_two_machines(world: World) -> None:
    for names, script in guide_blocks():
        for name in names:
            world.run(name, script, timeout=600)
            if name == "vps" and "[turn]" in script:
                # The one step that is not the guide's: the lab's "public" addresses are
                # documentation blocks, which a relay refuses by default (RFC 6890), so the
                # lab's rendezvous opens them to its relay, as every lab config does.
                config = world.machine("vps").file("/etc/p2ptun/rendezvous.toml")
                with config.open("a") as f:
                    f.write(LAB_ALLOW_PEERS)
    world.ping_by_name("nas", "laptop")
    dig = world.run("nas", "dig +short @10.77.0.2 laptop.home; dig @10.77.0.1 tv.home; "
                           "dig @10.77.0.1 example.com")  # fmt: skip
    lines = dig.stdout.splitlines()
    assert lines[0] == "10.77.0.1", dig.stdout
    assert "status: NXDOMAIN" in dig.stdout and "status: REFUSED" in dig.stdout


def test_a_third_member_then_a_fourth_that_joins_later(world: World) -> None:
    world.join("pc")
    members = ["laptop", "nas", "pc"]
    for src in members:
        for dst in members:
            if src != dst:
                world.ping_by_name(src, dst)
    configs = {n: world.machine(n).file("/etc/p2ptun/p2p0.toml").read_text() for n in members}
    world.join("tv")
    for other in members:
        world.ping_by_name("tv", other)
        world.ping_by_name(other, "tv")
    assert {n: world.machine(n).file("/etc/p2ptun/p2p0.toml").read_text() for n in members} == (
        configs
    )
    assert "peer" not in configs["nas"]  # no [[peer]]: the members come from the rendezvous


def test_other_authority_forged_and_expired_certificates_are_refused(world: World) -> None:
    rv_key = world.variables["RV_KEY"]
    world.run(
        "tv",
        "mkdir -p /var/lib/mallory && cd /var/lib/mallory && (umask 077; p2ptun genkey > m.key)\n"
        "p2ptun ca init --network home --domain home --out /var/lib/mallory/other\n"
        "p2ptun ca sign --ca /var/lib/mallory/other --name mallory --ip 10.77.0.66/24 "
        '--pubkey "$(p2ptun pubkey < m.key)" > other.cert\n'
        f"{VENV_PYTHON} -c '{FORGE}' other.cert /etc/p2ptun/p2p0.cert > forged.cert",
    )
    world.run(
        "laptop",
        "mkdir -p /var/lib/mallory && cd /var/lib/mallory && (umask 077; p2ptun genkey > m.key)\n"
        f"p2ptun ca sign --ca {CA} --name mallory --ip 10.77.0.66/24 "
        '--pubkey "$(p2ptun pubkey < m.key)" --valid 1s > expired.cert',
    )
    time.sleep(2)
    expired = world.machine("laptop").file("/var/lib/mallory/expired.cert").read_text()
    world.machine("tv").file("/var/lib/mallory/expired.cert").write_text(expired)
    laptop_key = world.machine("laptop").file("/var/lib/mallory/m.key").read_text()
    world.machine("tv").file("/var/lib/mallory/e.key").write_text(laptop_key)
    for cert, key, rv_reason, reason in (
        ("other.cert", "m.key", "a network this rendezvous does not serve", "another network"),
        ("forged.cert", "m.key", "forged or damaged signature", "forged or damaged signature"),
        ("expired.cert", "e.key", "has expired", "has expired"),
    ):
        result = world.run(
            "tv",
            f"cd /var/lib/mallory && {VENV_PYTHON} -c '{REGISTER}' mallory {key} {cert} {rv_key}",
        )
        assert result.stdout.startswith("refused:") and rv_reason in result.stdout, result.stdout
        # The node itself refuses to start with it: one line, exit 2.
        config = (
            f'name = "mallory"\nprivate_key_file = "{key}"\n[interface]\nname = "p2pm"\n'
            'address = ["10.77.0.66/24"]\n[rendezvous]\naddress = "203.0.113.10:7070"\n'
            f'public_key = "{rv_key}"\n[network]\nca = "{world.variables["CA_KEY"]}"\n'
            f'cert_file = "{cert}"\n'
        )
        world.machine("tv").file("/var/lib/mallory/m.toml").write_text(config)
        check = world.run("tv", "cd /var/lib/mallory && p2ptun check -c m.toml", check=False)
        assert check.returncode == 2 and reason in check.stderr, check.stderr
        assert check.stderr.count("\n") == 1
    for name in ("laptop", "nas"):
        assert "mallory" not in world.peers(name)


def test_a_revoked_member_loses_its_tunnels_within_5_s(world: World) -> None:
    stream = world.root / "pc-ping.txt"
    with stream.open("w") as out:
        ping = world.machine("pc").popen(
            ["ping", "-D", "-n", "-i", "0.2", "-W", "1", "-w", "40", ADDRESSES["nas"]],
            stdout=out,
            stderr=subprocess.DEVNULL,
        )
    try:
        world.ping_by_name("pc", "nas")
        result = world.run("laptop", f"p2ptun ca revoke --ca {CA} pc")
        revoked_at = time.time()
        assert "published through the node on p2p0" in result.stdout, result.stdout
        wait_until(
            lambda: "pc" not in world.peers("nas") and "pc" not in world.peers("laptop"),
            5.0,
            interval=0.2,
            what="pc removed",
        )
        time.sleep(6)
    finally:
        ping.terminate()
        ping.wait(timeout=10)
    replies = [r[0] for line in stream.read_text().splitlines() if (r := parse_reply(line))]
    assert replies and replies[0] < revoked_at, "pc never reached nas before the revocation"
    last = max(replies)
    assert last - revoked_at < 5, f"pc still reached nas {last - revoked_at:.1f} s after"
    # And the revoked member cannot come back: the rendezvous refuses it from now on.
    world.run("pc", "systemctl restart p2ptun@p2p0", check=False)
    time.sleep(3)
    assert "pc" not in world.peers("nas")
