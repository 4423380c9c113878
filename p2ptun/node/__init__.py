"""The node daemon (``p2ptun up``): service glue, data path, per-peer orchestration.

Layout (each module's docstring has the details)::

    daemon.py    NodeDaemon: start-up checks, the nursery, signals (SIGTERM/SIGHUP), reload,
                 status and ping over the control socket, network-change handling
    peer.py      PeerSession: offer/answer with the peer, ICE attempts (one IceAgent each),
                 make-before-break restarts, the selected pair as the WireGuard path, ping
    gather.py    Gatherer: the node's candidates (host via netlink, server-reflexive via
                 STUN, relayed via TURN), shared by every peer's agent
    relay.py     TurnRelay: one TURN allocation (UDP on the shared socket, or TCP/TLS)
    mux.py       UdpMux: STUN and ChannelData from the shared sockets to the TURN relays,
                 our own STUN transactions, or the ICE agent (by ufrag / transaction id)
    wgtunnel.py  WgTunnel: TUN <-> WireGuard Device <-> UDP, wake-once-and-drain, MSS clamping
    mss.py       TCP MSS clamping of SYNs crossing the tunnel (incremental checksum)
    control.py   the control socket (one JSON request/reply per connection)
    status.py    the status table and ping line
    sdnotify.py  systemd's notify protocol

Data flow: the UDP endpoints (:mod:`p2ptun.net.udp`) hand WireGuard datagrams straight to the
tunnel and STUN/ChannelData to the mux; TURN relays hand unwrapped payloads back to the mux,
which passes WireGuard to the tunnel and STUN to the agents. Each peer's path is a send
function in the tunnel (direct UDP or a relay's ChannelData), swapped when ICE selects another
pair, never touching the WireGuard session.
"""
