"""Tests for p2ptun.net.netlink.

The address filter is tested everywhere. Everything that talks to the kernel needs root and
runs inside a network namespace created here (``nt`` + 4 hex digits) and always deleted, with
veth pairs whose both ends stay inside it.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
from collections.abc import Iterator

import pytest
import trio

from p2ptun.errors import RuntimeFailure
from p2ptun.net import netlink
from p2ptun.net.netlink import (
    IFA_F_DADFAILED,
    IFA_F_DEPRECATED,
    IFA_F_TENTATIVE,
    IFF_LOOPBACK,
    IFF_RUNNING,
    IFF_UP,
    ChangeKind,
    LinkInfo,
    LocalAddress,
    NetworkChange,
    NetworkMonitor,
)

IS_ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not IS_ROOT, reason="needs root (creates network namespaces)")

UP = IFF_UP | IFF_RUNNING
ETH = LinkInfo(2, "eth0", UP, 1500)


# -- the address filter (no root needed) --------------------------------------------------------


def usable(address: str, flags: int = 0, link: LinkInfo | None = ETH, **kw: bool) -> bool:
    exclude = frozenset({"p2p0"})
    return netlink._address_usable(address, flags, link, exclude, kw.pop("ll", False), **kw)


def test_filter_accepts_global_addresses() -> None:
    assert usable("192.0.2.1")
    assert usable("2001:db8::1")
    assert usable("10.0.0.1")
    assert usable("169.254.1.1")  # IPv4 link-local is a valid (if poor) host candidate


def test_filter_rejects_loopback_and_specials() -> None:
    assert not usable("127.0.0.1")
    assert not usable("::1")
    assert not usable("0.0.0.0")
    assert not usable("224.0.0.1")
    assert not usable("ff02::1")
    assert not usable("not-an-ip")
    assert not usable("10.0.0.1", link=LinkInfo(1, "lo", UP | IFF_LOOPBACK, 65536))


def test_filter_rejects_down_missing_and_excluded_interfaces() -> None:
    assert not usable("10.0.0.1", link=None)
    assert not usable("10.0.0.1", link=LinkInfo(3, "eth1", IFF_UP, 1500))  # no carrier
    assert not usable("10.0.0.1", link=LinkInfo(3, "eth1", 0, 1500))
    assert usable("10.0.0.1", link=LinkInfo(3, "eth1", 0, 1500), require_up=False)
    assert not usable("10.77.0.1", link=LinkInfo(4, "p2p0", UP, 1380))


def test_filter_ipv6_link_local_only_when_asked() -> None:
    assert not usable("fe80::1")
    assert usable("fe80::1", ll=True)


@pytest.mark.parametrize("flag", [IFA_F_TENTATIVE, IFA_F_DEPRECATED, IFA_F_DADFAILED])
def test_filter_rejects_unready_ipv6(flag: int) -> None:
    assert not usable("2001:db8::1", flag)
    assert not usable("fe80::1", flag, ll=True)
    assert usable("192.0.2.1", flag)  # those flags mean nothing for IPv4


def test_local_address_properties() -> None:
    a = LocalAddress("fe80::1", 64, "eth0", 2)
    assert a.version == 6
    assert a.is_link_local
    assert not LocalAddress("192.0.2.1", 24, "eth0", 2).is_link_local


def test_unknown_netns_is_runtime_failure() -> None:
    with pytest.raises(RuntimeFailure, match="does not exist"):
        netlink.list_local_addresses(netns="nt-no-such-namespace")


# -- fixtures -------------------------------------------------------------------------------


def sh(*args: str) -> str:
    result = subprocess.run(args, capture_output=True, text=True, timeout=10, check=False)
    assert result.returncode == 0, f"{args}: {result.stderr}"
    return result.stdout


@pytest.fixture
def netns() -> Iterator[str]:
    """A fresh namespace with lo up and two veth pairs (nta/ntb up, ntc/ntd down); IPv6 DAD
    on nta made slow, so an address added without nodad stays tentative. Always deleted."""
    name = "nt" + secrets.token_hex(2)
    result = subprocess.run(
        ["ip", "netns", "add", name], capture_output=True, text=True, timeout=10, check=False
    )
    if result.returncode != 0:
        pytest.skip(f"cannot create a network namespace: {result.stderr.strip()}")
    try:
        sh("ip", "-n", name, "link", "set", "lo", "up")
        sh("ip", "-n", name, "link", "add", "nta", "type", "veth", "peer", "name", "ntb")
        sh("ip", "-n", name, "link", "add", "ntc", "type", "veth", "peer", "name", "ntd")
        sh("ip", "netns", "exec", name, "sysctl", "-qw", "net.ipv6.neigh.nta.retrans_time_ms=60000")
        sh("ip", "-n", name, "link", "set", "nta", "up")
        sh("ip", "-n", name, "link", "set", "ntb", "up")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], timeout=10, check=False)


def addr(ns: str, *args: str) -> None:
    sh("ip", "-n", ns, "addr", *args)


# -- configuration ------------------------------------------------------------------------------


@needs_root
def test_configure_interface(netns: str) -> None:
    netlink.configure_interface("ntc", ["10.61.0.1/24", "fd61::1/64"], 1420, netns=netns)
    out = sh("ip", "-n", netns, "-o", "addr", "show", "dev", "ntc")
    assert "10.61.0.1/24" in out
    assert "fd61::1/64" in out
    info = netlink.link_info("ntc", netns=netns)
    assert info is not None
    assert info.mtu == 1420
    assert info.flags & IFF_UP
    # Idempotent.
    netlink.configure_interface("ntc", ["10.61.0.1/24"], 1420, netns=netns)
    netlink.remove_addresses("ntc", ["10.61.0.1/24", "10.99.0.1/24"], netns=netns)
    assert "10.61.0.1/24" not in sh("ip", "-n", netns, "-o", "addr", "show", "dev", "ntc")


@needs_root
def test_configure_errors(netns: str) -> None:
    with pytest.raises(RuntimeFailure, match="no network interface named 'nope0'"):
        netlink.configure_interface("nope0", ["10.0.0.1/24"], netns=netns)
    with pytest.raises(RuntimeFailure, match="not an address with a prefix"):
        netlink.configure_interface("ntc", ["10.0.0.300/24"], netns=netns)
    with pytest.raises(RuntimeFailure, match=r"^cannot set MTU 10 on ntc: "):
        netlink.configure_interface("ntc", mtu=10, netns=netns)
    assert netlink.link_info("nope0", netns=netns) is None


@needs_root
def test_routes(netns: str) -> None:
    netlink.configure_interface("nta", ["10.50.0.1/24", "fd50::1/64"], netns=netns)
    netlink.add_route("nta", "10.77.0.2/32", netns=netns)
    netlink.add_route("nta", "10.78.0.9/16", netns=netns)  # host bits are ignored
    netlink.add_route("nta", "fd77::/64", netns=netns)
    netlink.add_route("nta", "10.77.0.2/32", netns=netns)  # idempotent
    v4 = sh("ip", "-n", netns, "route", "show", "dev", "nta")
    v6 = sh("ip", "-n", netns, "-6", "route", "show", "dev", "nta")
    assert "10.77.0.2 proto static scope link" in v4
    assert "10.78.0.0/16" in v4
    assert "fd77::/64" in v6
    netlink.remove_route("nta", "10.77.0.2/32", netns=netns)
    netlink.remove_route("nta", "10.77.0.2/32", netns=netns)  # already gone: fine
    netlink.remove_route("nta", "fd77::/64", netns=netns)
    netlink.remove_route("nope0", "10.0.0.0/8", netns=netns)  # no interface: fine
    v4 = sh("ip", "-n", netns, "route", "show", "dev", "nta")
    assert "10.77.0.2" not in v4
    assert "10.78.0.0/16" in v4
    assert "fd77::/64" not in sh("ip", "-n", netns, "-6", "route", "show", "dev", "nta")
    with pytest.raises(RuntimeFailure, match="not a network prefix"):
        netlink.add_route("nta", "10.0.0.0/33", netns=netns)


@needs_root
def test_delete_link(netns: str) -> None:
    assert netlink.delete_link("ntc", netns=netns)
    assert netlink.link_info("ntc", netns=netns) is None
    assert netlink.link_info("ntd", netns=netns) is None  # its veth peer went with it
    assert not netlink.delete_link("ntc", netns=netns)


@needs_root
async def test_run_from_trio(netns: str) -> None:
    await netlink.run(netlink.configure_interface, "ntc", ["10.62.0.1/24"], netns=netns)
    found = await netlink.run(netlink.list_local_addresses, netns=netns)
    assert all(a.address != "10.62.0.1" for a in found)  # ntc is down: not listed


# -- local addresses --------------------------------------------------------------------------


@needs_root
def test_list_local_addresses(netns: str) -> None:
    addr(netns, "add", "10.50.0.1/24", "dev", "nta")
    addr(netns, "add", "2001:db8:5::1/64", "dev", "nta", "nodad")
    addr(netns, "add", "2001:db8:6::1/64", "dev", "nta", "nodad", "preferred_lft", "0")
    addr(netns, "add", "2001:db8:7::1/64", "dev", "nta")  # stays tentative (slow DAD)
    addr(netns, "add", "fe80::99/64", "dev", "nta", "nodad")
    addr(netns, "add", "10.50.0.2/24", "dev", "ntb")
    addr(netns, "add", "10.60.0.1/24", "dev", "ntc")  # ntc is down
    found = netlink.list_local_addresses(exclude=["ntb"], netns=netns)
    assert [(a.address, a.prefixlen, a.interface) for a in found] == [
        ("10.50.0.1", 24, "nta"),
        ("2001:db8:5::1", 64, "nta"),
    ]
    index = found[0].index
    assert index > 0

    with_ll = netlink.list_local_addresses(exclude=["ntb"], include_link_local=True, netns=netns)
    assert LocalAddress("fe80::99", 64, "nta", index) in with_ll
    assert all(a.address != "2001:db8:7::1" for a in with_ll)  # tentative
    assert all(a.address != "2001:db8:6::1" for a in with_ll)  # deprecated

    everything = {a.address for a in netlink.list_local_addresses(netns=netns)}
    assert "10.50.0.2" in everything
    assert "127.0.0.1" not in everything
    assert "10.60.0.1" not in everything

    v4 = netlink.list_local_addresses(families=[socket.AF_INET], netns=netns)
    assert all(a.version == 4 for a in v4)


# -- the monitor --------------------------------------------------------------------------------


async def next_changes(monitor: NetworkMonitor) -> list[NetworkChange]:
    with trio.fail_after(10):
        return await monitor.next_changes()


@needs_root
async def test_monitor_address_added_and_removed(netns: str) -> None:
    addr(netns, "add", "10.50.0.1/24", "dev", "nta")
    async with NetworkMonitor(netns=netns, debounce=0.1) as monitor:
        assert monitor.fileno() >= 0
        # The address that existed at start is known: re-adding it changes nothing, so the
        # first event is the new address.
        addr(netns, "replace", "10.50.0.1/24", "dev", "nta")
        addr(netns, "add", "10.50.1.1/24", "dev", "nta")
        changes = await next_changes(monitor)
        assert changes == [NetworkChange(ChangeKind.ADDRESS_ADDED, "nta", "10.50.1.1")]
        addr(netns, "del", "10.50.1.1/24", "dev", "nta")
        changes = await next_changes(monitor)
        assert changes == [NetworkChange(ChangeKind.ADDRESS_REMOVED, "nta", "10.50.1.1")]
    assert monitor.fileno() == -1


@needs_root
async def test_monitor_ignores_excluded_and_unready(netns: str) -> None:
    async with NetworkMonitor(netns=netns, exclude=["ntb"], debounce=0.1) as monitor:
        addr(netns, "add", "10.50.2.2/24", "dev", "ntb")  # excluded interface
        addr(netns, "add", "2001:db8:7::1/64", "dev", "nta")  # tentative
        addr(netns, "add", "fe80::99/64", "dev", "nta", "nodad")  # link-local
        sh("ip", "-n", netns, "route", "add", "10.90.0.0/16", "dev", "nta")  # not default
        sh("ip", "-n", netns, "route", "add", "default", "dev", "ntb")  # via excluded
        addr(netns, "add", "10.50.3.1/24", "dev", "nta")  # the one that counts
        changes = await next_changes(monitor)
        assert changes == [NetworkChange(ChangeKind.ADDRESS_ADDED, "nta", "10.50.3.1")]


@needs_root
async def test_monitor_debounces_a_burst(netns: str) -> None:
    async with NetworkMonitor(netns=netns, debounce=0.5, max_delay=5) as monitor:
        for i in range(1, 4):
            addr(netns, "add", f"10.51.0.{i}/24", "dev", "nta")
        changes = await next_changes(monitor)
        assert [c.address for c in changes] == ["10.51.0.1", "10.51.0.2", "10.51.0.3"]
        assert {c.kind for c in changes} == {ChangeKind.ADDRESS_ADDED}


@needs_root
async def test_monitor_default_route(netns: str) -> None:
    addr(netns, "add", "10.50.0.1/24", "dev", "nta")
    async with NetworkMonitor(netns=netns, debounce=0.1) as monitor:
        sh("ip", "-n", netns, "route", "add", "default", "via", "10.50.0.254", "dev", "nta")
        changes = await next_changes(monitor)
        assert changes == [NetworkChange(ChangeKind.DEFAULT_ROUTE, "nta")]
        sh("ip", "-n", netns, "route", "del", "default")
        changes = await next_changes(monitor)
        assert changes == [NetworkChange(ChangeKind.DEFAULT_ROUTE, "nta")]


@needs_root
async def test_monitor_link_down_and_up(netns: str) -> None:
    async with NetworkMonitor(netns=netns, debounce=0.2) as monitor:
        sh("ip", "-n", netns, "link", "set", "nta", "down")
        changes = await next_changes(monitor)
        assert NetworkChange(ChangeKind.LINK_DOWN, "nta") in changes
        assert all(c.kind is ChangeKind.LINK_DOWN for c in changes)
        sh("ip", "-n", netns, "link", "set", "nta", "up")
        changes = await next_changes(monitor)
        assert NetworkChange(ChangeKind.LINK_UP, "nta") in changes
        assert all(c.kind is not ChangeKind.LINK_DOWN for c in changes)


@needs_root
async def test_monitor_as_async_iterator_in_a_nursery(netns: str) -> None:
    seen: list[list[NetworkChange]] = []
    async with NetworkMonitor(netns=netns, debounce=0.1) as monitor:

        async def consume(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            task_status.started()
            async for changes in monitor:
                seen.append(changes)

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                await nursery.start(consume)
                addr(netns, "add", "10.52.0.1/24", "dev", "nta")
                while not seen:
                    await trio.sleep(0.05)
                nursery.cancel_scope.cancel()
    assert seen == [[NetworkChange(ChangeKind.ADDRESS_ADDED, "nta", "10.52.0.1")]]


async def test_monitor_not_open_is_an_error() -> None:
    monitor = NetworkMonitor()
    with pytest.raises(trio.ClosedResourceError):
        await monitor.next_changes()
