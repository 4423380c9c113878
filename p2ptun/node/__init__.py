"""The node daemon (``p2ptun up``): composition root, data path, per-peer orchestration.

Layout (each module's docstring has the details)::

    daemon.py    NodeDaemon: the composition root on a Host (sockets, their dispatchers, the
                 data path, ICE, signaling), start-up checks, the nursery, signals
                 (SIGTERM/SIGHUP), reload, status and ping over the control socket,
                 network-change and suspend handling
    peer.py      PeerSession: offer/answer with the peer (glare, retries, restarts), one ICE
                 session of the node's transport per attempt, make-before-break, the
                 selected pair as the WireGuard path, ping
    wgtunnel.py  WgTunnel: the data path, TUN <-> WireGuard Device <-> UDP or a TURN relay,
                 wake-once-and-drain, offloads, MSS clamping
    mss.py       TCP MSS clamping of SYNs crossing the tunnel (incremental checksum)
    clockwatch.py  the suspend detector (monotonic against boot time)
    control.py   the control socket (one JSON request/reply per connection)
    status.py    the status table and ping line

The ICE, TURN and gathering shells it runs on are trio I/O and live in :mod:`p2ptun.net`:
:class:`~p2ptun.net.ice_transport.IceTransport` (the node's ICE sessions, their timer and
demux), :class:`~p2ptun.net.gather.Gatherer` (host, server-reflexive and relayed candidates,
the TURN allocations kept alive), :class:`~p2ptun.net.mux.UdpMux` (the STUN/ChannelData routes
of the shared sockets) and :class:`~p2ptun.net.turn_relay.TurnRelay` (relays over UDP, TCP or
TLS).

Data flow (docs/ARCHITECTURE.md §5.5): each UDP endpoint's dispatcher hands WireGuard straight
to the tunnel and STUN/ChannelData to the mux; a TURN relay hands the WireGuard it unwraps to
the tunnel and STUN to the ICE sessions. Each peer's path is a send function in the tunnel
(direct UDP or a relay's ChannelData), swapped when ICE selects another pair, never touching
the WireGuard session.
"""
