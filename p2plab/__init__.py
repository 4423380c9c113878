"""The development tree, not installed with p2ptun: the NAT lab (network namespaces and
nftables NATs) for end-to-end tests, the demo and the bench, and the programs run in it.

- :class:`NatLab` (:mod:`p2plab.natlab`): build a lab (``NatLab.create(["cone", "sym"])``),
  run programs in its hosts (``exec``, ``popen``), read the internet's byte counters, and turn
  the knobs (netem loss/delay, NAT flush, NAT renumbering, host readdressing, blocking).
- :mod:`p2plab.pytest_plugin`: the ``natlab`` / ``natlab_module`` fixture factories.
- :mod:`p2plab.probe`: raw-socket probes run inside lab hosts (reflector, NAT
  classification, loss/RTT counting, TCP).
- :mod:`p2plab.coturn`: coturn in the lab and RFC 5780 NAT discovery.
- :mod:`p2plab.delay`: the userspace delay line behind ``set_netem(delay_ms=...)``.
- :mod:`p2plab.ice_probe`: one ICE peer on :class:`p2ptun.net.ice_transport.IceTransport` in a
  process (``python -m p2plab.ice_probe``), for the NAT-lab and aioice interop tests.
- :mod:`p2plab.cli`: ``scripts/natlab`` (``python -m p2plab``).
- :mod:`p2plab.bench`: ``scripts/bench``'s tunnel table (``python -m p2plab.bench``).
- :mod:`p2plab.hostile`: hostile clients run in lab hosts, each bounded in rate and time
  (``python -m p2plab.hostile``), for the hostile-client tests and the soak.
- :mod:`p2plab.soak`: ``scripts/soak``, a rendezvous and two nodes under mixed hostile load.
- :mod:`p2plab.wireguard_go`: waiting for wireguard-go without racing its UAPI socket.
- :mod:`p2plab.wgtunnel_tool`: the node's data path as a process with fixed peers
  (``python -m p2plab.wgtunnel_tool``), for the wireguard-go interop tests.
- :mod:`p2plab.natmodel` and :mod:`p2plab.memnet`: NAT behaviour as data, and an in-memory
  network on it for whole daemons under trio's virtual clock.
"""

from p2plab.natlab import NAT_TYPES, LabError, NatLab, Site, lab_unavailable_reason

__all__ = ["NAT_TYPES", "LabError", "NatLab", "Site", "lab_unavailable_reason"]
