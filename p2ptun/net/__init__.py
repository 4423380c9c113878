"""The trio I/O layer: the ports to the machine, sockets, TUN, netlink, dispatch, timers, and
the I/O shells of ICE, TURN, gathering and signaling (docs/ARCHITECTURE.md §5).

- :mod:`p2ptun.net.ports` — the interfaces between the daemons and the machine:
  :class:`~p2ptun.net.ports.DatagramPort`, :class:`~p2ptun.net.ports.TunPort`,
  :class:`~p2ptun.net.ports.Connection`, and :class:`~p2ptun.net.ports.Host`, which opens them,
  configures the interface and gives clocks and randomness; :mod:`p2ptun.net.system` is the
  real machine (the tests' in-memory network lives in the development tree, ``p2plab``).
- :mod:`p2ptun.net.udp` — :class:`~p2ptun.net.udp.UdpEndpoint`, one UDP socket drained in
  batches into one receiver; GSO/GRO.
- :mod:`p2ptun.net.dispatch` — :class:`~p2ptun.net.dispatch.Dispatcher`, the one owner of a
  node socket's dispatch: :func:`~p2ptun.net.dispatch.classify` by first bytes into STUN,
  TURN ChannelData and WireGuard handlers (docs/ARCHITECTURE.md §2).
- :mod:`p2ptun.net.timer` — :class:`~p2ptun.net.timer.CoreTimer`, the one timer loop of every
  shell: sleep until the core's next wake-up, run it.
- :mod:`p2ptun.net.mux` — :class:`~p2ptun.net.mux.UdpMux`, which routes the shared sockets'
  STUN and ChannelData (our own transactions, TURN servers, ICE).
- :mod:`p2ptun.net.turn_relay` — :class:`~p2ptun.net.turn_relay.TurnRelay`, one TURN
  allocation over the shared UDP socket or its own TCP/TLS connection; relayed WireGuard goes
  from it straight to the data path.
- :mod:`p2ptun.net.gather` — :class:`~p2ptun.net.gather.Gatherer`, the node's host,
  server-reflexive and relayed candidates in trickled rounds; it keeps the TURN allocations
  (retries, renewal before issued credentials expire, a new allocation when the path changes).
- :mod:`p2ptun.net.ice_transport` — :class:`~p2ptun.net.ice_transport.IceTransport`, the ICE
  shell of a node: one sans-I/O agent per :class:`~p2ptun.net.ice_transport.IceSession` over
  the shared sockets, one timer for all, demux by ufrag and transaction id, data and ping on
  the selected pair. The daemon (:mod:`p2ptun.node`) decides when sessions open and close.
- :mod:`p2ptun.net.signaling` — :class:`~p2ptun.net.signaling.SignalingClient`, the node's
  TCP connection to its rendezvous around the sans-I/O
  :class:`~p2ptun.signal.client.SignalClientCore` (with :mod:`p2ptun.net.keepalive`, kernel
  TCP keepalive, and :mod:`p2ptun.net.wakeup`, the wake-up flag of its tasks).
- :mod:`p2ptun.net.streams` and :mod:`p2ptun.net.stun_query` — name resolution and TCP/TLS
  streams to STUN/TURN servers; the Binding query of ``p2ptun stun``.
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
