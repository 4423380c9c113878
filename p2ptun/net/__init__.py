"""The trio I/O layer: sockets, TUN, netlink, and the I/O shells of ICE, TURN, gathering and
signaling.

- :mod:`p2ptun.net.udp` — :class:`~p2ptun.net.udp.UdpEndpoint`, one UDP socket per address
  family, demultiplexed by :func:`~p2ptun.net.udp.classify` into STUN, TURN ChannelData and
  WireGuard handlers (ARCHITECTURE.md §2).
- :mod:`p2ptun.net.turn_shared` — :class:`~p2ptun.net.turn_shared.UdpMux`, which routes the
  shared sockets' STUN and ChannelData (our own transactions, TURN servers, ICE), and
  :class:`~p2ptun.net.turn_shared.TurnRelay`, one TURN allocation over the shared UDP socket
  or its own TCP/TLS connection (with the peers the server refused remembered).
- :mod:`p2ptun.net.gather` — :class:`~p2ptun.net.gather.Gatherer`, the node's host,
  server-reflexive and relayed candidates in trickled rounds; it keeps the TURN allocations
  (retries, renewal before issued credentials expire, a new allocation when the path changes).
- :mod:`p2ptun.net.ice_transport` — :class:`~p2ptun.net.ice_transport.IceTransport`, the ICE
  shell of a node: one sans-I/O agent per :class:`~p2ptun.net.ice_transport.IceSession` over
  the shared sockets, one timer task for all, demux by ufrag and transaction id, data and ping
  on the selected pair. The daemon (:mod:`p2ptun.node`) decides when sessions open and close.
- :mod:`p2ptun.net.signaling` — :class:`~p2ptun.net.signaling.SignalingClient`, the node's
  TCP connection to its rendezvous around the sans-I/O
  :class:`~p2ptun.signal.client.SignalClientCore` (with :mod:`p2ptun.net.keepalive`, kernel
  TCP keepalive, and :mod:`p2ptun.net.wakeup`, the wake-up flag of its tasks).
- :mod:`p2ptun.net.tun` — :class:`~p2ptun.net.tun.TunDevice`, the non-blocking TUN interface.
- :mod:`p2ptun.net.offload` — the data path's segmentation and coalescing offloads (UDP
  GSO/GRO, TUN TSO/GRO), probed with a fallback.
- :mod:`p2ptun.net.sdnotify` — :class:`~p2ptun.net.sdnotify.Notifier`, systemd's notify
  protocol (``READY=1``, ``STATUS=``, ``STOPPING=1``) for both daemons.
- :mod:`p2ptun.net.netlink` — interface, address and route configuration (blocking pyroute2
  calls; ``await netlink.run(...)`` from trio), ICE host addresses, and
  :class:`~p2ptun.net.netlink.NetworkMonitor`, debounced network-change events.

The data path wakes once per readiness and drains until ``EAGAIN`` into preallocated buffers;
there is no per-packet trio channel. Submodules are imported on demand (``netlink`` pulls in
pyroute2).
"""
