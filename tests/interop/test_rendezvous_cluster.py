"""Rendezvous instances sharing one real redis-server (``[cluster] redis``), over loopback.

Covers: presence and sealed messages between nodes on different instances, bindings shared;
a killed instance (a separate process, SIGKILL) whose node re-registers on another instance
within 5 s while its peer never sees it offline; a Redis restarted without its data and
repopulated by the instances; Redis unreachable at start (the instance serves its nodes and
links up once Redis is there); the client's bound on a Redis reply.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from functools import partial
from pathlib import Path

import pytest
import trio

from p2plab.redislab import RedisServer, free_port, redis_available
from p2ptun.config import (
    NetworkEntry,
    NodeEntry,
    RendezvousConfig,
    StunServerSettings,
    TurnServerSettings,
)
from p2ptun.config.rendezvous import parse_redis_url
from p2ptun.config.schema import ClusterSettings
from p2ptun.keys import encode_key, generate_private_key, public_key
from p2ptun.membership import Certificate, Details, ed25519_public, sign_revocations
from p2ptun.membership.cert import sign_certificate
from p2ptun.membership.grant import sign_grant
from p2ptun.membership.invite import Invite
from p2ptun.net.redis import RedisClient, RedisError
from p2ptun.net.signaling import SignalingClient
from p2ptun.net.system import SystemHost
from p2ptun.net.turn_relay import TurnRelay
from p2ptun.rendezvous.cluster import ALIVE, CRL_PREFIX, node_key
from p2ptun.rendezvous.metrics import RendezvousCollector
from p2ptun.rendezvous.redis_store import BINDINGS
from p2ptun.rendezvous.server import run_rendezvous
from p2ptun.rendezvous.signaling import SignalingServer, serve_signaling
from p2ptun.signal.backoff import BackoffPolicy
from p2ptun.signal.client import RegistrationRefused, RevocationsReceived
from p2ptun.signal.messages import RefusalReason
from p2ptun.signal.seal import Answer, Offer

pytestmark = pytest.mark.skipif(not redis_available(), reason="needs redis-server")

RV_KEY = generate_private_key()
FAST = BackoffPolicy(base=0.1, cap=0.5)
HOST = SystemHost()


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.close()


def cluster_config(
    tmp_path: Path, url: str, instance: str, *, nodes: tuple[NodeEntry, ...] = (), ttl: float = 3.0
) -> RendezvousConfig:
    return RendezvousConfig(
        path=str(tmp_path / f"{instance}.toml"),
        listen=("127.0.0.1", 0),
        private_key=RV_KEY,
        database=str(tmp_path / f"{instance}.sqlite"),
        open_registration=True,
        stun=None,
        turn=None,
        nodes=nodes,
        cluster=ClusterSettings(parse_redis_url(url), instance, ttl),
    )


async def start_instance(nursery: trio.Nursery, cfg: RendezvousConfig) -> SignalingServer:
    server: SignalingServer = await nursery.start(partial(serve_signaling, cfg, host=HOST))
    return server


def node(
    addresses: list[tuple[str, int]], name: str, key: bytes, peers: dict[str, bytes]
) -> SignalingClient:
    return SignalingClient(
        SystemHost(),
        name=name,
        private_key=key,
        rendezvous=addresses,
        rendezvous_key=public_key(RV_KEY),
        peers=peers,
        backoff=FAST,
    )


async def linked(server: SignalingServer) -> None:
    assert server.cluster is not None
    while not server.cluster.connected:
        await trio.sleep(0.02)


async def two_instances(
    nursery: trio.Nursery, tmp_path: Path, url: str
) -> tuple[SignalingServer, SignalingServer]:
    """Instances ``rv-a`` and ``rv-b`` on the Redis at ``url``, each linked to it."""
    a = await start_instance(nursery, cluster_config(tmp_path, url, "rv-a"))
    b = await start_instance(nursery, cluster_config(tmp_path, url, "rv-b"))
    await linked(a)
    await linked(b)
    return a, b


async def alice_and_bob(
    nursery: trio.Nursery,
    a: SignalingServer,
    b: SignalingServer,
    keys: tuple[bytes, bytes],
    peers: tuple[dict[str, bytes], dict[str, bytes]],
) -> tuple[SignalingClient, SignalingClient]:
    """alice on instance ``a``, bob on ``b`` (keys and peer lists in that order), running once
    alice sees bob online."""
    assert a.address is not None and b.address is not None
    alice = node([a.address], "alice", keys[0], peers[0])
    bob = node([b.address], "bob", keys[1], peers[1])
    await nursery.start(alice.run)
    await nursery.start(bob.run)
    await alice.wait_online("bob")
    return alice, bob


async def test_presence_and_sealed_messages_cross_instances(
    tmp_path: Path, redis: RedisServer
) -> None:
    ka, kb = generate_private_key(), generate_private_key()
    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            a, b = await two_instances(nursery, tmp_path, redis.url)
            peers = ({"bob": public_key(kb)}, {"alice": public_key(ka)})
            alice, bob = await alice_and_bob(nursery, a, b, (ka, kb), peers)
            await bob.wait_online("alice")
            assert "alice" in a.core.online and "bob" in b.core.online
            session = alice.offer("bob", "a=ice-ufrag:alic\n")
            got = await bob.signals.receive()
            assert got.peer == "alice" and got.message == Offer(session, "a=ice-ufrag:alic\n")
            assert bob.send_to("alice", Answer(session, "a=ice-ufrag:bobb\n"))
            answer = await alice.signals.receive()
            assert answer.message == Answer(session, "a=ice-ufrag:bobb\n")
            assert a.core.counters.cluster_forwarded >= 1
            assert b.core.counters.cluster_delivered >= 1
            # The metrics say so.
            text = "".join(
                s.name + str(s.labels) + str(s.value) + "\n"
                for m in RendezvousCollector(lambda: a, []).collect()
                for s in m.samples
            )
            assert "p2ptun_rendezvous_cluster_linked{}1" in text
            assert "p2ptun_rendezvous_cluster_remote_nodes{}1" in text
            assert "p2ptun_rendezvous_cluster_messages_total{'direction': 'out'}1" in text
            # The trust-on-first-use bindings are in Redis, and each instance knows both.
            client = await RedisClient.connect(HOST, parse_redis_url(redis.url))
            bound = await client.command("HGET", BINDINGS, "alice")
            assert bound == public_key(ka)
            await client.aclose()
            for server in (a, b):
                assert server.store is not None
                assert server.store.known(public_key(ka)) and server.store.known(public_key(kb))
            # Bob goes: alice hears it from the other instance.
            bob.stop()
            while alice.is_online("bob"):
                await alice._wait_changed()
            alice.stop()
            nursery.cancel_scope.cancel()


def instance_process(
    tmp_path: Path, url: str, instance: str
) -> tuple[subprocess.Popen[bytes], int]:
    """``p2ptun rendezvous -c FILE`` of one instance (README, "Running a cluster"), as its own
    process to be killed; its signaling port."""
    port = free_port()
    config = tmp_path / f"{instance}.toml"
    config.write_text(
        f'listen = "127.0.0.1:{port}"\nprivate_key = "{encode_key(RV_KEY)}"\n'
        f'database = "{tmp_path / instance}.sqlite"\nopen_registration = true\n'
        f'[cluster]\nredis = "{url}"\ninstance = "{instance}"\npresence_ttl = 3\n'
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "p2ptun", "rendezvous", "-c", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return proc, port


async def wait_port(proc: subprocess.Popen[bytes], port: int) -> int:
    while True:
        assert proc.poll() is None, "the instance process died"
        try:
            stream = await trio.open_tcp_stream("127.0.0.1", port)
        except OSError:
            await trio.sleep(0.05)
            continue
        await stream.aclose()
        return port


async def test_killed_instance_loses_its_nodes_to_another(
    tmp_path: Path, redis: RedisServer
) -> None:
    ka, kb = generate_private_key(), generate_private_key()
    proc, port = instance_process(tmp_path, redis.url, "rv-doomed")
    try:
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                await wait_port(proc, port)
                a = await start_instance(nursery, cluster_config(tmp_path, redis.url, "rv-a"))
                await linked(a)
                assert a.address is not None
                # alice tries the doomed instance first, bob is on rv-a.
                alice = node([("127.0.0.1", port), a.address], "alice", ka, {"bob": public_key(kb)})
                bob = node([a.address], "bob", kb, {"alice": public_key(ka)})
                await nursery.start(alice.run)
                await nursery.start(bob.run)
                await bob.wait_online("alice")
                await alice.wait_online("bob")
                assert alice.rendezvous == ("127.0.0.1", port)
                assert "alice" in a.core.remote_nodes
                flaps: list[bool] = []

                async def watch_presence() -> None:
                    while True:
                        flaps.append(bool(bob.is_online("alice")))
                        await bob._wait_changed()

                nursery.start_soon(watch_presence)
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(5)
                killed = trio.current_time()
                while "alice" not in a.core.online:
                    await trio.sleep(0.02)
                moved = trio.current_time() - killed
                assert moved < 5.0, moved
                await alice.wait_online("bob")
                session = bob.offer("alice", "a=ice-ufrag:bobb\n")
                got = await alice.signals.receive()
                assert got.message == Offer(session, "a=ice-ufrag:bobb\n")
                assert all(flaps), "bob saw alice offline while she moved"
                print(f"re-registered on another instance {moved:.2f} s after the kill")
                nursery.cancel_scope.cancel()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


async def test_restarted_redis_is_repopulated(tmp_path: Path, redis: RedisServer) -> None:
    ka, kb = generate_private_key(), generate_private_key()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            a, b = await two_instances(nursery, tmp_path, redis.url)
            peers = ({"bob": public_key(kb)}, {"alice": public_key(ka)})
            alice, bob = await alice_and_bob(nursery, a, b, (ka, kb), peers)
            await trio.to_thread.run_sync(redis.restart)
            url = parse_redis_url(redis.url)
            while True:
                await trio.sleep(0.2)
                try:
                    client = await RedisClient.connect(HOST, url)
                except RedisError:
                    continue
                try:
                    replies = await client.pipeline(
                        [
                            ("EXISTS", ALIVE),
                            ("HGET", BINDINGS, "alice"),
                            ("HGET", BINDINGS, "bob"),
                            ("EXISTS", node_key("alice")),
                            ("EXISTS", node_key("bob")),
                        ]
                    )
                finally:
                    await client.aclose()
                if replies == [1, public_key(ka), public_key(kb), 1, 1]:
                    break
            # And the cluster works on: a message crosses instances.
            session = alice.offer("bob", "a=x\n")
            got = await bob.signals.receive()
            assert got.message == Offer(session, "a=x\n")
            nursery.cancel_scope.cancel()


async def test_redis_unreachable_at_start(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    redis = RedisServer()  # its port, not started yet
    ka, kb = generate_private_key(), generate_private_key()
    nodes = (NodeEntry("alice", public_key(ka)), NodeEntry("bob", public_key(kb)))
    try:
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                a = await start_instance(
                    nursery, cluster_config(tmp_path, redis.url, "rv-a", nodes=nodes)
                )
                b = await start_instance(
                    nursery, cluster_config(tmp_path, redis.url, "rv-b", nodes=nodes)
                )
                assert a.address is not None and b.address is not None and a.cluster is not None
                # Nodes on one instance are served without Redis.
                alice = node([a.address], "alice", ka, {"bob": public_key(kb)})
                bob = node([a.address], "bob", kb, {"alice": public_key(ka)})
                await nursery.start(alice.run)
                await nursery.start(bob.run)
                await alice.wait_online("bob")
                while a.cluster.counters.outages == 0:
                    await trio.sleep(0.05)
                await trio.sleep(1.5)  # a few retries: still one line
                assert a.cluster.counters.outages == 1 and not a.cluster.connected
                await trio.to_thread.run_sync(redis.start)
                await linked(a)
                await linked(b)
                # Now bob moves to the other instance: the cluster carries on.
                bob.stop()
                bob2 = node([b.address], "bob", kb, {"alice": public_key(ka)})
                await nursery.start(bob2.run)
                await bob2.wait_online("alice")
                nursery.cancel_scope.cancel()
    finally:
        redis.close()
    lines = [r.getMessage() for r in caplog.records if "is unreachable" in r.getMessage()]
    assert len(lines) == 2, lines  # one per instance


async def test_a_reply_past_the_bound_ends_the_connection(redis: RedisServer) -> None:
    url = parse_redis_url(redis.url)
    client = await RedisClient.connect(HOST, url, max_reply=4096)
    await client.command("SET", "big", b"x" * 10_000)
    assert await client.command("STRLEN", "big") == 10_000
    with pytest.raises(RedisError, match="larger than 4096"):
        await client.command("GET", "big")
    assert client.closed


def member_certificate(seed: bytes, name: str, key: bytes, octet: int) -> Certificate:
    now = int(time.time())
    details = Details(
        network="home",
        name=name,
        serial=os.urandom(16),
        addresses=(ipaddress.ip_interface(f"10.9.0.{octet}/24"),),
        routes=(),
        groups=(),
        not_before=now - 60,
        not_after=now + 3600,
        authority=ed25519_public(seed),
    )
    return sign_certificate(details, public_key(key), seed)


def member(
    address: tuple[str, int], name: str, key: bytes, certificate: Certificate
) -> SignalingClient:
    return SignalingClient(
        SystemHost(),
        name=name,
        private_key=key,
        rendezvous=address,
        rendezvous_key=public_key(RV_KEY),
        peers={},
        backoff=BackoffPolicy(base=5, cap=5),  # a refused member stays away for the test
        certificate=certificate.encode(),
    )


async def test_members_and_a_revocation_cross_instances(tmp_path: Path, redis: RedisServer) -> None:
    seed = os.urandom(32)
    keys = {n: generate_private_key() for n in ("alice", "bob", "carol")}
    certs = {n: member_certificate(seed, n, k, i + 1) for i, (n, k) in enumerate(keys.items())}
    networks = (NetworkEntry(ed25519_public(seed), "home"),)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            cfg_a = replace(cluster_config(tmp_path, redis.url, "rv-a"), networks=networks)
            cfg_b = replace(cluster_config(tmp_path, redis.url, "rv-b"), networks=networks)
            a = await start_instance(nursery, cfg_a)
            b = await start_instance(nursery, cfg_b)
            await linked(a)
            await linked(b)
            assert a.address is not None and b.address is not None
            alice = member(a.address, "alice", keys["alice"], certs["alice"])
            bob = member(b.address, "bob", keys["bob"], certs["bob"])
            carol = member(b.address, "carol", keys["carol"], certs["carol"])
            for client in (alice, bob, carol):
                await nursery.start(client.run)
            # Members on one instance are announced to members on the other.
            while alice.core.members_online != {"bob", "carol"}:
                await alice._wait_changed()
            while "alice" not in bob.core.members_online:
                await bob._wait_changed()
            # alice publishes a list revoking carol through rv-a; rv-b closes carol, and bob
            # (on rv-b) receives the list to enforce it himself.
            crl = sign_revocations(
                "home", 1, int(time.time()), {certs["carol"].serial: 2**40}, seed
            )
            alice.core.publish_revocations(crl.encode())
            alice.flush()
            refused = None
            while refused is None:
                event = await carol.events.receive()
                if isinstance(event, RegistrationRefused):
                    refused = event
            assert refused.reason is RefusalReason.CERTIFICATE
            while True:
                event = await bob.events.receive()
                if isinstance(event, RevocationsReceived) and event.blob == crl.encode():
                    break
            while "carol" in alice.core.members_online:
                await alice._wait_changed()
            # The list is in Redis for instances that start later.
            client = await RedisClient.connect(HOST, parse_redis_url(redis.url))
            stored = await client.command(
                "HGET", CRL_PREFIX + ed25519_public(seed).hex().encode(), "list"
            )
            await client.aclose()
            assert stored == crl.encode()
            nursery.cancel_scope.cancel()


async def test_redis_lost_later(
    tmp_path: Path, redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    ka, kb, kc = generate_private_key(), generate_private_key(), generate_private_key()
    peers = {"alice": public_key(ka), "bob": public_key(kb), "carol": public_key(kc)}
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            a, b = await two_instances(nursery, tmp_path, redis.url)
            assert a.cluster is not None
            alice, bob = await alice_and_bob(nursery, a, b, (ka, kb), (peers, peers))
            redis.stop()
            while a.cluster.connected:
                await trio.sleep(0.05)
            # rv-a serves on: a node it knows registers, and messages between its own flow.
            carol = node([a.address], "carol", kc, peers)
            await nursery.start(carol.run)
            await carol.wait_online("alice")
            session = carol.offer("alice", "a=c\n")
            got = await alice.signals.receive()
            assert got.message == Offer(session, "a=c\n")
            await trio.sleep(2)  # several retries, one line
            lines = [r.getMessage() for r in caplog.records if "is unreachable" in r.getMessage()]
            assert len(lines) == 2, lines  # one per instance
            assert "cluster: Redis at 127.0.0.1:" in lines[0]
            await trio.to_thread.run_sync(redis.start)
            await linked(a)
            await linked(b)
            # Back together: bob sees carol, who registered while Redis was away.
            await bob.wait_online("carol")
            nursery.cancel_scope.cancel()


async def test_a_password_is_needed_and_given() -> None:
    redis = RedisServer(password="s3cret-pass")
    redis.start()
    try:
        good = parse_redis_url(redis.url)
        client = await RedisClient.connect(HOST, good)
        assert await client.command("PING") == b"PONG"
        await client.aclose()
        with pytest.raises(RedisError, match=r"WRONGPASS|invalid"):
            await RedisClient.connect(HOST, replace(good, password="wrong"))
        with pytest.raises(RedisError, match="NOAUTH"):
            await RedisClient.connect(HOST, replace(good, password=None))
    finally:
        redis.close()


async def test_malformed_cluster_messages_are_dropped_and_counted(
    tmp_path: Path, redis: RedisServer
) -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            a = await start_instance(nursery, cluster_config(tmp_path, redis.url, "rv-a"))
            await linked(a)
            assert a.cluster is not None
            client = await RedisClient.connect(HOST, parse_redis_url(redis.url))
            for junk in (b"", b"P2C1", b"P2C1\x01\x00", b"P2B1short", os.urandom(300)):
                await client.command("PUBLISH", b"p2ptun:events", junk)
            await client.command("SET", node_key("ghost"), b"P2C1\x09")  # a bad presence key
            await client.aclose()
            while a.cluster.counters.malformed < 5:
                await trio.sleep(0.02)
            assert a.core.remote_nodes == {}
            nursery.cancel_scope.cancel()


async def test_a_name_claimed_on_two_instances_at_once_goes_to_one(tmp_path: Path) -> None:
    """While Redis is away both instances bind the new name 'zed' to different keys; once
    Redis is back exactly one binding stands and the other node is refused."""
    redis = RedisServer()
    k1, k2 = generate_private_key(), generate_private_key()
    try:
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                a = await start_instance(nursery, cluster_config(tmp_path, redis.url, "rv-a"))
                b = await start_instance(nursery, cluster_config(tmp_path, redis.url, "rv-b"))
                assert a.address is not None and b.address is not None
                one = node([a.address], "zed", k1, {})
                two = node([b.address], "zed", k2, {})
                await nursery.start(one.run)
                await nursery.start(two.run)
                await one.wait_ready()
                await two.wait_ready()
                await trio.to_thread.run_sync(redis.start)
                await linked(a)
                await linked(b)
                refused: list[SignalingClient] = []

                async def watch(client: SignalingClient) -> None:
                    while True:
                        event = await client.events.receive()
                        if isinstance(event, RegistrationRefused):
                            assert event.reason is RefusalReason.NAME_TAKEN
                            refused.append(client)
                            return

                nursery.start_soon(watch, one)
                nursery.start_soon(watch, two)
                while not refused:
                    await trio.sleep(0.05)
                await trio.sleep(0.5)
                assert len(refused) == 1
                winner = two if refused[0] is one else one
                assert winner.ready
                client = await RedisClient.connect(HOST, parse_redis_url(redis.url))
                bound = await client.command("HGET", BINDINGS, "zed")
                await client.aclose()
                assert bound == public_key(k1 if winner is one else k2)
                nursery.cancel_scope.cancel()
    finally:
        redis.close()


async def test_turn_credentials_of_one_instance_allocate_on_another(
    tmp_path: Path, redis: RedisServer
) -> None:
    """Every instance runs its embedded TURN server with the shared REST secret: a node on
    rv-b gets credentials from rv-b and allocates a relay on rv-a's TURN server."""
    kb = generate_private_key()
    nodes = (NodeEntry("bob", public_key(kb)),)
    secret = "a-long-shared-rest-secret"
    configs = []
    for name, relay_ports in (("rv-a", (45000, 45099)), ("rv-b", (45100, 45199))):
        base = cluster_config(tmp_path, redis.url, name, nodes=nodes)
        turn = TurnServerSettings(
            realm="lab", relay_address="127.0.0.1", relay_ports=relay_ports, auth_secret=secret
        )
        stun = StunServerSettings((("127.0.0.1", free_port()),))
        configs.append(replace(base, stun=stun, turn=turn))
    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            a = await nursery.start(partial(run_rendezvous, configs[0], HOST))
            b = await nursery.start(partial(run_rendezvous, configs[1], HOST))
            await linked(a)
            await linked(b)
            assert b.address is not None
            bob = node([b.address], "bob", kb, {})
            await nursery.start(bob.run)
            creds = await bob.turn_credentials()
            assert creds.username.endswith(":bob")
            stun_a = configs[0].stun
            assert stun_a is not None
            relay = TurnRelay.stream(
                SystemHost(), stun_a.listen[0], creds.username, creds.password, random=os.urandom
            )
            assert await nursery.start(relay.run) is relay
            assert relay.allocated and relay.relayed[0] == "127.0.0.1"
            assert 45000 <= relay.relayed[1] <= 45099  # rv-a's relay ports
            relay.close()
            nursery.cancel_scope.cancel()


