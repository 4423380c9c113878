"""``scripts/bench plain`` (``python -m p2plab.bench --topology plain``) in its shortest form:
every row of the plain-link table measured (the raw veth, p2ptun, wireguard-go, OpenVPN,
Nebula), the ratios computed from the same run, nothing left behind. Speed is what the
benchmark shows, not what a test checks: this keeps the drivers from rotting."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from benchrun import (
    NUMBER,
    RATIO,
    THROUGHPUT,
    assert_nothing_left,
    bench_tools_missing,
    namespaces,
    run_tool,
    table,
)

from p2plab.bench import COLUMNS, PEERS, PLAIN_ROWS, RAW_RATIO_COLUMNS, ROW_DIRECT, ROW_RAW

pytestmark = [
    pytest.mark.lab,
    pytest.mark.slow,
    pytest.mark.skipif(
        bench_tools_missing(),
        reason="iperf3, wireguard-go, wg, ping, openvpn and nebula are needed",
    ),
]

PREFIX = "bpt"
"""The labs' names start with this (then random hex): the test finds any it left."""


def test_plain_link_bench_measures_every_row(
    natlab_required: None, tmp_path: Path, short_tmp_path: Path
) -> None:
    before = namespaces()
    results_file = tmp_path / "plain.json"
    argv = ["-m", "p2plab.bench", "--topology", "plain", "--quick", "--prefix", PREFIX]
    argv += ["--iperf-seconds", "1", "--idle", "1", "--wake-window", "1", "--pings", "3"]
    argv += ["--udp-steps", "5"]
    argv += ["--json", str(results_file)]
    proc = run_tool(short_tmp_path, argv, 300)

    rows = table(proc.stdout)
    assert rows.pop("tunnel") == list(COLUMNS[1:])
    for name in PLAIN_ROWS:
        cells = rows[name]
        assert len(cells) == len(COLUMNS) - 1, (name, cells)
        tcp, tcp4, udp, rtt, cpu, connect, recovery, wakeups, rss = cells
        assert THROUGHPUT.match(tcp) and THROUGHPUT.match(tcp4) and NUMBER.match(rtt), cells
        assert recovery == "–", cells  # nothing to renumber on a plain link
        if name == ROW_RAW:  # kernel forwarding: no process, no connect, nothing idle
            assert [cpu, connect, wakeups, rss] == ["–"] * 4, cells
        else:
            # a rate with <= 1 % loss, or (a loaded machine, five 1 s steps) none found
            assert NUMBER.match(udp) or udp == "–", (name, cells)
            assert all(NUMBER.match(c) for c in (cpu, connect, wakeups, rss)), (name, cells)
    for peer in PEERS:  # p2ptun against each other program, every ratio from this run
        ratios = rows[f"{ROW_DIRECT} ÷ {peer}"]
        assert all(RATIO.match(c) for c in (*ratios[:2], *ratios[3:6])), (peer, ratios)
    for name in PLAIN_ROWS[1:]:
        ratios = rows[f"{name} ÷ {ROW_RAW}"]
        assert all(RATIO.match(c) for c in (ratios[0], ratios[1], ratios[3])), ratios
        assert ratios[RAW_RATIO_COLUMNS:] == [""] * (len(ratios) - RAW_RATIO_COLUMNS), ratios

    results = {r["name"]: r for r in json.loads(results_file.read_text())}
    assert set(results) == set(PLAIN_ROWS)
    assert all(r["error"] is None and len(r["throughput_mbps"]) == 1 for r in results.values())
    for r in results.values():  # the UDP search ran for every row
        assert any(n.startswith("UDP: ") for n in r["notes"]), r["notes"]
        assert (r["udp_mbps"] is None) == any("none found" in n for n in r["notes"]), r
    # the p2ptun row went straight across the veth (the bench checks the counters too)
    assert "MTU" in " ".join(results[ROW_DIRECT]["notes"])

    # Nothing left behind: the labs' namespaces and daemons are gone.
    assert_nothing_left(short_tmp_path, before, PREFIX)


@pytest.mark.parametrize("on_demand", [False, True], ids=["connected", "on-demand"])
def test_peer_cost_counts_an_idle_hub_with_real_peers(
    natlab_required: None, tmp_path: Path, short_tmp_path: Path, on_demand: bool
) -> None:
    """``python -m p2plab.peercost`` with three real peers: every one connected before and
    after the idle window (on demand: none connected, then two reached by a first packet),
    the hub's figures read, the star removed."""
    before = namespaces()
    results_file = tmp_path / "peercost.json"
    argv = ["-m", "p2plab.peercost", "--peers", "3", "--idle", "4", "--window", "2"]
    argv += ["--prefix", "pct", "--json", str(results_file)]
    if on_demand:
        argv += ["--on-demand", "--samples", "2"]
    proc = run_tool(short_tmp_path, argv, 180)
    rows = table(proc.stdout)
    assert list(rows) == ["peers", "3"], proc.stdout
    (result,) = json.loads(results_file.read_text())
    assert result["hub_rss_mib"] > 1 and result["hub_wakeups_per_s"] >= 0, result
    if on_demand:
        assert result["connected_before"] == 3 and result["connected_after"] == 0, result
        assert len(result["first_packet_s"]) == 2 and None not in result["first_packet_s"]
        assert result["first_packet_s_median"] > 0, result
    else:
        assert result["connected_before"] == result["connected_after"] == 3, result
        assert result["first_packet_s"] == [], result
    assert_nothing_left(short_tmp_path, before, "pct")
