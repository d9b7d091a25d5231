"""Sizes, medians and within-rep ratios of the report module."""

from __future__ import annotations

import pytest
from bench_report import (
    LATENCY,
    THROUGHPUT,
    RunRecord,
    acceptance_lines,
    format_ratio_table,
    format_server_table,
    load_line,
    parse_size,
    ratios,
    size_label,
    summarize,
)
from hypothesis import given, settings
from hypothesis import strategies as st


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("1k", 1024),
        ("10K", 10240),
        ("100kib", 102400),
        ("2m", 2 * 1024 * 1024),
        ("300", 300),
        (" 7kb ", 7168),
    ],
)
def test_parse_size(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "k", "1.5k", "-1k", "1g", "ten"])
def test_parse_size_rejects(text):
    with pytest.raises(ValueError, match="not a size"):
        parse_size(text)


@settings(deadline=None, max_examples=200)
@given(st.integers(0, 10**9))
def test_size_label_round_trips(size):
    label = size_label(size)
    number, unit = label.split()
    assert parse_size(number + {"B": "", "KiB": "k", "MiB": "m"}[unit]) == size


def rec(server, rep, rate, *, ok=True, size=10240, conc=50, cpu=1.0, phase=THROUGHPUT, lat=None):
    r = RunRecord(server, size, conc, rep, phase, "smtp-source", 1000, ok=ok)
    r.msgs_per_s = rate
    r.e2e_s = 1000 / rate / 2 if rate else 0.0  # e2e twice the accept rate: visibly distinct
    r.mib_per_s = rate * size / 2**20
    r.server_cpu_user, r.server_cpu_sys = cpu * 0.75, cpu * 0.25
    if lat is not None:
        r.latency_ms = {"p50": lat, "p90": lat, "p99": 2 * lat, "max": 3 * lat}
    return r


def test_ratios_pair_runs_within_a_rep():
    records = [
        rec("a", 0, 300),
        rec("b", 0, 100),  # 3.0
        rec("a", 1, 200),
        rec("b", 1, 200),  # 1.0
        rec("a", 2, 900),
        rec("b", 2, 450),  # 2.0
        rec("a", 3, 999),  # no partner: ignored
        rec("b", 4, 1, ok=False),
        rec("a", 4, 5),  # a failed partner: ignored
    ]
    r = ratios(records, "a", "b", size=10240, conc=50, metric=lambda x: x.msgs_per_s)
    assert r is not None
    assert (r.median, r.low, r.high, r.count) == (2.0, 1.0, 3.0, 3)
    assert str(r) == "2.00 [1.00-3.00]"
    assert ratios(records, "a", "b", size=1024, conc=50, metric=lambda x: x.msgs_per_s) is None


def test_summary_counts_failed_runs_but_takes_no_number_from_them():
    records = [
        rec("a", 0, 100, cpu=2.0),
        rec("a", 1, 5000, ok=False, cpu=0.0),
        rec("a", 2, 300, cpu=4.0),
        rec("a", 0, 50, phase=LATENCY, lat=4.0),
        rec("a", 2, 70, phase=LATENCY, lat=6.0),
    ]
    s = summarize(records, "a", 10240, 50)
    assert (s.runs, s.failed) == (3, 1)
    assert s.msgs_per_s == 200
    assert s.e2e_msgs_per_s == 400
    assert s.cpu_per_1000 == pytest.approx(3.0)
    assert s.cpu_user_per_1000 == pytest.approx(2.25)
    assert s.p50_ms == 5.0
    assert s.p99_ms == 10.0
    assert s.latency_msgs_per_s == 60


def test_tables_show_failed_cells_as_failed():
    records = [rec("a", 0, 1, ok=False), rec("b", 0, 100)]
    cells = [(10240, 50)]
    table = format_server_table(records, "a", cells)
    assert "| 10 KiB | 50 | FAILED | - |" in table
    assert "1 (1)" in table
    assert "| 10 KiB | 50 | - | - | - | 0 |" in format_ratio_table(records, "a", "b", cells)


def test_ratio_table_shows_accept_and_end_to_end_ratios_apart():
    # b accepts as fast as a but delivers at half the speed, as a queueing server does.
    a0, a1 = rec("a", 0, 200), rec("a", 1, 300)
    b0, b1 = rec("b", 0, 200), rec("b", 1, 300)
    for r in (a0, a1):
        r.e2e_s = r.wall_s = 1000 / r.msgs_per_s
    for r in (b0, b1):
        r.e2e_s = 2 * 1000 / r.msgs_per_s
    table = format_ratio_table([a0, b0, a1, b1], "a", "b", [(10240, 50)])
    assert "| e2e msgs/s a/b |" in table.splitlines()[0]
    assert "| 10 KiB | 50 | 1.00 [1.00-1.00] | 2.00 [2.00-2.00] | 1.00 [1.00-1.00] | 2 |" in table


def test_load_line_reports_the_spread_of_the_load_average():
    records = [rec("a", i, 100) for i in range(3)]
    for r, load in zip(records, (0.5, 3.25, 1.0), strict=True):
        r.load_1m = load
    assert load_line(records).startswith(
        "load average (1 min) at pass starts: min 0.50, median 1.00, max 3.25 ("
    )
    assert load_line([]).endswith("no pass ran")


def test_acceptance_lines():
    records = [
        rec("s", 0, 130),
        rec("p", 0, 100),
        rec("s", 0, 190, size=102400),
        rec("p", 0, 100, size=102400),
    ]
    lines = acceptance_lines(records, "s", "p")
    assert lines[0].startswith("PASS: 10 KiB c=50: s/p = 1.30")
    assert lines[1].startswith("FAIL: 100 KiB c=50: s/p = 1.90")
