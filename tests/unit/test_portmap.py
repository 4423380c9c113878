"""PCP (RFC 6887) and NAT-PMP (RFC 6886) codecs and the port-mapping state machine, sans-I/O.

The byte layouts are checked field by field against the RFCs' figures; decoders are fuzzed to
raise only their DecodeError; the client runs through probe, fallback, lease, renewal, expiry
and deletion on explicit times. Interop with a real server (miniupnpd) is
tests/interop/test_portmap_miniupnpd.py.
"""

from __future__ import annotations

import contextlib
import ipaddress
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2ptun.errors import DecodeError
from p2ptun.portmap import (
    MappingAcquired,
    MappingFailed,
    MappingLost,
    MappingReleased,
    MapState,
    PortMapClient,
    natpmp,
    pcp,
)
from p2ptun.portmap.client import PCP_GRACE, PROBE_TIMEOUT

GW = "10.0.1.1"
SERVER = (GW, 5351)
NONCE = bytes(range(12))


def pcp_response(
    result: int = 0,
    lifetime: int = 3600,
    *,
    nonce: bytes = NONCE,
    port: int = 51820,
    external: tuple[str, int] = ("198.51.100.7", 40000),
    epoch: int = 100,
    options: bytes = b"",
) -> bytes:
    """A MAP response as a server builds it (RFC 6887 §7.2, §11.1)."""
    ext_ip = ipaddress.IPv6Address(f"::ffff:{external[0]}").packed
    head = struct.pack("!BBBBII12s", 2, 0x81, 0, result, lifetime, epoch, bytes(12))
    body = struct.pack("!12sB3sHH16s", nonce, 17, bytes(3), port, external[1], ext_ip)
    return head + body + options


def natpmp_address(ip: str = "198.51.100.7", result: int = 0) -> bytes:
    return struct.pack("!BBHI4s", 0, 128, result, 100, ipaddress.IPv4Address(ip).packed)


def natpmp_map(ext_port: int = 40001, lifetime: int = 3600, port: int = 51820) -> bytes:
    return struct.pack("!BBHIHHI", 0, 129, 0, 100, port, ext_port, lifetime)


# -- codecs --------------------------------------------------------------------------------------


def test_pcp_map_request_layout() -> None:
    """RFC 6887 Figure 2 (common header) and Figure 9 (MAP payload): 60 bytes."""
    data = pcp.encode_map(NONCE, "10.0.1.2", 51820, 7200, suggested_port=40000)
    assert len(data) == 60
    assert data[0] == 2 and data[1] == 1  # version 2, R=0, opcode MAP
    assert struct.unpack("!I", data[4:8])[0] == 7200
    assert data[8:24] == ipaddress.IPv6Address("::ffff:10.0.1.2").packed
    assert data[24:36] == NONCE
    assert data[36] == 17  # UDP
    assert struct.unpack("!HH", data[40:44]) == (51820, 40000)
    assert data[44:60] == ipaddress.IPv6Address("::ffff:0.0.0.0").packed


def test_pcp_response_decodes_and_skips_options() -> None:
    option = bytes((1, 0)) + struct.pack("!H", 5) + b"abcde" + bytes(3)  # padded to 4
    reply = pcp.decode_map_response(pcp_response(options=option))
    assert (reply.result, reply.lifetime, reply.epoch) == (0, 3600, 100)
    assert (reply.external_ip, reply.external_port, reply.internal_port) == (
        "198.51.100.7",
        40000,
        51820,
    )
    with pytest.raises(pcp.PcpDecodeError):
        pcp.decode_map_response(pcp_response(options=bytes((1, 0, 0, 9))))  # option overruns
    with pytest.raises(pcp.PcpDecodeError):
        pcp.decode_map_response(pcp_response() + bytes(1100))  # over RFC 6887 §7's limit


def test_natpmp_layouts() -> None:
    """RFC 6886 §3.2 and §3.3."""
    assert natpmp.encode_external_address_request() == b"\x00\x00"
    assert natpmp.encode_map(51820, 7200, 40000) == struct.pack(
        "!BBHHHI", 0, 1, 0, 51820, 40000, 7200
    )
    assert natpmp.decode(natpmp_address()) == natpmp.AddressResponse(0, 100, "198.51.100.7")
    assert natpmp.decode(natpmp_map()) == natpmp.MapResponse(0, 100, 51820, 40001, 3600)


