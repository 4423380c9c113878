"""A network instead of a list of peers, in memory under virtual time (p2plab.memlab with
``network=...``): real node daemons and a real rendezvous, configured only with certificates of
the network's authority, no ``[[peer]]``.

- three members behind different NATs find each other through the rendezvous and every pair
  pings; a fourth joins later (enrolled through an invite) and reaches them without any of
  their configs changing;
- certificates of another authority, forged, expired ones are refused by the rendezvous, and a
  revoked member loses its tunnels within 5 s while online;
- a malicious rendezvous (a test double that admits anyone and announces a fake member to
  everyone) cannot make a node accept a peer whose certificate does not verify.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

import pytest
import trio
import trio.testing

from p2plab.memlab import MemoryLab, MemoryNode
from p2plab.memnet import Pinger
from p2ptun.keys import public_key
from p2ptun.membership import Certificate, Details, ed25519_public, sign_revocations
from p2ptun.signal.hub import Admission

pytestmark = pytest.mark.filterwarnings("ignore::trio.TrioDeprecationWarning")


def peer_names(node: MemoryNode) -> set[str]:
    return set(node.daemon.peers)


async def all_ping(lab: MemoryLab, nursery: trio.Nursery, nodes: Iterable[MemoryNode]) -> None:
    """Every ordered pair pings until each has a reply (30 virtual seconds at most)."""
    nodes = list(nodes)
    pingers: list[Pinger] = []
    async with trio.open_nursery() as inner:
        for a in nodes:
            for b in nodes:
                if a is not b:
                    pinger = lab.pinger(a, b, interval=0.2)
                    await inner.start(pinger.run)
                    pingers.append(pinger)
        await lab.wait_until(lambda: all(p.replies for p in pingers), 30)
        inner.cancel_scope.cancel()


async def test_members_connect_without_peer_lists_and_a_fourth_joins_later(
    autojump_clock: trio.testing.MockClock,
) -> None:
    lab = MemoryLab(network="home", seed=5)
    alice = lab.node("alice", "prc")
    bob = lab.node("bob", "cone", enrolled=True)
    carol = lab.node("carol", "sym")
    async with trio.open_nursery() as nursery:
        await lab.start(nursery)
        for node in (alice, bob, carol):
            assert node.config.peers == () and node.config.network is not None
        await lab.wait_until(lambda: all(len(n.daemon.peers) == 2 for n in lab.nodes), 15)
        await all_ping(lab, nursery, (alice, bob, carol))
        # Allowed IPs come from the certificates: bob's overlay address only.
        assert alice.daemon.peers["bob"].config.allowed_ips == (
            ipaddress.ip_network(f"{bob.overlay_ip}/32"),
        )
        configs = {n.name: n.daemon.config for n in (alice, bob, carol)}

        dave = lab.node("dave", "prc", enrolled=True)
        await lab.start_node(nursery, dave)
        await lab.wait_until(lambda: all(len(n.daemon.peers) == 3 for n in lab.nodes), 15)
        await all_ping(lab, nursery, (alice, bob, carol, dave))
        assert {n.name: n.daemon.config for n in (alice, bob, carol)} == configs
        nursery.cancel_scope.cancel()


async def test_other_authority_forged_and_expired_certificates_are_refused(
    autojump_clock: trio.testing.MockClock,
) -> None:
    lab = MemoryLab(network="home", seed=6)
    alice, bob = lab.pair("prc", "prc")
    other = lab.node("olga", "prc", authority=b"o" * 32)
    expired = lab.node("ed", "prc", valid=(-200 * 86400, -86400))
    # A forged certificate: frank's own details claiming the lab's authority, signed by
    # another key (it does not verify).
    key = lab.new_key()
    real = lab.certify("frank", key, ipaddress.ip_interface("10.77.0.9/24"), authority=b"f" * 32)
    details = Details(**{**real.details.__dict__, "authority": ed25519_public(lab.authority)})
    forged = Certificate(details, real.public_key, real.signature)
    frank = lab.node("frank", "prc", certificate=forged)
    frank.config = frank.config.__class__(**{**frank.config.__dict__, "private_key": key})
    async with trio.open_nursery() as nursery:
        await lab.start(nursery)
        await all_ping(lab, nursery, (alice, bob))
        await trio.sleep(10)
        for node in (alice, bob):
            assert peer_names(node) == {"alice", "bob"} - {node.name}
        counters = lab.signaling.core.counters
        assert counters.refused_registrations >= 3
        assert counters.member_registrations == 2
        for node in (other, expired, frank):
            assert node.daemon.signaling is not None and not node.daemon.signaling.ready
        nursery.cancel_scope.cancel()


async def test_a_revoked_member_loses_its_tunnels_within_5_s(
    autojump_clock: trio.testing.MockClock,
) -> None:
    lab = MemoryLab(network="home", seed=7)
    alice, bob = lab.pair("prc", "cone")
    carol = lab.node("carol", "prc", enrolled=True)
    async with trio.open_nursery() as nursery:
        await lab.start(nursery)
        await all_ping(lab, nursery, (alice, bob, carol))
        to_bob = lab.pinger(carol, bob, interval=0.1)
        to_alice = lab.pinger(carol, alice, interval=0.1)
        await nursery.start(to_bob.run)
        await nursery.start(to_alice.run)
        await trio.sleep(2)
        assert carol.certificate is not None
        crl = sign_revocations(
            "home",
            1,
            int(alice.host.wall_clock()),
            {carol.certificate.serial: 2**40},
            lab.authority,
        )
        revoked_at = trio.current_time()
        # 'p2ptun ca revoke' on alice's machine hands the list to alice's daemon.
        assert await alice.daemon.apply_revocations(crl.encode()) == ["carol"]
        await lab.wait_until(
            lambda: "carol" not in peer_names(bob) and "carol" not in peer_names(alice), 5
        )
        cut = trio.current_time() - revoked_at
        await trio.sleep(10)
        last = max([*to_bob.replies, *to_alice.replies])
        assert last - revoked_at < 5, f"carol still reached a member {last - revoked_at:.1f} s on"
        assert cut < 5
        # The rendezvous closed carol's registration and keeps the list for later members.
        assert lab.signaling.core.counters.members_closed >= 1
        assert peer_names(alice) == {"bob"} and peer_names(bob) == {"alice"}
        nursery.cancel_scope.cancel()


class AdmitAnyone:
    """A malicious rendezvous' memberships: every certificate admits, whatever it is."""

    def admit_member(self, name: str, key: bytes, certificate: bytes, wall: float) -> Admission:
        return Admission(True, network="evil", expires_at=wall + 86400)

    def revocations(self, network: str) -> bytes | None:
        return None

    def publish_revocations(self, network: str, blob: bytes, wall: float) -> bool:
        return False

    def still_admitted(self, network: str, certificate: bytes, wall: float) -> bool:
        return True

    def reload(self, entries: object) -> list[str]:
        return []

    def close(self) -> None:
        pass


