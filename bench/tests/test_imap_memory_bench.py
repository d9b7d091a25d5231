"""The idle-session memory benchmark: its options, its figures and table, /proc reading,
and one tiny run against sansmail alone (a real server on loopback; no Dovecot, which
needs root and is not always installed)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import imap_memory_bench as imb
import pytest


def _record(target: str, rep: int, before: int, held: int, after: int) -> imb.RepRecord:
    mib = 1024
    record = imb.RepRecord(target, rep, sessions=100)
    record.before = imb.Memory(rss_kib=before * mib, pss_kib=before * mib, processes=1)
    record.held = imb.Memory(rss_kib=2 * held * mib, pss_kib=held * mib, processes=3)
    record.after["60"] = imb.Memory(rss_kib=after * mib, pss_kib=after * mib, processes=1)
    return record


def test_per_session_and_returned() -> None:
    record = _record("sansmail-p1", 0, before=50, held=150, after=55)
    assert record.per_session_kib() == 1024.0  # (150 - 50) MiB over 100 sessions
    assert record.returned("60") == 1.1
    assert record.returned("3") is None
    assert imb.RepRecord("x", 0, 100).per_session_kib() is None


def test_table_and_ratios_within_each_rep() -> None:
    records = [
        _record("sansmail-p1", 0, before=50, held=150, after=55),
        _record("sansmail-p1", 1, before=50, held=250, after=50),
        _record("dovecot", 0, before=5, held=55, after=5),
        _record("dovecot", 1, before=5, held=205, after=5),
    ]
    table = imb.format_table(records, ["sansmail-p1", "dovecot"], ["60"])
    assert "| target | before PSS MiB | held PSS MiB | per session PSS KiB |" in table
    assert "| sansmail-p1 | 50.0 [50.0-50.0] | 200.0 [150.0-250.0] | 1536 [1024-2048] |" in table
    ratios = imb.format_ratios(records, ["sansmail-p1", "dovecot"], "dovecot")
    # Per rep: 1024/512 = 2.0 and 2048/2048 = 1.0.
    assert "sansmail-p1 / dovecot, PSS per session, within each rep: 1.50 [1.00-2.00]" in ratios


def test_a_failed_rep_is_left_out_of_the_table() -> None:
    failed = imb.RepRecord("sansmail-p2", 0, 100, error="SessionError: no")
    table = imb.format_table([failed], ["sansmail-p2"], ["60"])
    assert "sansmail-p2" not in table


def test_tree_memory_reads_this_process() -> None:
    got = imb.tree_memory(os.getpid())
    assert got.processes >= 1
    assert got.rss_kib > 0
    assert 0 < got.pss_kib <= got.rss_kib
    assert imb.rollup(2**22 + 12345) is None  # no such process


def test_options() -> None:
    args = imb.parse_args(["--quick"])
    assert (args.sessions, args.messages, args.reps, args.after_list) == (100, 1000, 1, [1.0, 3.0])
    args = imb.parse_args(["--processes", "1, 4", "--after", "3,60", "--server-env", "A=b=c"])
    assert args.process_list == [1, 4]
    assert args.after_list == [3.0, 60.0]
    assert args.env == {"A": "b=c"}
    assert (args.sessions, args.messages, args.reps) == (1000, 10000, 3)
    for bad in (
        ["--servers", "postfix"],
        ["--after", "60,3"],
        ["--processes", "0"],
        ["--sessions", "-1"],
        ["--server-env", "novalue"],
        ["--after", "x"],
    ):
        with pytest.raises(SystemExit):
            imb.parse_args(bad)


def test_a_tiny_run_against_sansmail(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run.json"
    status = imb.main(
        [
            "--servers",
            "sansmail",
            "--processes",
            "1",
            "--sessions",
            "5",
            "--messages",
            "20",
            "--reps",
            "1",
            "--after",
            "0.5",
            "--settle",
            "0.2",
            "--tmpdir",
            str(tmp_path),
            "--json",
            str(out),
        ]
    )
    printed = capsys.readouterr().out
    assert status == 0, printed
    assert "| sansmail-p1 |" in printed
    data = json.loads(out.read_text())
    (run,) = data["runs"]
    assert run["target"] == "sansmail-p1"
    assert run["held"]["pss_kib"] > 0
    assert set(run["after"]) == {"0.5"}
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]  # the servers' dirs went