async def test_an_invite_used_on_one_instance_is_used_on_every_instance(
    tmp_path: Path, redis: RedisServer
) -> None:
    """Two machines enroll with one invite; the first registers on rv-a, the second is refused
    on rv-b, and an instance started later knows the invite is used."""
    seed = os.urandom(32)
    now = int(time.time())
    details = Details(
        network="home",
        name="dave",
        serial=os.urandom(16),
        addresses=(ipaddress.ip_interface("10.9.0.4/24"),),
        routes=(),
        groups=(),
        not_before=now - 60,
        not_after=now + 3600,
        authority=ed25519_public(seed),
    )
    enrollment = os.urandom(32)
    grant = sign_grant(details, now + 3600, ed25519_public(enrollment), seed)
    invite = Invite(grant, enrollment, "127.0.0.1:7070", bytes(32))
    k1, k2 = generate_private_key(), generate_private_key()
    networks = (NetworkEntry(ed25519_public(seed), "home"),)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            cfgs = [
                replace(cluster_config(tmp_path, redis.url, name), networks=networks)
                for name in ("rv-a", "rv-b", "rv-c")
            ]
            a = await start_instance(nursery, cfgs[0])
            b = await start_instance(nursery, cfgs[1])
            await linked(a)
            await linked(b)
            assert a.address is not None and b.address is not None and b.networks is not None
            first = member(a.address, "dave", k1, invite.enroll(public_key(k1)))
            await nursery.start(first.run)
            await first.wait_ready()
            while not b.networks.invites_used():
                await trio.sleep(0.02)
            second = member(b.address, "dave", k2, invite.enroll(public_key(k2)))
            await nursery.start(second.run)
            while True:
                event = await second.events.receive()
                if isinstance(event, RegistrationRefused):
                    break
            assert event.reason is RefusalReason.CERTIFICATE and "already used" in event.text
            c = await start_instance(nursery, cfgs[2])
            await linked(c)
            assert c.networks is not None
            assert c.networks.invites_used() == [(grant.details.serial, public_key(k1), "dave")]
            nursery.cancel_scope.cancel()


