"""sieve_bench.py end to end on a tiny load: every (server, script) run delivers every
message into its folder and the ratio lines are printed (the figures themselves are the
bench's, not a test's). The peer needs root, Postfix and Dovecot's LDA with Pigeonhole;
without them the bench says so and runs sansmail alone, as checked here too."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from postfix_peer import PostfixLdaServer, dovecot_lda_conf
from sieve_bench import SCRIPTS, main

TINY = ["--messages", "20", "--concurrency", "2", "--size", "1k", "--reps", "1"]


def test_a_tiny_run_delivers_every_way(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "figures.json"
    assert main([*TINY, "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "keep/none delivered" in printed
    [run] = json.loads(out.read_text())
    assert set(run["sansmail"]) == {"none", "keep", "fileinto"}
    for figures in run["sansmail"].values():
        assert figures["delivered_per_s"] > 0
        assert figures["cpu_per_1000"] > 0
    why = PostfixLdaServer.unavailable()
    if why is not None:
        assert f"postfix-lda skipped: {why}" in printed
        assert "postfix-lda" not in run
        return
    assert set(run["postfix-lda"]) == {"keep", "fileinto"}
    assert "fileinto sansmail/postfix-lda delivered" in run["ratios"]
    assert "keep sansmail/postfix-lda cpu" in printed


def test_no_peer_runs_sansmail_alone(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "figures.json"
    assert main([*TINY, "--no-peer", "--json", str(out)]) == 0
    [run] = json.loads(out.read_text())
    assert "postfix-lda" not in run
    assert set(run["ratios"]) == {"keep/none delivered", "keep/none cpu"}


def test_the_fileinto_script_files_into_the_folder_both_servers_make() -> None:
    text, folder = SCRIPTS["fileinto"]
    assert text is not None
    assert f'fileinto "{folder}"'.encode() in text
    assert folder != "INBOX"
    assert SCRIPTS["keep"] == (b"keep;\r\n", "INBOX")


def test_the_lda_config_runs_the_sieve_plugin_on_absolute_paths(tmp_path: Path) -> None:
    conf = dovecot_lda_conf(tmp_path / "dovecot", tmp_path / "home")
    assert "mail_plugins = $mail_plugins sieve" in conf
    assert f"mail_location = maildir:{tmp_path / 'home'}/Maildir" in conf
    assert f"active={tmp_path / 'home'}/.dovecot.sieve" in conf
    settings = [line for line in conf.splitlines() if not line.startswith("#")]
    assert not [line for line in settings if "~" in line]  # no userdb: ~ is nobody's home