async def test_a_malicious_rendezvous_cannot_make_a_node_accept_a_fake_member(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    import p2ptun.rendezvous.signaling as signaling

    monkeypatch.setattr(signaling, "NetworkStore", lambda *a, **k: AdmitAnyone())
    lab = MemoryLab(network="home", seed=8)
    alice, bob = lab.pair("prc", "prc")
    # mallory: a certificate of her own authority that names the lab's network, one with
    # the lab's authority but a forged signature, and bob's real certificate replayed under
    # her name (her key is not in it).
    mallory = lab.node("mallory", "prc", authority=b"m" * 32)
    key = lab.new_key()
    real = lab.certify("trudy", key, ipaddress.ip_interface("10.77.0.20/24"), authority=b"t" * 32)
    details = Details(**{**real.details.__dict__, "authority": ed25519_public(lab.authority)})
    trudy = lab.node(
        "trudy", "prc", certificate=Certificate(details, real.public_key, real.signature)
    )
    trudy.config = trudy.config.__class__(**{**trudy.config.__dict__, "private_key": key})
    assert bob.certificate is not None
    lab.node("eve", "prc", certificate=bob.certificate)
    async with trio.open_nursery() as nursery:
        await lab.start(nursery)
        await all_ping(lab, nursery, (alice, bob))
        await trio.sleep(10)
        assert lab.signaling.core.counters.member_registrations == 5  # it admitted them all
        for node in (alice, bob):
            assert peer_names(node) == {"alice", "bob"} - {node.name}
            network = node.daemon.network
            assert network is not None and sum(network.roster.refused.values()) >= 3
            refused = network.roster.refused
            # eve: bob's certificate under her name; trudy: forged; mallory: another authority.
            assert {"WRONG_NAME", "BAD_SIGNATURE", "WRONG_AUTHORITY"} <= set(refused), refused
        # mallory cannot reach them either: no WireGuard peer has her key.
        pinger = lab.pinger(mallory, alice, interval=0.2)
        await nursery.start(pinger.run)
        await trio.sleep(5)
        assert not pinger.replies
        assert public_key(mallory.config.private_key) not in {
            s.config.public_key for s in alice.daemon.peers.values()
        }
        nursery.cancel_scope.cancel()


async def test_an_invite_is_redeemed_once_and_before_its_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """``p2ptun join``'s redemption against the real rendezvous: the first key under an
    invite is admitted (again after a reconnect), another key is refused with the reason, and
    so is an unused invite past its deadline."""
    from p2plab.memnet import EPOCH
    from p2ptun.errors import UsageError
    from p2ptun.join import redeem
    from p2ptun.membership import Invite, sign_grant

    lab = MemoryLab(network="home", seed=9)
    lab.node("alice", "prc")
    async with trio.open_nursery() as nursery:
        await lab.start(nursery)
        rv_key = public_key(lab.rendezvous_key)

        def invite(name: str, serial: bytes, redeem_by: float) -> Invite:
            details = Details(
                network="home",
                name=name,
                serial=serial,
                addresses=(ipaddress.ip_interface("10.77.0.40/24"),),
                routes=(),
                groups=(),
                not_before=int(EPOCH),
                not_after=int(EPOCH + 86400 * 30),
                authority=ed25519_public(lab.authority),
            )
            seed = lab.rng.randbytes(32)
            grant = sign_grant(details, int(redeem_by), ed25519_public(seed), lab.authority)
            return Invite(grant, seed, "203.0.113.10:7070", rv_key, "home")

        host = lab.site("prc").host("newbie")
        token = invite("nas", b"n" * 16, EPOCH + 3600)
        key = lab.new_key()
        await redeem(host, token, key, token.enroll(public_key(key)).encode())
        await redeem(host, token, key, token.enroll(public_key(key)).encode())  # same key: fine
        thief = lab.new_key()
        with pytest.raises(UsageError, match="already used by another machine"):
            await redeem(host, token, thief, token.enroll(public_key(thief)).encode())
        late = invite("tv", b"t" * 16, trio.current_time() + EPOCH - 1)
        with pytest.raises(UsageError, match="invite for 'tv' has expired"):
            await redeem(host, late, key, late.enroll(public_key(key)).encode())
        nursery.cancel_scope.cancel()