@settings(max_examples=1500)
@given(st.binary(max_size=1300))
def test_decoders_raise_only_decode_errors(data: bytes) -> None:
    for decoder in (pcp.decode_map_response, natpmp.decode):
        with contextlib.suppress(DecodeError):
            decoder(data)
    assert pcp.decode_version_reply(data) is None or len(data) >= 4


@settings(max_examples=800)
@given(st.integers(0, 60), st.binary(min_size=1, max_size=8), st.booleans())
def test_mutated_responses_raise_only_decode_errors(at: int, junk: bytes, pcp_form: bool) -> None:
    base = pcp_response() if pcp_form else natpmp_map()
    data = base[:at] + junk + base[at + len(junk) :]
    with contextlib.suppress(DecodeError):
        (pcp.decode_map_response if pcp_form else natpmp.decode)(data)


@settings(max_examples=800)
@given(st.lists(st.binary(max_size=80), max_size=6), st.lists(st.booleans(), max_size=6))
def test_client_survives_any_datagrams(datagrams: list[bytes], from_gw: list[bool]) -> None:
    client = PortMapClient(GW, "10.0.1.2", 51820, NONCE)
    client.start(0.0)
    for i, data in enumerate(datagrams):
        source = SERVER if i < len(from_gw) and from_gw[i] else ("10.0.1.9", 5351)
        client.handle_datagram(data, source, 0.1 * i)
        client.handle_timeout(0.1 * i)
    client.release(1.0)
    assert client.state in (MapState.RELEASING, MapState.RELEASED)


# -- the state machine ---------------------------------------------------------------------------


def run_until(client: PortMapClient, until: float) -> list[bytes]:
    """Fire every timer up to ``until``; the datagrams sent meanwhile."""
    sent: list[bytes] = []
    while (wake := client.next_wakeup()) is not None and wake <= until:
        client.handle_timeout(wake)
        sent += client.pop_transmits()
    return sent


def test_probe_sends_pcp_and_natpmp_at_once_and_pcp_wins() -> None:
    client = PortMapClient(GW, "10.0.1.2", 51820, NONCE, lifetime=600)
    client.start(0.0)
    sent = client.pop_transmits()
    assert [d[0] for d in sent] == [2, 0] and len(sent[1]) == 2
    client.handle_datagram(natpmp_address(), SERVER, 0.01)
    client.handle_datagram(pcp_response(lifetime=600), SERVER, 0.02)
    assert client.pop_events() == [MappingAcquired("pcp", GW, ("198.51.100.7", 40000), 600)]
    assert client.state is MapState.MAPPED
    assert client.next_wakeup() == pytest.approx(0.02 + 300)  # renewal at half the lease
    assert run_until(client, 299) == []


def test_renewal_keeps_the_nonce_and_suggests_the_held_port() -> None:
    client = PortMapClient(GW, "10.0.1.2", 51820, NONCE, lifetime=600)
    client.start(0.0)
    client.pop_transmits()
    client.handle_datagram(pcp_response(lifetime=600), SERVER, 0.0)
    client.pop_events()
    sent = run_until(client, 300.0)
    assert len(sent) == 1 and sent[0][24:36] == NONCE
    assert struct.unpack("!H", sent[0][42:44])[0] == 40000
    assert run_until(client, 300.3)  # unanswered: retransmitted
    client.handle_datagram(pcp_response(lifetime=600), SERVER, 300.3)
    assert client.pop_events() == []  # the same mapping: no news
    assert client.next_wakeup() == pytest.approx(600.3)
    client.handle_datagram(
        pcp_response(lifetime=600, external=("198.51.100.7", 41000)), SERVER, 301
    )
    assert client.pop_events() == [MappingAcquired("pcp", GW, ("198.51.100.7", 41000), 600)]


def test_lease_that_runs_out_is_lost_and_probed_again() -> None:
    client = PortMapClient(GW, "10.0.1.2", 51820, NONCE, lifetime=100)
    client.start(0.0)
    client.pop_transmits()
    client.handle_datagram(pcp_response(lifetime=100), SERVER, 0.0)
    client.pop_events()
    sent = run_until(client, 100.0)
    assert sent, "renewals were sent"
    assert client.pop_events() == [MappingLost(f"lease on {GW} ended unrenewed")]
    assert client.state is MapState.PROBING


