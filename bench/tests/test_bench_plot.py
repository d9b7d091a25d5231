"""The pictures: the numbers they draw, and that a PNG comes out of each kind of JSON."""

from __future__ import annotations

import dataclasses
import json

import pytest

pytest.importorskip("matplotlib")

import bench_plot  # after importorskip: only once matplotlib is known to be there
from bench_report import THROUGHPUT, PhaseRatio, RunRecord, Spread

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def rec(server, rep, rate, *, e2e_rate=None, size=10240, conc=10, ok=True):
    r = RunRecord(server, size, conc, rep, THROUGHPUT, "smtp-source", 1000, ok=ok)
    r.msgs_per_s = rate
    r.e2e_s = 1000 / (e2e_rate or rate)
    return r


def test_smtp_rates_take_good_throughput_passes_of_one_cell():
    records = [
        rec("a", 0, 100, e2e_rate=50),
        rec("a", 1, 300, e2e_rate=70),
        rec("a", 2, 200, e2e_rate=60),
        rec("a", 3, 9999, ok=False),
        rec("a", 0, 5, conc=50),
        rec("b", 0, 7),
    ]
    spread, e2e = bench_plot.smtp_rates(records, "a", 10240, 10)
    assert spread == Spread(200, 100, 300)
    assert e2e == pytest.approx(60)
    assert bench_plot.smtp_rates(records, "c", 10240, 10) == (None, None)


def test_spread_of_nothing_is_none():
    assert Spread.of([]) is None
    assert Spread.of([3.0, 1.0, 2.0]) == Spread(2.0, 1.0, 3.0)


def smtp_json(tmp_path):
    records = []
    for r in range(2):
        for size in (10240, 102400):
            for conc in (10, 50):
                records += [
                    rec("sansmail", r, 500 + r, size=size, conc=conc),
                    rec("aiosmtpd", r, 400, size=size, conc=conc),
                    rec("postfix", r, 600, e2e_rate=450, size=size, conc=conc),
                ]
    records.append(rec("postfix", 2, 1, ok=False))  # failed: drawn as nothing
    path = tmp_path / "smtp.json"
    data = {
        "kind": "smtp",
        "started": "2026-01-01T00:00:00+0000",
        "options": {"generator": "smtp-source", "reps": 2},
        "servers": ["sansmail", "aiosmtpd", "postfix", "never-ran"],
        "cells": [[10240, 10], [10240, 50], [102400, 10], [102400, 50]],
        "load_1m": [0.5, 2.5],
        "runs": [dataclasses.asdict(r) for r in records],
    }
    path.write_text(json.dumps(data))
    return path


def test_smtp_json_draws_a_png(tmp_path):
    out = tmp_path / "smtp.png"
    bench_plot.plot_file(smtp_json(tmp_path), out)
    assert out.read_bytes().startswith(PNG_MAGIC)


def test_mailbox_json_draws_a_png(tmp_path):
    rows = [
        PhaseRatio("login", Spread(2.0, 1.5, 2.5), 1.1),
        PhaseRatio("fetch_meta", Spread(0.2, 0.1, 0.3), None),
        PhaseRatio("logout", None, None),
    ]
    data = {
        "kind": "mailbox-peers",
        "peer": "Dovecot",
        "started": "2026-01-01T00:00:00+0000",
        "options": {"reps": 3},
        "expected": {"messages": 10000},
        "first_rep": {"IMAP": "cold"},
        "ratios": {
            "IMAP": [dataclasses.asdict(r) for r in rows],
            "POP3": [dataclasses.asdict(rows[0])],
        },
    }
    path = tmp_path / "mailbox.json"
    path.write_text(json.dumps(data))
    assert bench_plot.main([str(path)]) == 0
    assert path.with_suffix(".png").read_bytes().startswith(PNG_MAGIC)


def test_other_json_is_refused(tmp_path, capsys):
    path = tmp_path / "other.json"
    path.write_text(json.dumps({"runs": []}))
    with pytest.raises(ValueError, match="not a bench result"):
        bench_plot.plot_file(path, tmp_path / "x.png")
    assert bench_plot.main([str(path)]) == 1
    assert "not a bench result" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()
