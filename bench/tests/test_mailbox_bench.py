"""The mailbox benchmark's own logic: the generator, the options, the report. No server."""

from __future__ import annotations

import email
import hashlib
import os
from pathlib import Path

import mailbox_bench as mb
import pytest


def _digest(inbox: Path) -> str:
    h = hashlib.sha256()
    for name in sorted(os.listdir(inbox / "cur")):
        h.update(name.encode() + b"\0" + (inbox / "cur" / name).read_bytes())
    return h.hexdigest()


def test_generator_is_deterministic(tmp_path: Path) -> None:
    first = mb.generate_mailbox(tmp_path / "a", 60, seed=7)
    second = mb.generate_mailbox(tmp_path / "b", 60, seed=7)
    other = mb.generate_mailbox(tmp_path / "c", 60, seed=8)
    assert first == second
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")
    assert other.messages == 60


def test_generator_names_sizes_and_dates_match_the_store(tmp_path: Path) -> None:
    exp = mb.generate_mailbox(tmp_path, 40)
    names = os.listdir(tmp_path / "cur")
    assert len(names) == 40
    assert os.listdir(tmp_path / "new") == []
    assert os.listdir(tmp_path / "tmp") == []
    lf_total = crlf_total = 0
    for name in names:
        base, sep, letters = name.partition(":2,")
        assert sep
        assert set(letters) <= {"F", "S"}
        assert letters == "".join(sorted(letters))
        data = (tmp_path / "cur" / name).read_bytes()
        assert b"\r" not in data
        fields = dict(part.split("=") for part in base.split(",")[1:])
        assert int(fields["S"]) == len(data)
        assert int(fields["W"]) == len(data) + data.count(b"\n")
        msg = email.message_from_bytes(data)
        date = email.utils.parsedate_to_datetime(msg["Date"])
        # INTERNALDATE is the mtime, and it is the Date header's moment.
        assert int(date.timestamp()) == int((tmp_path / "cur" / name).stat().st_mtime)
        assert 2025 <= date.year <= 2026
        lf_total += len(data)
        crlf_total += len(data) + data.count(b"\n")
    assert (exp.lf_bytes, exp.crlf_bytes) == (lf_total, crlf_total)


def test_generator_mix_is_the_baselines(tmp_path: Path) -> None:
    exp = mb.generate_mailbox(tmp_path, 2000)
    assert 2.6 < exp.lf_bytes / exp.messages / 1024 < 3.2  # avg 2.9 KiB
    assert 0.26 < exp.unseen / exp.messages < 0.34
    assert 0.03 < exp.flagged / exp.messages < 0.07
    assert 0.08 < exp.hits["alice"] / exp.messages < 0.12
    assert 0.004 < exp.hits["invoice"] / exp.messages < 0.02
    assert 0.01 < exp.hits["budget"] / exp.messages < 0.03
    # The counts the harness checks answers against are those of the files themselves.
    subjects = budget = alice = 0
    for name in os.listdir(tmp_path / "cur"):
        data = (tmp_path / "cur" / name).read_bytes()
        head, _, body = data.partition(b"\n\n")
        msg = email.message_from_bytes(head)
        subjects += "invoice" in msg["Subject"].lower()
        alice += "alice" in msg["From"].lower()
        budget += b"budget" in body
        assert b"quarterly-nomatch" not in data
    assert (subjects, alice, budget) == (
        exp.hits["invoice"],
        exp.hits["alice"],
        exp.hits["budget"],
    )


def test_arguments() -> None:
    quick = mb.parse_args(["--quick"])
    assert (quick.messages, quick.reps, quick.processes) == (1000, 1, 1)
    default = mb.parse_args([])
    assert (default.messages, default.reps, default.json) == (10000, 3, None)
    custom = mb.parse_args(["--quick", "--messages", "50", "--reps", "2", "--json", "x.json"])
    assert (custom.messages, custom.reps, custom.json) == (50, 2, Path("x.json"))
    assert mb.parse_args(["--processes", "2"]).processes == 2
    with pytest.raises(SystemExit):
        mb.parse_args(["--reps", "0"])


def _phase(name: str, wall: float, count: int = 0, nbytes: int = 0) -> mb.Phase:
    return mb.Phase(name, wall, client_cpu=0.01, server_cpu=wall / 2, count=count, nbytes=nbytes)


def test_summary_takes_warm_medians_and_ratios_to_the_baseline() -> None:
    warm = [
        [_phase("fetch_bodies", w, 10000, 30 * mb.MIB), _phase("search ALL", w / 10, 10000)]
        for w in (0.3, 0.1, 0.2)
    ]
    cold = [_phase("fetch_bodies", 1.0, 10000, 30 * mb.MIB), _phase("search ALL", 0.5, 10000)]
    rows = mb.summarize(
        ["fetch_bodies", "search ALL", "absent"],
        warm,
        cold,
        mb.DOVECOT_IMAP,
        rate_phases=("fetch_bodies",),
        search=True,
    )
    assert [r.phase for r in rows] == ["fetch_bodies", "search ALL"]
    body, search = rows
    assert body.wall == pytest.approx(0.2)
    assert body.cold_wall == 1.0
    assert body.msgs_per_s == pytest.approx(50000)
    assert body.mib_per_s == pytest.approx(150)
    assert body.ratio == pytest.approx(0.114 / 0.2)  # Dovecot wall / ours
    assert body.cold_ratio == pytest.approx(0.125 / 1.0)
    assert body.hits is None
    assert search.hits == 10000
    assert search.msgs_per_s is None


def test_ratio_is_blank_for_a_zero_baseline() -> None:
    rows = mb.summarize(["logout"], [[_phase("logout", 0.002)]], None, mb.DOVECOT_IMAP)
    assert rows[0].ratio is None
    assert rows[0].cold_wall is None


def test_table_format() -> None:
    rows = mb.summarize(
        ["fetch_meta", "logout"],
        [[_phase("fetch_meta", 0.176, 10000), _phase("logout", 0.001)]],
        None,
        mb.DOVECOT_IMAP,
        rate_phases=("fetch_meta",),
    )
    text = mb.format_table("title", rows)
    lines = text.splitlines()
    assert lines[0] == "*title*"
    assert lines[2].startswith("| phase | wall s (median) | msgs/s |")
    assert lines[2].count("|") == lines[3].count("|") == lines[4].count("|")
    assert lines[4] == (
        "| fetch_meta | 0.176 | 56,818 |  | 0.01 | 0.09 |  |  | 0.088 | 0.50" + mb.TIMES + " |  |"
    )
    assert lines[5].endswith("| 0.000 |  |  |")


def test_baseline_covers_every_phase() -> None:
    assert set(mb.DOVECOT_IMAP) == set(mb.IMAP_PHASES)
    assert set(mb.DOVECOT_POP3) == set(mb.POP3_PHASES)