async def test_redis_over_tls(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """rediss:// with the operator's CA (``tls_ca``): linked, presence crosses; without it
    the server's certificate is not trusted and the instance says so in its one line."""
    redis = RedisServer(tls=True)
    redis.start()
    ka, kb = generate_private_key(), generate_private_key()
    try:
        url = parse_redis_url(redis.url)
        with pytest.raises(RedisError, match=r"TLS: .*certificate verify failed"):
            await RedisClient.connect(HOST, url)
        client = await RedisClient.connect(HOST, url, ca_file=redis.ca_file)
        assert await client.command("PING") == b"PONG"
        await client.aclose()
        with trio.fail_after(15):
            async with trio.open_nursery() as nursery:
                cfgs = []
                for name in ("rv-a", "rv-b"):
                    base = cluster_config(tmp_path, redis.url, name)
                    assert base.cluster is not None
                    cluster = replace(base.cluster, tls_ca=redis.ca_file)
                    cfgs.append(replace(base, cluster=cluster))
                a = await start_instance(nursery, cfgs[0])
                b = await start_instance(nursery, cfgs[1])
                untrusted = await start_instance(
                    nursery, cluster_config(tmp_path, redis.url, "rv-untrusted")
                )
                await linked(a)
                await linked(b)
                assert a.address is not None and b.address is not None
                alice = node([a.address], "alice", ka, {"bob": public_key(kb)})
                bob = node([b.address], "bob", kb, {"alice": public_key(ka)})
                await nursery.start(alice.run)
                await nursery.start(bob.run)
                await alice.wait_online("bob")
                assert untrusted.cluster is not None
                while untrusted.cluster.counters.outages == 0:
                    await trio.sleep(0.05)
                nursery.cancel_scope.cancel()
    finally:
        redis.close()
    lines = [r.getMessage() for r in caplog.records if "is unreachable" in r.getMessage()]
    assert len(lines) == 1 and "certificate verify failed" in lines[0], lines
