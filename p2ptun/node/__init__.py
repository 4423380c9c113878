"""The node daemon (``p2ptun up``): service glue, data path, per-peer orchestration.

Layout (each module's docstring has the details)::

    daemon.py    NodeDaemon: start-up checks, the nursery, signals (SIGTERM/SIGHUP), reload,
                 status and ping over the control socket, network-change handling
    peer.py      PeerSession: offer/answer with the peer (glare, retries, restarts), one ICE
                 session of the node's transport per attempt, make-before-break, the
                 selected pair as the WireGuard path, ping
    wgtunnel.py  WgTunnel: TUN <-> WireGuard Device <-> UDP, wake-once-and-drain, MSS clamping
    mss.py       TCP MSS clamping of SYNs crossing the tunnel (incremental checksum)
    control.py   the control socket (one JSON request/reply per connection)
    status.py    the status table and ping line

The ICE, TURN and gathering shells it runs on are trio I/O and live in :mod:`p2ptun.net`:
:class:`~p2ptun.net.ice_transport.IceTransport` (the node's ICE sessions, their timer and
demux), :class:`~p2ptun.net.gather.Gatherer` (host, server-reflexive and relayed candidates,
the TURN allocations kept alive) and :mod:`p2ptun.net.turn_shared` (the STUN/ChannelData mux
of the shared sockets, TURN relays over UDP, TCP or TLS). So does systemd's notify protocol
(:mod:`p2ptun.net.sdnotify`), which the rendezvous server uses too.

Data flow: the UDP endpoints (:mod:`p2ptun.net.udp`) hand WireGuard datagrams straight to the
tunnel and STUN/ChannelData to the transport's mux; TURN relays hand unwrapped payloads back to
the transport, which passes WireGuard to the tunnel and STUN to the ICE sessions. Each peer's
path is a send function in the tunnel (direct UDP or a relay's ChannelData), swapped when ICE
selects another pair, never touching the WireGuard session.
"""
