"""The trio I/O layer: UDP socket and demux, TUN device, netlink configuration and monitor.

- :mod:`p2ptun.net.udp` — :class:`~p2ptun.net.udp.UdpEndpoint`, one UDP socket per address
  family, demultiplexed by :func:`~p2ptun.net.udp.classify` into STUN, TURN ChannelData and
  WireGuard handlers (ARCHITECTURE.md §2).
- :mod:`p2ptun.net.tun` — :class:`~p2ptun.net.tun.TunDevice`, the non-blocking TUN interface.
- :mod:`p2ptun.net.netlink` — interface, address and route configuration (blocking pyroute2
  calls; ``await netlink.run(...)`` from trio), ICE host addresses, and
  :class:`~p2ptun.net.netlink.NetworkMonitor`, debounced network-change events.

The data path wakes once per readiness and drains until ``EAGAIN`` into preallocated buffers;
there is no per-packet trio channel. Submodules are imported on demand (``netlink`` pulls in
pyroute2).
"""