def test_natpmp_after_pcp_silence_grace() -> None:
    client = PortMapClient(GW, "10.0.1.2", 51820, NONCE)
    client.start(0.0)
    client.pop_transmits()
    client.handle_datagram(natpmp_address(), SERVER, 0.05)
    sent = run_until(client, 0.05 + PCP_GRACE)
    assert sent[-1] == natpmp.encode_map(51820, 7200)
    client.handle_datagram(natpmp_map(), SERVER, 0.6)
    assert client.pop_events() == [MappingAcquired("natpmp", GW, ("198.51.100.7", 40001), 3600)]
    client.release(1.0)
    assert client.pop_transmits() == [natpmp.encode_map(51820, 0)]  # RFC 6886 §3.4
    client.handle_datagram(struct.pack("!BBHIHHI", 0, 129, 0, 101, 51820, 0, 0), SERVER, 1.0)
    assert client.pop_events() == [MappingReleased(confirmed=True)]


def test_natpmp_at_once_when_pcp_is_unsupported() -> None:
    """A NAT-PMP-only server answers PCP with version 0, UNSUPPORTED_VERSION (RFC 6887 §9)."""
    client = PortMapClient(GW, "10.0.1.2", 51820, NONCE)
    client.start(0.0)
    client.pop_transmits()
    client.handle_datagram(struct.pack("!BBHI", 0, 0x81, 1, 5), SERVER, 0.01)
    client.handle_datagram(natpmp_address(), SERVER, 0.02)
    assert client.pop_transmits() == [natpmp.encode_map(51820, 7200)]


def test_silent_gateway_fails_after_the_probe() -> None:
    client = PortMapClient(GW, "10.0.1.2", 51820, NONCE)
    client.start(0.0)
    sent = client.pop_transmits() + run_until(client, PROBE_TIMEOUT)
    assert 6 <= len(sent) <= 10  # 250 ms doubling, both protocols
    (event,) = client.pop_events()
    assert isinstance(event, MappingFailed) and "no PCP or NAT-PMP answer" in event.reason
    assert client.next_wakeup() is None


def test_only_the_gateway_and_our_nonce_count() -> None:
    client = PortMapClient(GW, "10.0.1.2", 51820, NONCE)
    client.start(0.0)
    client.handle_datagram(pcp_response(), ("10.0.1.9", 5351), 0.0)
    client.handle_datagram(pcp_response(), (GW, 5350), 0.0)
    client.handle_datagram(pcp_response(nonce=bytes(12)), SERVER, 0.0)
    client.handle_datagram(pcp_response(port=1234), SERVER, 0.0)
    assert client.dropped == 4 and client.state is MapState.PROBING


def test_release_deletes_with_the_same_nonce_and_gives_up_after_retries() -> None:
    client = PortMapClient(GW, "10.0.1.2", 51820, NONCE)
    client.start(0.0)
    client.pop_transmits()
    client.handle_datagram(pcp_response(), SERVER, 0.0)
    client.release(5.0)
    (delete,) = client.pop_transmits()
    assert delete[24:36] == NONCE and struct.unpack("!I", delete[4:8])[0] == 0  # RFC 6887 §15
    sent = run_until(client, 10.0)
    assert len(sent) == 2
    assert client.pop_events()[-1] == MappingReleased(confirmed=False)
    assert client.state is MapState.RELEASED and client.next_wakeup() is None


def test_pcp_error_falls_back_to_natpmp_and_refusal_on_renewal_loses() -> None:
    client = PortMapClient(GW, "10.0.1.2", 51820, NONCE, lifetime=60)
    client.start(0.0)
    client.handle_datagram(natpmp_address(), SERVER, 0.0)
    client.handle_datagram(pcp_response(result=pcp.ResultCode.NOT_AUTHORIZED), SERVER, 0.0)
    assert client.state is MapState.REQUESTING
    client.handle_datagram(natpmp_map(lifetime=60), SERVER, 0.1)
    client.pop_events()
    run_until(client, 30.1)
    client.handle_datagram(struct.pack("!BBHIHHI", 0, 129, 2, 130, 51820, 0, 0), SERVER, 30.2)
    events = client.pop_events()
    assert isinstance(events[0], MappingLost) and client.state is MapState.FAILED
