"""The ``cluster`` section of ``scripts/bench``: a rendezvous cluster under many nodes.

``python -m p2plab.cluster_bench [--instances N] [--nodes M] [--pairs P]`` prints one table.
Not a test (``tests/interop/test_rendezvous_cluster.py`` and
``tests/e2e/test_cluster_failover.py`` are): the numbers depend on the machine.

Setup, on loopback (no lab, no root): one redis-server (:mod:`p2plab.redislab`), N
``p2ptun rendezvous`` processes sharing it (every node listed in ``[[node]]``, so a node's key
is known under load), and M simulated nodes in this one process: each a real
:class:`~p2ptun.net.signaling.SignalingClient` with its own keys, its own loopback source
address (127.x.y.z, so that the per-source limits of the hub see one node per address, as on
the internet) and every instance's address, its own first. Node ``i`` is on instance
``i mod N`` and lists node ``i xor 1`` (on the next instance) as its peer.

Columns:

- registration: from the first connect until all M nodes are registered and see their
  peer online (presence crossed instances);
- memory per node: the growth of each instance's RSS (``/proc/PID/status`` VmRSS) from before
  the nodes connected to after, divided by the nodes it holds;
- signaling latency: P sealed offers, each from a node to its peer on another instance, from
  :meth:`~p2ptun.net.signaling.SignalingClient.offer` to the peer receiving it (median, p99);
- failover: instance 0 is SIGKILLed; the time until every node it held is registered on
  another instance.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import trio

from p2plab.redislab import RedisServer, free_port
from p2ptun.keys import encode_key, generate_private_key, public_key
from p2ptun.net.ports import Connection
from p2ptun.net.signaling import SignalingClient
from p2ptun.net.system import SystemHost
from p2ptun.signal.seal import Offer


class SourceHost(SystemHost):
    """The machine, connecting from one loopback address of its own."""

    def __init__(self, local_ip: str) -> None:
        super().__init__()
        self.local_ip = local_ip

    async def connect_tcp(
        self,
        host: str,
        port: int,
        *,
        local_ip: str | None = None,
        keepalive: tuple[int, int, int] | None = None,
    ) -> Connection:
        return await super().connect_tcp(host, port, local_ip=self.local_ip, keepalive=keepalive)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run(instances: int, nodes: int, pairs: int, workdir: Path) -> list[tuple[str, str]]:
    rv_key = generate_private_key()
    keys = [generate_private_key() for _ in range(nodes)]
    names = [f"n{i}" for i in range(nodes)]
    node_list = "".join(
        f'[[node]]\nname = "{n}"\npublic_key = "{encode_key(public_key(k))}"\n'
        for n, k in zip(names, keys, strict=True)
    )
    redis = RedisServer()
    redis.start()
    procs: list[subprocess.Popen[bytes]] = []
    ports = [free_port() for _ in range(instances)]
    rows: list[tuple[str, str]] = []
    try:
        for i, port in enumerate(ports):
            cfg = workdir / f"rv{i}.toml"
            cfg.write_text(
                f'listen = "127.0.0.1:{port}"\nprivate_key = "{encode_key(rv_key)}"\n'
                f'database = "{workdir}/rv{i}.sqlite"\n'
                f'[cluster]\nredis = "{redis.url}"\ninstance = "rv{i}"\npresence_ttl = 6\n'
                + node_list
            )
            with (workdir / f"rv{i}.log").open("wb") as log:
                procs.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "p2ptun", "rendezvous", "-c", str(cfg)],
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                )
        for port in ports:
            while True:
                try:
                    stream = await trio.open_tcp_stream("127.0.0.1", port)
                except OSError:
                    await trio.sleep(0.1)
                    continue
                await stream.aclose()
                break
        await trio.sleep(1.0)  # linked to Redis
        rss_before = [rss_kib(p.pid) for p in procs]
        clients = []
        for i in range(nodes):
            home = i % instances
            order = [ports[(home + k) % instances] for k in range(instances)]
            partner = i ^ 1 if (i ^ 1) < nodes else (i - 1)
            n = i + 2  # 127.1.0.2, 127.1.0.3, ...
            host = SourceHost(f"127.{1 + (n >> 16)}.{(n >> 8) & 255}.{n & 255}")
            clients.append(
                SignalingClient(
                    host,
                    name=names[i],
                    private_key=keys[i],
                    rendezvous=[("127.0.0.1", p) for p in order],
                    rendezvous_key=public_key(rv_key),
                    peers={names[partner]: public_key(keys[partner])},
                    buffer=16,
                )
            )
        async with trio.open_nursery() as nursery:
            start = trio.current_time()
            for client in clients:
                await nursery.start(client.run)
            for i, client in enumerate(clients):
                partner = i ^ 1 if (i ^ 1) < nodes else (i - 1)
                await client.wait_online(names[partner])
            registered = trio.current_time() - start
            rows.append((f"registration of {nodes} nodes", f"{registered:.1f} s"))
            await trio.sleep(2.0)
            rss_after = [rss_kib(p.pid) for p in procs]
            per_instance = [len(range(i, nodes, instances)) for i in range(instances)]
            per_node = [
                (after - before) * 1024 / count
                for before, after, count in zip(rss_before, rss_after, per_instance, strict=True)
            ]
            rows.append(
                (
                    "memory per node per instance",
                    ", ".join(f"{b / 1024:.1f} KiB" for b in per_node),
                )
            )
            latencies = []
            for k in range(min(pairs, nodes // 2)):
                a, b = clients[2 * k], clients[2 * k + 1]
                t0 = trio.current_time()
                session = a.offer(names[2 * k + 1], "a=bench\n")
                got = await b.signals.receive()
                assert got.message == Offer(session, "a=bench\n")
                latencies.append(trio.current_time() - t0)
            rows.append(
                (
                    f"signaling latency across instances ({len(latencies)} offers)",
                    f"median {statistics.median(latencies) * 1000:.2f} ms, "
                    f"p99 {percentile(latencies, 0.99) * 1000:.2f} ms",
                )
            )
            doomed = [c for i, c in enumerate(clients) if i % instances == 0]
            procs[0].kill()
            procs[0].wait(10)
            killed = trio.current_time()
            dead = ("127.0.0.1", ports[0])
            for client in doomed:
                while not (client.ready and client.rendezvous != dead):
                    await client._wait_changed()
            moved = trio.current_time() - killed
            rows.append(
                (
                    f"failover of the {len(doomed)} nodes of a killed instance",
                    f"{moved:.2f} s",
                )
            )
            for client in clients:
                client.stop()
            nursery.cancel_scope.cancel()
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
        redis.close()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m p2plab.cluster_bench")
    parser.add_argument("--instances", type=int, default=3)
    parser.add_argument("--nodes", type=int, default=2000)
    parser.add_argument("--pairs", type=int, default=500, help="offers timed (default 500)")
    args = parser.parse_args(argv)
    if args.instances < 2 or args.nodes < 2:
        parser.error("at least 2 instances and 2 nodes")
    with tempfile.TemporaryDirectory(prefix="cl-bench-") as tmp:
        t0 = time.monotonic()
        rows = trio.run(partial(run, args.instances, args.nodes, args.pairs, Path(tmp)))
    title = f"rendezvous cluster: {args.instances} instances, one Redis, {args.nodes} nodes"
    width = max(len(r[0]) for r in rows)
    print(title)
    print(f"{'measure':<{width}}  value")
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    print(f"(run took {time.monotonic() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
