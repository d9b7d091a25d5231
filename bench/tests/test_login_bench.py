"""The login benchmark: its options, its report, and one short run against sansmail alone
(real servers on loopback; no Dovecot, which needs root and is not always installed)."""

from __future__ import annotations

from pathlib import Path

import login_bench as lb
import pytest


def _run(samples: list[tuple[str, int, str, float]]) -> lb.Run:
    run = lb.Run(options={}, machine={})
    run.samples = [lb.Sample(t, rep, phase, sec, 0.1) for t, rep, phase, sec in samples]
    return run


def test_report_shows_medians_spreads_and_ratios_within_each_rep() -> None:
    samples = []
    for rep, (ours, theirs) in enumerate([(0.010, 0.200), (0.030, 0.150), (0.020, 0.400)]):
        for phase in lb.PHASES:
            samples += [("sansmail", rep, phase, ours), ("dovecot", rep, phase, theirs)]
    text = lb.report(_run(samples), ["sansmail", "dovecot"], parallel=10)
    assert "| target | new user | cold | repeat | pop3 | cold x10 | repeat x10 |" in text
    assert "| sansmail | 20.0 [10.0-30.0] |" in text
    assert "| dovecot | 200.0 [150.0-400.0] |" in text
    # Ratios are per rep (0.05, 0.2, 0.05), not a ratio of medians (0.1).
    assert "| sansmail | 0.050 [0.050-0.200] |" in text
    assert "| sansmail | 100 |" in text  # server CPU ms


def test_report_without_dovecot_has_no_ratio_table() -> None:
    samples = [("sansmail", 0, phase, 0.01) for phase in lb.PHASES]
    assert "dovecot's" not in lb.report(_run(samples), ["sansmail"], parallel=3)


def test_options() -> None:
    args = lb.parse_args(["--targets", "sansmail, nocache", "--reps", "2"])
    assert args.target_list == ["sansmail", "nocache"]
    assert (args.reps, args.parallel, args.serial) == (2, 10, 5)
    for bad in (["--targets", "postfix"], ["--targets", ","], ["--parallel", "0"]):
        with pytest.raises(SystemExit):
            lb.parse_args(bad)


def test_each_rep_has_users_of_its_own() -> None:
    assert lb.labels(0) != lb.labels(1)
    assert lb.Target.credentials("r0-single") == ("r0-single@example.test", "pw-r0-single")
    assert lb.DovecotPlain.credentials("r0-single")[0] == "plain-r0-single@example.test"


def test_a_short_run_against_sansmail(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status = lb.main(
        [
            "--targets",
            "sansmail",
            "--reps",
            "1",
            "--parallel",
            "3",
            "--serial",
            "1",
            "--processes",
            "1",
            "--tmpdir",
            str(tmp_path),
            "--json",
            str(tmp_path / "run.json"),
        ]
    )
    out = capsys.readouterr().out
    assert status == 0, out
    assert "| sansmail |" in out
    assert (tmp_path / "run.json").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]  # the servers' dirs went
