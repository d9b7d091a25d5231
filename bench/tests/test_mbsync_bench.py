"""mbsync_bench.py's own parts: the mbsync configuration it writes and the table's
ratios, taken within each rep (Dovecot's over sansmail's)."""

from __future__ import annotations

from pathlib import Path

import mbsync_bench as mbb


def test_the_config_pulls_the_inbox_with_login_over_plain_imap(tmp_path: Path) -> None:
    text = mbb.MBSYNC_CONFIG.format(port=1143, user="u@x.test", password="pw", local=tmp_path)
    lines = text.splitlines()
    for wanted in ("Port 1143", "User u@x.test", "Pass pw", "SSLType None", "AuthMechs LOGIN"):
        assert wanted in lines
    assert f"Inbox {tmp_path}/INBOX" in lines
    assert "Sync Pull" in lines
    assert "Patterns INBOX" in lines


def test_the_report_gives_ratios_within_each_rep() -> None:
    pulls = [
        mbb.Pull("sansmail", 0, wall=4.0, server_cpu=2.0, client_cpu=1.0),
        mbb.Pull("dovecot", 0, wall=2.0, server_cpu=0.5, client_cpu=1.0),
        mbb.Pull("sansmail", 1, wall=2.0, server_cpu=1.0, client_cpu=1.0),
        mbb.Pull("dovecot", 1, wall=3.0, server_cpu=0.5, client_cpu=1.0),
        mbb.Pull("sansmail", 2, wall=1.0, server_cpu=1.0, client_cpu=1.0),
        mbb.Pull("dovecot", 2, wall=1.0, server_cpu=0.25, client_cpu=1.0),
    ]
    table = mbb.report(pulls, ["sansmail", "dovecot"]).splitlines()
    first = [line for line in table if line.startswith("first")]
    warm = [line for line in table if line.startswith("warm")]
    assert first[1].split()[-2:] == ["0.50x", "0.25x"]
    # Warm: the median of the per-rep ratios (1.5 and 1.0; 0.5 and 0.25), not the ratio
    # of the medians.
    assert warm[1].split()[-2:] == ["1.25x", "0.38x"]
    assert warm[0].split()[:3] == ["warm", "sansmail", "1.50"]


def test_a_run_without_dovecot_has_no_ratios() -> None:
    pulls = [mbb.Pull("sansmail", 0, wall=4.0, server_cpu=2.0, client_cpu=1.0)]
    table = mbb.report(pulls, ["sansmail"]).splitlines()
    assert len(table) == 2
    assert not table[1].endswith("x")
