"""``scripts/bench``'s tunnel section end to end in quick mode: every row measured, the table
complete, nothing left behind. No timing assertions: speed is what the benchmark shows, not
what a test checks."""

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

from p2plab.bench import COLUMNS, PEERS, RAW_RATIO_COLUMNS, ROW_DIRECT, ROW_RAW, ROW_RELAY, ROWS

pytestmark = [
    pytest.mark.lab,
    pytest.mark.slow,
    pytest.mark.skipif(
        bench_tools_missing(),
        reason="iperf3, wireguard-go, wg, ping, openvpn and nebula are needed",
    ),
]


def test_quick_bench_prints_every_row(
    natlab_required: None, tmp_path: Path, short_tmp_path: Path
) -> None:
    before = namespaces()
    results_file = tmp_path / "results.json"
    proc = run_tool(
        short_tmp_path, ["-m", "p2plab.bench", "--quick", "--json", str(results_file)], 600
    )

    rows = table(proc.stdout)
    assert rows.pop("tunnel") == list(COLUMNS[1:])
    for name in ROWS:
        cells = rows[name]
        assert len(cells) == len(COLUMNS) - 1, (name, cells)
        tcp, tcp4, _udp, rtt, *rest = cells
        assert THROUGHPUT.match(tcp) and THROUGHPUT.match(tcp4), (name, cells)
        assert NUMBER.match(rtt), (name, cells)
        if name == ROW_RAW:  # kernel forwarding: no process, no connect, nothing idle
            assert rest == ["–"] * len(rest), cells
        else:  # CPU, connect, recovery (a tunnel that does not recover says so), wake-ups, RSS
            cpu, connect, recovery, *idle = rest
            assert all(NUMBER.match(c) for c in (cpu, connect, *idle)), (name, cells)
            assert NUMBER.match(recovery) or recovery == "timeout", (name, cells)
    for ours in (ROW_DIRECT, ROW_RELAY):
        for peer in PEERS:
            ratios = rows[f"{ours} ÷ {peer}"]
            assert all(RATIO.match(c) for c in (ratios[0], ratios[1], ratios[3])), ratios
    for name in ROWS[1:]:
        raw_ratios = rows[f"{name} ÷ raw link"]
        assert all(RATIO.match(c) for c in (raw_ratios[0], raw_ratios[1], raw_ratios[3]))
        tail = raw_ratios[RAW_RATIO_COLUMNS:]
        assert tail == [""] * len(tail), raw_ratios

    results = {r["name"]: r for r in json.loads(results_file.read_text())}
    assert set(results) == set(ROWS)
    assert all(r["error"] is None and len(r["throughput_mbps"]) == 1 for r in results.values())

    # Nothing left behind: the labs' namespaces and daemons are gone.
    assert_nothing_left(short_tmp_path, before, "bn")


def test_recovery_section_measures_each_event_it_is_given(
    natlab_required: None, tmp_path: Path, short_tmp_path: Path
) -> None:
    """``scripts/bench recovery`` (``python -m p2plab.recovery``) for two events: a row each
    with a gap and the path after, the JSON beside it, nothing left behind."""
    before = namespaces()
    results_file = tmp_path / "recovery.json"
    events = ["sym-flush", "host-renumbered"]
    argv = ["-m", "p2plab.recovery", "--events", ",".join(events), "--json", str(results_file)]
    proc = run_tool(short_tmp_path, argv, 600)
    rows = table(proc.stdout)
    assert rows.pop("event") == ["NATs", "longest gap s", "path after"]
    assert len(rows) == 2, rows
    for cells in rows.values():
        assert NUMBER.match(cells[1]) and cells[2] == "direct", cells
    results = json.loads(results_file.read_text())
    assert [r["key"] for r in results] == events
    assert all(r["error"] is None and r["gap_s"] < 15 for r in results), results
    assert_nothing_left(short_tmp_path, before, "bn")
