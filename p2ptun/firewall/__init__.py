"""The firewall between peers (sans-I/O): rules by peer, group, protocol, port and prefix,
stateful with a bounded flow table.

- :mod:`~p2ptun.firewall.packet`: the bounded IPv4/IPv6 header parser;
- :mod:`~p2ptun.firewall.rules`: allow rules, the policy, their compiled form per peer;
- :mod:`~p2ptun.firewall.flows`: the flow table (fixed capacity, per-peer share, idle
  timeouts per protocol);
- :mod:`~p2ptun.firewall.engine`: :class:`Firewall`, what the data path calls.

It reads no clock (``now`` is passed in) and knows nothing of trio, sockets or the config
file: :mod:`p2ptun.config` builds a :class:`Policy`, the node's data path
(:mod:`p2ptun.node.wgtunnel`) calls :meth:`Firewall.filter_inbound` and
:meth:`Firewall.allow_outbound`.
"""

from __future__ import annotations

from p2ptun.firewall.engine import Firewall, FirewallCounters
from p2ptun.firewall.flows import FlowTable
from p2ptun.firewall.packet import PacketInfo, parse
from p2ptun.firewall.rules import ALLOW_ANY, ALLOW_ICMP, PROTOCOLS, Policy, Rule

__all__ = [
    "ALLOW_ANY",
    "ALLOW_ICMP",
    "PROTOCOLS",
    "Firewall",
    "FirewallCounters",
    "FlowTable",
    "PacketInfo",
    "Policy",
    "Rule",
    "parse",
]
